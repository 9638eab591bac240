"""launch/slurm.sbatch on a real single-node SLURM cluster that the test starts on 127.0.0.1 (munged,
slurmctld and slurmd from Debian's slurm-wlm and munge, in a temporary folder, as root) and stops by the
process ids it started.

The job runs 2 tasks of 2 CPU devices. Once it trains, the test sends SIGTERM to its batch shell, as SLURM
does before a time limit (`--signal=B:TERM@N`) or for a preempting job; the script's trap passes it to the
tasks, which save and exit 143, and the script requeues the job. The test then shortens SLURM's two-minute
requeue delay to 5 s (scontrol update) and checks that the job resumed and completed with every logged step
once.
Without the binaries or root, the test is skipped with the reason; under CI=true it fails instead.
"""

import json
import os
import pathlib
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import pytest
from conftest import CONFIGS, ROOT, real_component_unavailable

from jaxtrain import history

pytestmark = pytest.mark.xdist_group('slurm')
DAEMONS = ('munged', 'slurmctld', 'slurmd')
NUM_STEPS = 200


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _config(folder: pathlib.Path, socket_path: pathlib.Path) -> str:
  return f"""ClusterName=jaxtrain
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={socket_path}
CredType=cred/munge
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
JobRequeue=1
MinJobAge=600
InactiveLimit=0
KillWait=60
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
NodeName=localhost NodeAddr=127.0.0.1 CPUs={os.cpu_count()} State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
"""


def _scontrol_job(env: dict, job: str) -> dict:
  out = subprocess.run(['scontrol', 'show', 'job', job], env=env, capture_output=True, text=True).stdout
  return dict(re.findall(r'(\w+)=(\S*)', out))


@pytest.fixture(scope='module')
def slurm_env():
  missing = [name for name in (*DAEMONS, 'sbatch', 'scontrol') if shutil.which(name) is None]
  if missing:
    real_component_unavailable('SLURM', f'no {", ".join(missing)} (apt-get install slurm-wlm munge)')
  if os.geteuid() != 0:
    real_component_unavailable('SLURM', 'slurmd must run as root')
  folder = pathlib.Path(tempfile.mkdtemp(prefix='jaxtrain-slurm-'))
  folder.chmod(0o755)  # munged insists that every folder above its socket is open to all.
  munge = folder / 'munge'
  munge.mkdir(mode=0o755)
  (munge / 'munge.key').write_bytes(secrets.token_bytes(128))
  (munge / 'munge.key').chmod(0o600)
  for path in (munge, munge / 'munge.key'):
    shutil.chown(path, 'munge', 'munge')
  for name in ('state', 'spool'):
    (folder / name).mkdir()
  (folder / 'slurm.conf').write_text(_config(folder, munge / 'socket'))
  env = {**os.environ, 'SLURM_CONF': str(folder / 'slurm.conf')}
  log = (folder / 'daemons.log').open('w')
  daemons = []
  try:
    daemons.append(subprocess.Popen(
        ['munged', '--foreground', f'--socket={munge / "socket"}', f'--key-file={munge / "munge.key"}',
         f'--pid-file={munge / "pid"}', f'--seed-file={munge / "seed"}', f'--log-file={munge / "log"}'],
        user='munge', group='munge', stdout=log, stderr=log))
    daemons.append(subprocess.Popen(['slurmctld', '-D'], env=env, stdout=log, stderr=log))
    daemons.append(subprocess.Popen(['slurmd', '-D', '-N', 'localhost'], env=env, stdout=log, stderr=log))
    deadline = time.time() + 60
    while subprocess.run(['sinfo', '-h', '-o', '%T'], env=env, capture_output=True,
                         text=True).stdout.strip() != 'idle':
      if time.time() > deadline or any(d.poll() is not None for d in daemons):
        pytest.fail(f'SLURM did not start: {(folder / "daemons.log").read_text()[-2000:]}')
      time.sleep(0.5)
    yield env, folder
  finally:
    for daemon in reversed(daemons):  # The processes this fixture started, by their ids.
      daemon.terminate()
      try:
        daemon.wait(timeout=30)
      except subprocess.TimeoutExpired:
        daemon.kill()
    log.close()
    shutil.rmtree(folder, ignore_errors=True)


def test_a_signalled_job_saves_requeues_itself_and_resumes(slurm_env, make_config, data_dir, tmp_path):
  env, folder = slurm_env
  import jaxtrain
  jaxtrain.data.load(make_config())  # Prepared once, not by both tasks at the same time.
  job_dir = tmp_path / 'job'
  job_dir.mkdir()
  job_env = {**env, 'PYTHON': sys.executable, 'XLA_FLAGS': '--xla_force_host_platform_device_count=2'}
  submitted = subprocess.run(
      ['sbatch', '--parsable', f'--chdir={job_dir}', '--ntasks=2', '--ntasks-per-node=2', '--time=10',
       str(ROOT / 'launch' / 'slurm.sbatch'),
       '--config', str(CONFIGS / 'digits_cnn.py'), f'--workdir={job_dir / "run"}',
       f'--config.data.data_dir={data_dir}', '--config.train.progress_bar=False',
       '--config.train.log_every_steps=5', f'--config.train.num_steps={NUM_STEPS}'],
      env=job_env, capture_output=True, text=True, check=True)
  job = submitted.stdout.strip().split(';')[0]
  deadline, signalled, sped_up, final_since, states = time.time() + 400, False, False, None, []
  while time.time() < deadline:
    state = _scontrol_job(env, job)
    states.append(f"{time.strftime('%H:%M:%S')} {state.get('JobState')} restarts={state.get('Restarts')} "
                  f"reason={state.get('Reason')} exit={state.get('ExitCode')}")
    if not signalled and history.read_metrics(job_dir / 'run'):
      # What SLURM does at `--signal=B:TERM@N` before the time limit, or for a preempting job: SIGTERM to
      # the batch shell. Sent by the test once training runs, so that no timing of SLURM's decides the test.
      subprocess.run(['scancel', '--signal=TERM', '--batch', job], env=env, check=True)
      signalled = True
    if state.get('JobState') == 'PENDING' and int(state.get('Restarts', 0)) >= 1 and not sped_up:
      # Requeued: start it soon rather than after SLURM's 2-minute delay, but not at once. slurmd revokes
      # the credential of the run it stopped, to the second, and refuses a new run of the same job id whose
      # credential is of that same second ("Job credential revoked"): the job would end FAILED.
      subprocess.run(['scontrol', 'update', f'JobId={job}', 'StartTime=now+5'], env=env, check=True)
      sped_up = True
    if state.get('JobState') == 'COMPLETED':
      break
    # A run that ends while its requeue is processed may show FAILED for a moment: final only if it lasts.
    final = state.get('JobState') in ('FAILED', 'CANCELLED', 'TIMEOUT')
    final_since = (final_since or time.time()) if final else None
    if final_since and time.time() - final_since > 10:
      break
    time.sleep(1)
  output = (job_dir / f'jaxtrain-{job}.out').read_text()
  slurmctld_log = (folder / 'slurmctld.log').read_text()
  assert state['JobState'] == 'COMPLETED' and int(state['Restarts']) >= 1, '\n'.join(
      [output[-3000:], *dict.fromkeys(s.split(' ', 1)[1] for s in states), slurmctld_log[-3000:]])
  # The log was appended to, not truncated, by the restart.
  assert 'starts (restart 0)' in output and 'starts (restart 1)' in output
  stops = re.findall(r'stopped by SIGTERM at step (\d+)', output)
  assert stops and len(set(stops[:2])) == 1  # Both tasks stopped at the same step.
  assert f'Resuming from step {stops[0]}' in output
  assert output.count(f'Finished at step {NUM_STEPS}') == 1  # Printed by process 0 only.
  steps = [r['step'] for r in history.read_metrics(job_dir / 'run') if 'train/loss' in r]
  assert steps == list(range(5, NUM_STEPS + 1, 5))  # Every logged step once: none missing, none twice.
  assert json.loads((job_dir / 'run' / 'summary.json').read_text())['steps'] == NUM_STEPS

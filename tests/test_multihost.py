"""Multi-host training: 2 processes x 4 simulated CPU devices on 127.0.0.1 (launch/multiprocess_cpu.sh)."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

from conftest import CONFIGS, ROOT

import jaxtrain
from jaxtrain import history

RUN = ['--config', str(CONFIGS / 'digits_cnn.py'), '--config.train.log_every_steps=1',
       '--config.train.progress_bar=False', '--config.model.dropout=0.2', '--config.optim.name=momentum',
       '--config.optim.lr=0.05', '--config.checkpoint.every_steps=10']


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def launch_script(workdir, data_dir, *extra) -> subprocess.CompletedProcess:
  return subprocess.run([str(ROOT / 'launch' / 'multiprocess_cpu.sh'), '2', '4', *RUN, *extra,
                         f'--workdir={workdir}', f'--config.data.data_dir={data_dir}'],
                        cwd=ROOT, capture_output=True, text=True, timeout=300,
                        env={**os.environ, 'JAXTRAIN_PORT': str(free_port()), 'PYTHON': sys.executable})


def train_losses(workdir) -> dict[int, float]:
  return {r['step']: r['train/loss'] for r in history.read_metrics(workdir) if 'train/loss' in r}


def start_processes(workdir, data_dir, *extra, output=subprocess.DEVNULL) -> list[subprocess.Popen]:
  """Two processes of 4 CPU devices each, started directly, so a test can signal either."""
  env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=4',
         'JAXTRAIN_COORDINATOR': f'127.0.0.1:{free_port()}', 'JAXTRAIN_NUM_PROCESSES': '2',
         'JAXTRAIN_HEARTBEAT_TIMEOUT': '10'}
  return [subprocess.Popen(
      [sys.executable, '-m', 'jaxtrain.main', *RUN, *extra, f'--workdir={workdir}',
       f'--config.data.data_dir={data_dir}'],
      cwd=ROOT, env={**env, 'JAXTRAIN_PROCESS_ID': str(i)}, stdout=output, stderr=output, text=True)
      for i in range(2)]


def test_two_processes_train_like_one_and_a_signal_to_one_stops_both_and_resumes(make_config, data_dir,
                                                                                 tmp_path):
  # SIGTERM to the second process only: the processes agree on it at the next log step (every step here),
  # both stop there and save one checkpoint, and both exit 128 + SIGTERM. The launch script resumes, and
  # the two processes' run, cut in two, trains like one process on one device: a resume that lost or
  # repeated a batch, or any optimizer state, would be off by far more than the tolerance.
  workdir = tmp_path / 'preempted'
  processes = start_processes(workdir, data_dir, '--config.train.num_steps=20', output=subprocess.PIPE)
  try:
    deadline = time.time() + 180
    while not train_losses(workdir) and time.time() < deadline:
      time.sleep(0.02)
    processes[1].send_signal(signal.SIGTERM)
    outputs = [p.communicate(timeout=120)[1] for p in processes]
  finally:
    for process in processes:
      process.kill()
  assert [p.returncode for p in processes] == [128 + signal.SIGTERM] * 2, outputs
  stopped = {int(line.split(' at step ')[1].split(';')[0]) for out in outputs for line in out.splitlines()
             if 'stopped by SIGTERM at step' in line}
  assert len(stopped) == 1 and next(iter(stopped)) < 20  # The same step in both.
  step = next(iter(stopped))
  saved = [p.name for p in (workdir / 'checkpoints').iterdir() if p.name.isdigit()]
  assert str(step) in saved and all(int(name) <= step for name in saved)
  resumed = launch_script(workdir, data_dir, '--config.train.num_steps=20')
  assert resumed.returncode == 0, resumed.stderr
  assert f'Resuming from step {step}' in resumed.stderr
  assert json.loads((workdir / 'summary.json').read_text())['steps'] == 20
  config = make_config(**{'train.num_steps': 20, 'train.log_every_steps': 1, 'model.dropout': 0.2,
                          'optim.name': 'momentum', 'optim.lr': 0.05})
  single, multi = train_losses(jaxtrain.fit(config, tmp_path / 'single').workdir), train_losses(workdir)
  assert sorted(multi) == list(range(1, 21))  # Every step once.
  for step, loss in single.items():
    assert abs(multi[step] - loss) <= 1e-5 * max(1.0, loss)


def test_killing_one_process_ends_the_other_within_60_s(data_dir, tmp_path):
  processes = start_processes(tmp_path / 'run', data_dir, '--config.train.num_steps=100000')
  try:
    deadline = time.time() + 180
    while not train_losses(tmp_path / 'run') and time.time() < deadline:
      assert all(p.poll() is None for p in processes)
      time.sleep(0.2)
    processes[1].send_signal(signal.SIGKILL)
    killed = time.time()
    returncode = processes[0].wait(timeout=90)
    assert time.time() - killed < 60
    assert returncode != 0
  finally:
    for process in processes:
      process.kill()


def test_an_unreachable_coordinator_is_an_error_not_a_hang(tmp_path):
  env = {**os.environ, 'JAXTRAIN_COORDINATOR': f'127.0.0.1:{free_port()}', 'JAXTRAIN_NUM_PROCESSES': '2',
         'JAXTRAIN_PROCESS_ID': '1', 'JAXTRAIN_INIT_TIMEOUT': '3'}
  result = subprocess.run([sys.executable, '-m', 'jaxtrain.main', *RUN, f'--workdir={tmp_path / "run"}'],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1].startswith('error: cannot reach the coordinator')
  assert not (tmp_path / 'run').exists()

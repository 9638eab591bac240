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
                        env={**os.environ, 'JAXTRAIN_PORT': str(free_port())})


def train_losses(workdir) -> dict[int, float]:
  return {r['step']: r['train/loss'] for r in jaxtrain.history.read_metrics(workdir) if 'train/loss' in r}


def test_two_processes_train_like_one_and_resume(make_config, data_dir, tmp_path):
  workdir = tmp_path / 'mp'
  result = launch_script(workdir, data_dir, '--config.train.num_steps=20')
  assert result.returncode == 0, result.stderr
  config = make_config(**{'train.num_steps': 20, 'train.log_every_steps': 1, 'model.dropout': 0.2,
                          'optim.name': 'momentum', 'optim.lr': 0.05})
  single = train_losses(jaxtrain.fit(config, tmp_path / 'single').workdir)
  multi = train_losses(workdir)
  assert sorted(multi) == list(range(1, 21))
  for step, loss in single.items():
    assert abs(multi[step] - loss) <= 1e-5 * max(1.0, loss)

  resumed = launch_script(workdir, data_dir, '--config.train.num_steps=30')
  assert resumed.returncode == 0, resumed.stderr
  assert json.loads((workdir / 'summary.json').read_text())['steps'] == 30
  assert sorted(train_losses(workdir)) == list(range(1, 31))  # Continued from step 20, nothing twice.


def test_killing_one_process_ends_the_other_within_60_s(data_dir, tmp_path):
  env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=4',
         'JAXTRAIN_COORDINATOR': f'127.0.0.1:{free_port()}', 'JAXTRAIN_NUM_PROCESSES': '2',
         'JAXTRAIN_HEARTBEAT_TIMEOUT': '10'}
  processes = [subprocess.Popen(
      [sys.executable, '-m', 'jaxtrain.main', *RUN, '--config.train.num_steps=100000',
       f'--workdir={tmp_path / "run"}', f'--config.data.data_dir={data_dir}'],
      cwd=ROOT, env={**env, 'JAXTRAIN_PROCESS_ID': str(i)}, stdout=subprocess.DEVNULL,
      stderr=subprocess.DEVNULL) for i in range(2)]
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

"""Your own model, data and loss from the command line, by import path (configs/tokens_nnx.py): exact
resume after kill -9, and one-line errors for a wrong path."""

import signal
import subprocess
import sys
import time

from conftest import CONFIGS, ROOT
from test_open_core import params_hash

import jaxtrain
from jaxtrain import history


def test_kill_9_then_rerun_of_an_import_path_nnx_run_is_bit_identical(tmp_path):
  args = [sys.executable, '-m', 'jaxtrain.main', '--config', str(CONFIGS / 'tokens_nnx.py'),
          '--config.train.num_steps=80', '--config.train.log_every_steps=1',
          '--config.checkpoint.every_steps=5', '--config.train.eval_every_steps=40',
          '--config.train.progress_bar=False', '--config.data.prefetch=0']
  reference = subprocess.run([*args, f'--workdir={tmp_path / "ref"}'], cwd=ROOT, capture_output=True,
                             text=True, timeout=300)
  assert reference.returncode == 0, reference.stderr[-2000:]
  killed = tmp_path / 'killed'
  process = subprocess.Popen([*args, f'--workdir={killed}'], cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
  deadline = time.time() + 120
  while not any(r['step'] >= 33 for r in history.read_metrics(killed)):
    assert process.poll() is None and time.time() < deadline
    time.sleep(0.05)
  process.send_signal(signal.SIGKILL)
  process.wait()
  rerun = subprocess.run([*args, f'--workdir={killed}'], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
  assert rerun.returncode == 0, rerun.stderr[-2000:]
  config = jaxtrain.load_config(CONFIGS / 'tokens_nnx.py',
                                {'train.num_steps': 80, 'compile_cache.enabled': False})
  finished = [jaxtrain.fit(config, workdir).state for workdir in (killed, tmp_path / 'ref')]  # Restores.
  assert params_hash(finished[0]) == params_hash(finished[1])
  steps = [r['step'] for r in history.read_metrics(killed) if 'train/loss' in r]
  assert steps == list(range(1, 81))  # Nothing logged twice, nothing lost.


def test_cli_import_path_mistakes_exit_2_with_one_line_and_write_nothing(tmp_path):
  result = subprocess.run(
      [sys.executable, '-m', 'jaxtrain.main', '--config', str(CONFIGS / 'tokens_nnx.py'),
       f'--workdir={tmp_path / "run"}', '--config.model.name=examples.tokens:Nope'],
      cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1].startswith(
      "error: model.name='examples.tokens:Nope': 'examples.tokens' has no attribute 'Nope'; it has: ")
  assert not (tmp_path / 'run').exists()

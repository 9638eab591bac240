"""Checkpoints that lose nothing: kill -9 and SIGTERM, damaged and incompatible checkpoints, best-k, early
stopping, restore_from and the non-finite policy."""

import collections
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import time

import grain
import jax
import numpy as np
import pytest
from conftest import CONFIGS, ROOT

import jaxtrain
from jaxtrain import checkpoint, data, engine, evaluation, history
from jaxtrain.callbacks import nonfinite


def params_hash(state) -> str:
  leaves = jax.tree.leaves(jax.device_get(state.params))
  return hashlib.sha256(b''.join(np.asarray(leaf).tobytes() for leaf in leaves)).hexdigest()


def trained_state(config, workdir):
  """The newest checkpoint's state (fit on a finished workdir only restores it)."""
  return jaxtrain.fit(config, workdir).state


# A short MLP run with a checkpoint every 4 steps and a log record every step, so a kill can land anywhere.
KILL_SETTINGS = {'train.num_steps': 60, 'train.log_every_steps': 1, 'train.eval_every_steps': 20,
                 'checkpoint.every_steps': 4, 'data.prefetch': 0}
KILL_RUN = ['--config', str(CONFIGS / 'digits_mlp.py'), '--config.train.progress_bar=False',
            *(f'--config.{key}={value}' for key, value in KILL_SETTINGS.items())]


def start(workdir, data_dir, *extra):
  return subprocess.Popen(
      [sys.executable, '-m', 'jaxtrain.main', *KILL_RUN, *extra, f'--workdir={workdir}',
       f'--config.data.data_dir={data_dir}'],
      cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_step(workdir, step: int, process, timeout: float = 120) -> None:
  """Returns once metrics.jsonl has logged `step` (the run is at or just past it)."""
  deadline = time.time() + timeout
  path = workdir / 'metrics.jsonl'
  while time.time() < deadline:
    assert process.poll() is None, process.communicate()
    if path.exists() and any(r['step'] >= step for r in history.read_metrics(workdir)):
      return
    time.sleep(0.05)
  raise TimeoutError(f'step {step} not reached')


@pytest.mark.parametrize('kill_at', [(7, 29, 46)])
def test_kill_9_at_random_steps_then_rerun_gives_bit_identical_parameters(make_config, data_dir, tmp_path,
                                                                         kill_at):
  # The uninterrupted reference trains in this process: the same run, as fit and the command line give the
  # same parameters.
  config = make_config('digits_mlp', **KILL_SETTINGS)
  reference = jaxtrain.fit(config, tmp_path / 'ref')
  workdir = tmp_path / 'killed'
  for step in kill_at:
    process = start(workdir, data_dir)
    wait_for_step(workdir, step, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
  process = start(workdir, data_dir)
  _, stderr = process.communicate(timeout=300)
  assert process.returncode == 0, stderr

  assert params_hash(trained_state(config, workdir)) == params_hash(reference.state)
  records = history.read_metrics(workdir)
  kinds = collections.Counter((r['step'], tuple(sorted(k for k in r if '/' in k))[0]) for r in records)
  assert max(kinds.values()) == 1  # No step logged twice ...
  assert sorted(s for s, kind in kinds if kind.startswith('train/')) == list(range(1, 61))  # ... none lost.


def test_sigterm_saves_the_current_step_and_the_rerun_continues(make_config, data_dir, tmp_path):
  workdir = tmp_path / 'run'
  process = start(workdir, data_dir, '--config.train.num_steps=100000')
  wait_for_step(workdir, 10, process)
  sent = time.time()
  process.send_signal(signal.SIGTERM)
  _, stderr = process.communicate(timeout=30)
  assert time.time() - sent < 30
  assert process.returncode == 128 + signal.SIGTERM, stderr
  assert 'run the same command again to resume' in stderr and 'Traceback' not in stderr
  stopped = int(stderr.split('at step ')[1].split(';')[0])
  saved = checkpoint.Checkpointer(
      workdir / 'checkpoints', jaxtrain.load_config(CONFIGS / 'digits_mlp.py').checkpoint, True).steps()
  assert stopped >= 10 and stopped in saved, (stopped, saved, stderr)

  rerun = jaxtrain.fit(make_config('digits_mlp', **{**KILL_SETTINGS, 'train.num_steps': stopped + 8}),
                       workdir)
  assert rerun.summary['steps'] == stopped + 8
  train_steps = [r['step'] for r in history.read_metrics(workdir) if 'train/loss' in r]
  assert train_steps == sorted(set(train_steps)) and train_steps[-1] == stopped + 8


def test_a_truncated_newest_step_falls_back_with_a_warning_and_finishes(make_config, tmp_path, caplog):
  settings = {'checkpoint.every_steps': 5, 'train.eval_every_steps': 10, 'optim.schedule': 'constant',
              'optim.warmup_steps': 0}
  jaxtrain.fit(make_config(**settings, **{'train.num_steps': 20}), tmp_path / 'run')
  damaged = max((tmp_path / 'run' / 'checkpoints' / '20' / 'state').rglob('d/*'), key=os.path.getsize)
  damaged.write_bytes(damaged.read_bytes()[:10])
  with caplog.at_level(logging.WARNING, logger='jaxtrain'):
    run = jaxtrain.fit(make_config(**settings, **{'train.num_steps': 30}), tmp_path / 'run')
  assert any('step 20' in r.message and 'cannot be read' in r.message for r in caplog.records)
  assert run.summary['steps'] == 30
  assert list((tmp_path / 'run' / 'damaged_checkpoints').glob('20-*'))  # Moved aside, not deleted.
  reference = jaxtrain.fit(make_config(**settings, **{'train.num_steps': 30}), tmp_path / 'ref')
  assert params_hash(run.state) == params_hash(reference.state)


def test_best_k_keeps_the_best_evaluated_steps_and_always_the_newest(make_config, tmp_path):
  config = make_config(**{'train.num_steps': 60, 'train.eval_every_steps': 5, 'checkpoint.every_steps': 5,
                          'checkpoint.keep': 1, 'checkpoint.keep_best': 2, 'optim.lr': 0.05})
  run = jaxtrain.fit(config, tmp_path)
  evals = {r['step']: r['eval/loss'] for r in run.history if 'eval/loss' in r}
  best_two = sorted(evals, key=evals.get)[:2]
  kept = checkpoint.Checkpointer(tmp_path / 'checkpoints', config.checkpoint, read_only=True).steps()
  assert set(kept) == {60, *best_two}
  assert run.summary['best_step'] == best_two[0]


def test_early_stopping_stops_when_the_validation_loss_rises_and_returns_the_best(
    make_config, tmp_path, monkeypatch):
  losses = iter([1.0, 0.8, 0.9, 0.95, 1.1, 1.2, 1.3])
  evaluate = evaluation.split_metrics

  def rising(*args):  # The real metrics, with an eval loss that falls twice then rises.
    return {**evaluate(*args), 'eval/loss': next(losses)}

  monkeypatch.setattr(evaluation, 'split_metrics', rising)
  config = make_config(**{'train.num_steps': 70, 'train.eval_every_steps': 10,
                          'early_stopping.patience': 2})
  run = jaxtrain.fit(config, tmp_path)
  assert run.summary['steps'] == 40 and run.summary['stopped_early']  # Evals 3 and 4 did not improve.
  assert run.summary['best_step'] == 20 and run.summary['best']['eval/loss'] == 0.8
  assert int(run.state.step) == 20
  best = checkpoint.Checkpointer(tmp_path / 'checkpoints', config.checkpoint, True).restore(
      jax.eval_shape(lambda: run.state), 20)
  assert params_hash(run.state) == params_hash(best.state)
  again = jaxtrain.fit(config, tmp_path)  # A rerun of a stopped run does nothing and returns the best.
  assert int(again.state.step) == 20 and again.summary == run.summary


def test_restore_from_starts_from_another_runs_checkpoint(make_config, tmp_path):
  source = jaxtrain.fit(make_config(**{'train.num_steps': 20}), tmp_path / 'source')
  config = make_config(**{'train.num_steps': 30, 'checkpoint.restore_from': str(tmp_path / 'source')})
  run = jaxtrain.fit(config, tmp_path / 'fork')
  assert min(r['step'] for r in run.history) > 20 and run.summary['steps'] == 30
  continued = jaxtrain.fit(make_config(**{'train.num_steps': 30}), tmp_path / 'source')
  assert params_hash(run.state) == params_hash(continued.state)
  assert params_hash(source.state) != params_hash(run.state)


def poison(monkeypatch, bad_steps):
  """The batches of `bad_steps` (1-based) get a NaN pixel."""
  make = data.train_batches

  def train_batches(*args, **kwargs):
    def maybe_poison(index, batch):
      if index + 1 in bad_steps:
        batch = {**batch, 'image': batch['image'].copy()}
        batch['image'][0, 0, 0, 0] = np.nan
      return batch
    stream = make(*args, **kwargs)
    return grain.MapDataset.range(len(stream)).map(lambda i: maybe_poison(i, stream[i]))

  monkeypatch.setattr(engine.data, 'train_batches', train_batches)


def test_a_nan_halts_at_its_step_naming_the_layer_and_parameter_and_dumps_a_replayable_step(
    make_config, tmp_path, monkeypatch):
  poison(monkeypatch, {13})
  with pytest.raises(nonfinite.NonFiniteError) as error:
    jaxtrain.fit(make_config(**{'checkpoint.every_steps': 5, 'train.log_every_steps': 4}), tmp_path)
  message = str(error.value)
  # The NaN pixel enters the first conv: its output is the first non-finite value in forward order.
  assert message.startswith('training halted at step 13: loss=nan, the output of Block_0/Conv_0 is the first '
                            'that is not finite, the gradient of params/Block_0/Conv_0/')
  assert 'the last good checkpoint is step 10' in message
  steps = checkpoint.Checkpointer(tmp_path / 'checkpoints', make_config().checkpoint, True).steps()
  assert steps == [5, 10]  # Nothing saved at or after the bad step.
  dump = tmp_path / 'nan_dump' / 'step_13'
  findings = json.loads((dump / 'findings.json').read_text())
  assert findings['step'] == 13 and findings['activation'] == 'Block_0/Conv_0'
  assert np.isnan(np.load(dump / 'batch.npz')['image']).sum() == 1
  # The replay command: jax_debug_nans stops at the primitive that made the NaN, and it exits 1.
  result = subprocess.run([sys.executable, '-m', 'jaxtrain.diagnostics.nan', str(dump)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
  message = result.stdout.strip().splitlines()[-1]
  assert result.returncode == 1 and message.startswith('step 13: a NaN appears in Block_0/Conv_0 at ')
  assert 'jaxtrain/models/' in message  # The zoo's line that computed it.
  assert 'Warning' not in result.stderr, result.stderr


def test_skip_drops_nonfinite_updates_counts_them_and_halts_after_too_many(make_config, tmp_path,
                                                                          monkeypatch):
  poison(monkeypatch, {3, 4, 11, 12, 13})
  run = jaxtrain.fit(make_config('digits_mlp', **{'train.nonfinite': 'skip'}), tmp_path / 'skip')
  assert sum(r.get('train/skipped', 0) for r in run.history) == 5 and run.summary['steps'] == 20
  assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(jax.device_get(run.state.params)))
  poison(monkeypatch, {3, 4, 11, 12, 13, 14, 15, 16})
  # The limit holds exactly although the guard looks only at the log step (20): the step froze at 13.
  with pytest.raises(nonfinite.NonFiniteError, match=r'halted at step 13: 3 non-finite steps in a row') as e:
    jaxtrain.fit(make_config('digits_mlp', **{'train.nonfinite': 'skip', 'train.max_consecutive_skips': 3}),
                 tmp_path / 'halt')
  assert 'Skipping does not get past it' in str(e.value) and 'nonfinite=skip' not in str(e.value)


def test_a_diverging_run_exits_1_from_the_command_line(data_dir, tmp_path):
  result = subprocess.run(
      [sys.executable, '-m', 'jaxtrain.main', *KILL_RUN, '--config.optim.name=sgd', '--config.optim.lr=1e12',
       f'--workdir={tmp_path}', f'--config.data.data_dir={data_dir}'],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 1, result.stderr
  assert result.stderr.count('error: training halted at step') == 1 and 'Traceback' not in result.stderr


def test_a_quality_target_stops_the_run_and_records_when_it_was_reached(make_config, tmp_path):
  config = make_config(**{'train.num_steps': 400, 'train.eval_every_steps': 20, 'optim.lr': 3e-3,
                          'early_stopping.target': 'eval/accuracy>=0.9'})
  run = jaxtrain.fit(config, tmp_path)
  evals = [r for r in run.history if 'eval/accuracy' in r]
  assert evals[-1]['eval/accuracy'] >= 0.9 > max(r['eval/accuracy'] for r in evals[:-1])
  assert run.summary['target_reached_step'] == evals[-1]['step'] == run.summary['steps'] < 400
  assert 0 < run.summary['target_reached_s'] < run.summary['wall_s']
  assert run.summary['stop_reason'] == 'target eval/accuracy>=0.9 reached'
  for target, message in (('eval/acc>=0.9', "early_stopping.target='eval/acc' is not a metric"),
                          ('accuracy=0.9', 'is not <metric><op><value>')):
    with pytest.raises(jaxtrain.ConfigError, match=message):
      jaxtrain.fit(make_config(**{'early_stopping.target': target}), tmp_path / 'bad')

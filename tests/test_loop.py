"""The loop end to end through the Python API: files, resume, BatchNorm at eval, the default job."""

import json
import pickle
import shutil

import jax
import numpy as np
import pytest

import jaxtrain
from jaxtrain import data, models, optim, steps
from jaxtrain import model as model_lib
from jaxtrain import state as state_lib


def test_fit_writes_the_documented_workdir(make_config, tmp_path):
  run = jaxtrain.fit(make_config(**{'train.num_steps': 20, 'diagnostics.report': True}), tmp_path)
  resolved = json.loads((tmp_path / 'config.json').read_text())
  assert resolved['train']['num_steps'] == 20 and resolved['model']['name'] == 'cnn'
  records = [json.loads(line) for line in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  assert all('step' in r and 'epoch' in r for r in records)
  train = [r for r in records if 'train/loss' in r]
  assert [r['step'] for r in train] == [10, 20]
  for key in ('train/loss', 'train/accuracy', 'train/lr', 'train/grad_norm', 'train/steps_per_sec'):
    assert key in train[-1]
  assert train[-1]['epoch'] == pytest.approx(20 / (1293 // 32))
  assert any('eval/accuracy' in r for r in records) and any('test/accuracy' in r for r in records)
  summary = json.loads((tmp_path / 'summary.json').read_text())
  assert set(summary) == {'steps', 'wall_s', 'best_step', 'best', 'final', 'diagnosis', 'baselines',
                          'confusion', 'perf'}
  assert summary['steps'] == 20 and summary['best_step'] == 20
  assert set(summary['final']) == {'eval/loss', 'eval/accuracy', 'test/loss', 'test/accuracy'}
  assert list((tmp_path / 'tb').glob('events.out.tfevents.*'))
  assert (tmp_path / 'checkpoints' / '20').is_dir()
  assert run.history == records and int(run.state.step) == 20
  assert 'steps=20' in repr(run)
  run.plot()
  for plot in ('curves', 'batch', 'examples', 'confusion'):
    assert (tmp_path / 'plots' / f'{plot}.png').stat().st_size > 1000, plot


# Programs lowered to XLA: what a jit cache miss costs before the persistent cache (tests/conftest.py) is
# even asked, so a program loaded from that cache still counts.
_COMPILES = []
jax.monitoring.register_event_duration_secs_listener(
    lambda event, duration, **kwargs: _COMPILES.append(event)
    if event == '/jax/core/compile/jaxpr_to_mlir_module_duration' else None)


def test_a_second_fit_in_one_process_compiles_nothing(make_config, tmp_path):
  """A re-run notebook cell (or another seed) reuses the compiled init, train and eval steps."""
  short = {'train.num_steps': 4, 'train.log_every_steps': 2, 'diagnostics.report': True}
  jaxtrain.fit(make_config(**short), tmp_path / 'a')
  before = len(_COMPILES)
  run = jaxtrain.fit(make_config(**{**short, 'seed': 7}),
                     tmp_path / 'b')
  assert run.summary['steps'] == 4
  assert len(_COMPILES) == before
  jaxtrain.fit(make_config(**{'train.num_steps': 4, 'model.features': (8,)}), tmp_path / 'c')
  assert len(_COMPILES) > before  # Another model does compile: the counter works.


def test_fit_does_not_change_the_callers_config_and_uses_a_temporary_workdir(make_config):
  config = make_config(**{'train.num_steps': 2, 'train.log_every_steps': 1})
  before = config.to_json()
  run = jaxtrain.fit(config)
  assert config.to_json() == before
  assert run.workdir.is_dir() and (run.workdir / 'summary.json').exists()


def test_running_again_resumes_and_appends_without_duplicates(make_config, tmp_path):
  jaxtrain.fit(make_config(**{'train.num_steps': 20}), tmp_path)
  run = jaxtrain.fit(make_config(**{'train.num_steps': 40}), tmp_path)
  train_steps = [r['step'] for r in run.history if 'train/loss' in r]
  assert train_steps == [10, 20, 30, 40]
  assert run.summary['steps'] == 40
  # A finished run is not trained again and its files stay as they were.
  metrics = (tmp_path / 'metrics.jsonl').read_text()
  again = jaxtrain.fit(make_config(**{'train.num_steps': 40}), tmp_path)
  assert (tmp_path / 'metrics.jsonl').read_text() == metrics
  assert again.summary == run.summary


def test_best_evaluation_survives_a_resume(make_config, tmp_path):
  config = make_config(**{'train.num_steps': 20, 'train.eval_every_steps': 5, 'model.norm': 'none',
                          'model.dropout': 0.0, 'checkpoint.monitor': 'eval/accuracy',
                          'checkpoint.mode': 'max'})
  first = jaxtrain.fit(config, tmp_path)
  records = [r for r in first.history if 'eval/accuracy' in r]
  best = max(records, key=lambda r: r['eval/accuracy'])
  assert first.summary['best_step'] == best['step']
  # At lr=1e-9 (no BatchNorm statistics, no dropout) steps 21-25 change nothing: their evaluation ties
  # with step 20's at best, so the best found before the resume must stay.
  config.train.num_steps, config.optim.lr = 25, 1e-9
  resumed = jaxtrain.fit(config, tmp_path)
  assert resumed.summary['best_step'] == best['step']
  assert resumed.summary['best']['eval/accuracy'] == best['eval/accuracy']


def test_bias_init_auto_means_zeros_and_a_small_validation_fraction_is_kept(make_config):
  run = jaxtrain.fit(make_config(**{'train.num_steps': 2, 'model.bias_init': 'auto',
                                    'model.norm': 'none', 'data.validation_fraction': 0.0001}))
  assert run.summary['steps'] == 2
  assert data.load(make_config(**{'data.validation_fraction': 0.0001})).eval_name == 'validation'


def test_resumed_run_matches_an_uninterrupted_one(make_config, tmp_path):
  """Data order and dropout randomness are functions of the step: a run that lost its last checkpoint
  and resumed from step 15 ends bit-identical to one that never stopped."""
  config = make_config(**{'train.num_steps': 30, 'checkpoint.every_steps': 15, 'model.dropout': 0.3})
  straight = jaxtrain.fit(config, tmp_path / 'a')
  jaxtrain.fit(config, tmp_path / 'b')
  for step in ('20', '30'):  # As if killed between steps 15 and 20 (20: the best evaluation's save).
    shutil.rmtree(tmp_path / 'b' / 'checkpoints' / step, ignore_errors=True)
  (tmp_path / 'b' / 'summary.json').unlink()
  metrics = tmp_path / 'b' / 'metrics.jsonl'
  metrics.write_text(''.join(line + '\n' for line in metrics.read_text().splitlines()
                             if json.loads(line)['step'] <= 15))
  resumed = jaxtrain.fit(config, tmp_path / 'b')
  for a, b in zip(jax.tree.leaves(straight.state), jax.tree.leaves(resumed.state), strict=True):
    np.testing.assert_array_equal(a, b)
  windows = [{r['step']: r['train/window_steps'] for r in run.history if 'train/loss' in r}
             for run in (straight, resumed)]
  assert windows[0] == {10: 10, 20: 10, 30: 10}
  assert windows[1] == {10: 10, 20: 5, 30: 10}  # Steps 16-20 only: the record says what it averages.


def test_eval_with_batchnorm_uses_running_statistics(make_config, tmp_path):
  """After training, one example's eval prediction does not depend on the rest of its batch."""
  config = make_config(**{'train.num_steps': 30, 'model.norm': 'batch'})
  run = jaxtrain.fit(config, tmp_path)
  model = models.build(config.model, 10)
  variables = state_lib.variables(run.state)
  assert 'batch_stats' in variables
  splits = data.load(config)
  stats = json.loads((tmp_path / data.STATS_FILE).read_text())
  batch = next(data.iterate(data.eval_batches(splits.test, stats, 64)))
  alone = model.apply(variables, batch['image'][:1], train=False)
  together = model.apply(variables, batch['image'], train=False)[:1]
  np.testing.assert_allclose(alone, together, rtol=1e-5, atol=1e-5)
  eval_step = jax.jit(steps.make_eval_step(model_lib.wrap(model)))
  sums = eval_step(run.state, batch)
  assert int(sums['count']) == 64


def test_state_is_a_plain_pytree(make_config):
  config = make_config()
  model = models.build(config.model, 10)
  state = state_lib.create(model_lib.wrap(model), optim.build(config.optim, 10).tx,
                           {'image': np.zeros((1, 8, 8, 1), np.float32)}, seed=0)
  restored = pickle.loads(pickle.dumps(jax.device_get(state)))
  assert jax.tree.structure(restored) == jax.tree.structure(state)
  assert state_lib.num_params(state.params) == 53226


@pytest.mark.slow
@pytest.mark.usefixtures('optimized')  # 1,200 steps.
def test_default_job_reaches_97_percent_test_accuracy(data_dir, tmp_path):
  config = jaxtrain.load_config('configs/digits_cnn.py',
                                {'data.data_dir': data_dir, 'train.progress_bar': False})
  run = jaxtrain.fit(config, tmp_path)
  assert run.summary['final']['test/accuracy'] >= 0.97
  assert run.summary['steps'] == 30 * (1293 // 32)

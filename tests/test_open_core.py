"""Your own model, data, loss and callbacks: NNX and Linen modules on Arrays, trained, resumed and evaluated
by the same engine as the zoo, with every mistake caught before anything is written."""

import hashlib
import json
import os
import subprocess
import sys

import flax.linen as nn
import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ROOT
from flax import nnx

import jaxtrain
import jaxtrain.model
from jaxtrain import build, data, models
from jaxtrain import config as config_lib

sys.path.insert(0, str(ROOT))
from examples import tokens  # noqa: E402

pytestmark = pytest.mark.xdist_group('test_open_core')


def small_config(**overrides):
  config = config_lib.defaults()
  config_lib.override(config, {
      'model.inputs': ('tokens',), 'data.normalize': (), 'data.batch_size': 32, 'train.num_steps': 40,
      'train.log_every_steps': 10, 'train.eval_every_steps': 20, 'optim.lr': 3e-3,
      'train.progress_bar': False, 'compile_cache.enabled': False, 'diagnostics.report': False, **overrides})
  return config


TOKENS = jaxtrain.data.Arrays(train=tokens.make(512, 0), eval=tokens.make(256, 1))
TOKENS_NET = tokens.TokenNet(rngs=nnx.Rngs(0))  # One object: fits of it compile once.


def params_hash(state) -> str:
  leaves = jax.tree.leaves(jax.device_get((state.params, state.batch_stats)))
  return hashlib.sha256(b''.join(np.asarray(leaf).tobytes() for leaf in leaves)).hexdigest()


class Recorder(jaxtrain.Callback):
  """Every hook call, with the records it got."""

  def __init__(self):
    self.calls = []

  def on_fit_start(self, trainer):
    self.calls.append(('fit_start', trainer.step))

  def on_log(self, trainer, step, record):
    self.calls.append(('log', step, record))

  def on_eval(self, trainer, step, record):
    self.calls.append(('eval', step, record))

  def on_checkpoint(self, trainer, step):
    self.calls.append(('checkpoint', step))

  def on_fit_end(self, trainer, run):
    self.calls.append(('fit_end', run.summary['steps']))


def test_nnx_model_on_arrays_with_a_custom_loss_and_a_callback(tmp_path):
  recorder = Recorder()
  model = tokens.TokenNet(rngs=nnx.Rngs(0))
  before = jax.tree.map(np.copy, nnx.state(model, nnx.Param).to_pure_dict())
  run = jaxtrain.fit(small_config(**{'train.num_steps': 120, 'train.eval_every_steps': 60,
                                     'checkpoint.every_steps': 60}), tmp_path,
                     model=model, data=TOKENS, task=tokens.FOCAL, callbacks=[recorder])
  losses = [r['train/loss'] for r in run.history if 'train/loss' in r]
  assert losses[-1] < 0.5 * losses[0]
  assert run.summary['final']['eval/accuracy'] > 0.6  # Chance is about 1/3.
  assert set(run.summary['final']) == {f'{split}/{name}' for split in ('eval', 'test')
                                       for name in ('loss', 'accuracy', 'cross_entropy')}
  # The hooks see exactly what metrics.jsonl holds, at the log, eval and checkpoint moments only.
  logged = [call[2] for call in recorder.calls if call[0] in ('log', 'eval')]
  assert logged == [r for r in run.history if 'test/loss' not in r]
  assert recorder.calls[0] == ('fit_start', 0) and recorder.calls[-1] == ('fit_end', 120)
  assert [c[1] for c in recorder.calls if c[0] == 'checkpoint'] == [60, 120]
  # The NNX state (Params and BatchStats) is one pytree of plain dicts, trained and checkpointed.
  assert set(run.state.batch_stats['norm']) == {'mean', 'var'}
  assert not np.allclose(run.state.params['head']['kernel'], before['head']['kernel'])
  np.testing.assert_array_equal(nnx.state(model, nnx.Param).to_pure_dict()['head']['kernel'],
                                before['head']['kernel'])  # The module passed in is left as it was.
  trained = run.module()  # ... and the trained one comes back as a module, ready to call.
  trained.eval()
  logits = trained(jnp.asarray(TOKENS.eval['tokens']))
  accuracy = float((logits.argmax(-1) == TOKENS.eval['label']).mean())
  assert accuracy == pytest.approx(run.summary['final']['eval/accuracy'], abs=1e-6)
  evaluated = jaxtrain.evaluate(small_config(), tmp_path, model=model, data=TOKENS, task=tokens.FOCAL)
  assert evaluated['eval/accuracy'] == pytest.approx(run.summary['final']['eval/accuracy'])


class Tabular(nn.Module):
  """A Linen MLP with BatchNorm (`norm`) and dropout, switched by its `train` argument."""

  width: int = 32
  norm: bool = True
  dropout: float = 0.2

  @nn.compact
  def __call__(self, features, train: bool):
    x = nn.Dense(self.width)(features)
    x = nn.relu(nn.BatchNorm(use_running_average=not train)(x) if self.norm else x / 100)
    return nn.Dense(2)(nn.Dropout(self.dropout, deterministic=not train)(x))


def tabular(num_examples: int, seed: int) -> dict:
  """Features on a scale of hundreds (not normalized by jaxtrain: they are not an image)."""
  rng = np.random.default_rng(seed)
  features = rng.normal(100.0, 50.0, size=(num_examples, 8))
  return {'features': features, 'label': (features[:, 0] > features[:, 1]).astype(np.int64)}


TABULAR = jaxtrain.data.Arrays(train=tabular(512, 0), eval=tabular(128, 1))
TABULAR_CONFIG = {'model.inputs': ('features',), 'data.normalize': ('image',), 'optim.lr': 1e-2}


def test_linen_model_on_float_features_resumes_exactly(tmp_path):
  config = small_config(**TABULAR_CONFIG, **{'train.num_steps': 60})
  straight = jaxtrain.fit(config, tmp_path / 'straight', model=Tabular(), data=TABULAR)
  assert straight.summary['final']['eval/accuracy'] > 0.8
  # Float features pass as they are: no statistics for them, float32 on the device.
  assert json.loads((tmp_path / 'straight' / data.STATS_FILE).read_text()) == {'num_examples': 512}
  batch = data.train_batches(TABULAR.train, {'num_examples': 512}, 32, 0)[0]
  assert batch['features'].dtype == np.float32 and batch['label'].dtype == np.int32
  np.testing.assert_allclose(np.abs(batch['features']).mean(), 100, rtol=0.3)
  half = small_config(**TABULAR_CONFIG, **{'train.num_steps': 30})
  jaxtrain.fit(half, tmp_path / 'resumed', model=Tabular(), data=TABULAR)
  resumed = jaxtrain.fit(config, tmp_path / 'resumed', model=Tabular(), data=TABULAR)
  assert params_hash(resumed.state) == params_hash(straight.state)


def test_nnx_layers_are_ordered_as_defined_for_the_doctor():
  order = jaxtrain.model.wrap(tokens.TokenNet(rngs=nnx.Rngs(0))).forward_order({})
  assert order == ['embed', 'dropout', 'hidden', 'norm', 'head']  # Not sorted: 'dropout' < 'embed'.


def test_integer_tokens_reach_nn_embed_as_integers():
  """An nn.Embed raises 'Input type must be an integer' on floats; int64 arrays arrive as int32."""
  class Embedder(nn.Module):
    @nn.compact
    def __call__(self, ids):
      assert jnp.issubdtype(ids.dtype, jnp.integer)
      return nn.Dense(3)(nn.Embed(tokens.VOCAB, 8)(ids).mean(axis=1))

  arrays = {k: v.astype(np.int64) for k, v in tokens.make(128, 0).items()}
  run = jaxtrain.fit(small_config(**{'data.normalize': ('image',)}), model=Embedder(),
                     data=jaxtrain.data.Arrays(train=arrays, test=tokens.make(64, 1)))
  assert run.summary['steps'] == 40 and 'test/accuracy' in run.summary['final']


def test_grain_map_dataset_splits_and_validation_carved_from_train(tmp_path):
  records = [{'tokens': t, 'label': y} for t, y in zip(*tokens.make(300, 0).values(), strict=True)]
  source = jaxtrain.data.Arrays(train=grain.MapDataset.source(records))
  splits = data.load(small_config(**{'data.validation_fraction': 0.2}), source)
  assert splits.eval_name == 'validation' and data.length(splits.eval) == 60
  assert data.length(splits.train) == 240 and splits.num_classes == 3
  np.testing.assert_array_equal(splits.eval['tokens'][0], records[240]['tokens'])


STRATEGIES_SCRIPT = '''
import json, sys
sys.path.insert(0, sys.argv[1]); sys.path.insert(0, sys.argv[1] + '/tests')
import jaxtrain
from jaxtrain import config as config_lib
from test_open_core import TABULAR, TABULAR_CONFIG, Tabular, small_config
out = {}
for name, overrides in {'single': {'parallel.strategy': 'single'}, 'pmap': {'parallel.strategy': 'pmap'},
                        'mesh': {'parallel.strategy': 'mesh'},
                        'fsdp': {'parallel.strategy': 'mesh', 'parallel.mesh.data': 4,
                                 'parallel.mesh.fsdp': 2, 'parallel.fsdp_min_size': 64}}.items():
  config = small_config(**{**TABULAR_CONFIG, 'train.num_steps': 20, 'train.log_every_steps': 1,
                            'optim.name': 'momentum', 'optim.lr': 0.01, **overrides})
  # Without BatchNorm and dropout: under pmap semantics each device would normalize its slice with its own
  # statistics, and draw its slice's dropout mask from the same key (the zoo's layers avoid both).
  run = jaxtrain.fit(config, model=Tabular(width=64, norm=False, dropout=0.0), data=TABULAR)
  out[name] = [r['train/loss'] for r in run.history if 'train/loss' in r]
print(json.dumps(out))
'''


def test_a_user_model_trains_alike_on_one_device_pmap_mesh_and_fsdp():
  env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=8'}
  result = subprocess.run([sys.executable, '-c', STRATEGIES_SCRIPT, str(ROOT)], capture_output=True,
                          text=True, timeout=300, env=env)
  assert result.returncode == 0, result.stderr[-3000:]
  losses = json.loads(result.stdout.strip().splitlines()[-1])
  for name in ('pmap', 'mesh', 'fsdp'):
    np.testing.assert_allclose(losses[name], losses['single'], rtol=2e-4, err_msg=name)


class StopAndSave(jaxtrain.Callback):
  def on_log(self, trainer, step, record):
    if step == 10:
      trainer.save()
    if step == 20:
      trainer.stop('enough')


class Collect:
  """A writer of the writer interface: `write(record)` and `close()`."""

  def __init__(self):
    self.records, self.closed = [], False

  def write(self, record):
    self.records.append(record)

  def close(self):
    self.closed = True


def test_a_writer_joins_metrics_jsonl_and_tensorboard(tmp_path):
  collect = Collect()
  run = jaxtrain.fit(small_config(), tmp_path, model=TOKENS_NET, data=TOKENS, writers=[collect])
  assert collect.records == run.history and collect.closed  # Every record, test/ included, then closed.


def test_trainer_save_and_stop(tmp_path):
  config = small_config(**{'train.num_steps': 100, 'train.eval_every_steps': 50,
                           'checkpoint.every_steps': 50})
  run = jaxtrain.fit(config, tmp_path, model=tokens.TokenNet(rngs=nnx.Rngs(0)), data=TOKENS,
                     callbacks=[StopAndSave()])
  assert run.summary['steps'] == 20 and run.summary['stop_reason'] == 'enough'
  assert sorted(int(p.name) for p in (tmp_path / 'checkpoints').iterdir() if p.name.isdigit()) == [10, 20]
  again = jaxtrain.fit(config, tmp_path, model=tokens.TokenNet(rngs=nnx.Rngs(0)), data=TOKENS)
  assert again.summary == run.summary  # A stopped run is finished: the same command trains nothing.


def test_early_stopping_on_a_metric_of_the_task():
  config = small_config(**{'train.num_steps': 100, 'train.eval_every_steps': 10,
                           'early_stopping.monitor': 'eval/cross_entropy', 'early_stopping.patience': 2,
                           'early_stopping.min_delta': 100.0})  # No evaluation can improve by 100.
  run = jaxtrain.fit(config, model=tokens.TokenNet(rngs=nnx.Rngs(0)), data=TOKENS, task=tokens.FOCAL)
  assert run.summary['stopped_early'] and run.summary['steps'] == 30
  assert 'eval/cross_entropy' in run.summary['stop_reason']


def test_a_metric_no_evaluation_reports_is_a_config_error_listing_those_it_does(tmp_path):
  with pytest.raises(jaxtrain.ConfigError, match=r"checkpoint.monitor='eval/mae' is not a metric this run "
                     r'reports; choose one of: eval/accuracy, eval/cross_entropy, eval/loss'):
    jaxtrain.fit(small_config(**{'checkpoint.monitor': 'eval/mae'}), tmp_path / 'run',
                 model=tokens.TokenNet(rngs=nnx.Rngs(0)), data=TOKENS, task=tokens.FOCAL)
  assert not (tmp_path / 'run').exists()


@pytest.mark.parametrize('objects, message', [
    ({'model': 'not a module'}, r'model is of type str, not a flax.linen.Module or flax.nnx.Module'),
    ({'data': {'tokens': np.zeros((4, 2))}}, r'data is of type dict; give jaxtrain.data.Arrays'),
    ({'task': jaxtrain.Task(loss=lambda logits, batch: logits.mean())},
     r"the task's loss gives shape \(\) for a batch of 1; return one value per example"),
    ({'data': jaxtrain.data.Arrays(train={'tokens': np.zeros((8, 3), np.int32), 'label': np.zeros(5)},
                                   eval={'tokens': np.zeros((4, 3), np.int32), 'label': np.zeros(4)})},
     r'data train= arrays have different numbers of rows'),
    ({'model': nnx.Linear(5, 3, rngs=nnx.Rngs(0))},
     r"model '<object flax.nnx.nn.linear.Linear>' fails on a batch "
     r"\{'tokens': 'int32\[1, 12\]', 'label': 'int32\[1\]'\}: TypeError"),
])
def test_objects_that_cannot_train_are_config_errors_before_any_write(tmp_path, objects, message):
  given = {'model': tokens.TokenNet(rngs=nnx.Rngs(0)), 'data': TOKENS, **objects}
  with pytest.raises(jaxtrain.ConfigError, match=message):
    jaxtrain.fit(small_config(), tmp_path / 'run', **given)
  assert not (tmp_path / 'run').exists()


class Reshaper(nn.Module):
  @nn.compact
  def __call__(self, tokens):
    return nn.Dense(3)(tokens.reshape(-1, 5))  # 12 tokens do not reshape to 5: fails while initializing.


@pytest.mark.parametrize('given, overrides, message', [
    ({'model': Reshaper()}, {}, r"model '<object test_open_core.Reshaper>' fails on a batch .*: ValueError: "
                                r'cannot reshape'),
    ({}, {'data.normalize': ('tokenz',)}, r"data.normalize=\('tokenz',\) names \['tokenz'\], which the data "
                                          r'does not have'),
    ({'callbacks': [print]}, {}, r'callbacks holds builtin_function_or_method, not jaxtrain.Callback'),
    ({'model': tokens.TokenNet(rngs=nnx.Rngs(0))}, {'model.kwargs': {'width': 3}}, None),
    ({'model': None}, {'model.name': 'mlp', 'model.kwargs': {'width': 3}},
     r'model.kwargs=.* is only for a model named by import path'),
])
def test_more_mistakes_are_one_line_config_errors(tmp_path, given, overrides, message):
  config = small_config(**overrides)
  given = {'model': tokens.TokenNet(rngs=nnx.Rngs(0)), 'data': TOKENS, **given}
  if message is None:  # model.kwargs beside a passed model: the object wins, as for every other key.
    assert jaxtrain.fit(small_config(**{**overrides, 'train.num_steps': 2}), **given).summary['steps'] == 2
    return
  with pytest.raises(jaxtrain.ConfigError, match=message):
    jaxtrain.fit(config, tmp_path / 'run', **given)
  assert not (tmp_path / 'run').exists()


def test_a_run_trained_on_objects_evaluates_only_with_them_and_callbacks_may_be_one_or_none(tmp_path):
  config = small_config(**{'train.num_steps': 10})
  jaxtrain.fit(config, tmp_path, model=tokens.TokenNet(rngs=nnx.Rngs(0)), data=TOKENS, callbacks=None)
  recorded = json.loads((tmp_path / 'config.json').read_text())
  assert recorded['model']['name'] == '<object examples.tokens.TokenNet>'
  shapes = 'label:int32[], tokens:int32[12]'
  assert recorded['data']['name'] == (f'<object jaxtrain.data.Arrays train=512 x {shapes}; '
                                      f'eval=256 x {shapes}; test=none>')
  with pytest.raises(jaxtrain.ConfigError, match=r"data.name='<object jaxtrain.data.Arrays train=512 "
                                                 r".*' records an object passed to jaxtrain.fit"):
    jaxtrain.evaluate(None, tmp_path)
  other = jaxtrain.data.Arrays(train=tokens.make(320, 0), eval=tokens.make(256, 1))
  with pytest.raises(jaxtrain.ConfigError,  # Other arrays: another run.
                     match=r'holds a run with data.name=.*train=512 x .*this config has .*train=320 x'):
    jaxtrain.fit(config, tmp_path, model=tokens.TokenNet(rngs=nnx.Rngs(0)), data=other)
  recorder = Recorder()  # One callback, not in a list.
  jaxtrain.fit(config, tmp_path / 'one', model=TOKENS_NET, data=TOKENS, callbacks=recorder)
  assert recorder.calls[-1] == ('fit_end', 10)


def test_doctor_on_a_linen_user_model_with_dropout_registered_in_the_zoo(monkeypatch):
  """The issue's own case: a user's Linen module under a zoo name has no `dropout` field to clone."""
  monkeypatch.setitem(models.MODELS, 'tabular', lambda cfg, num_classes: Tabular())
  config = small_config(**{**TABULAR_CONFIG, 'model.name': 'tabular', 'doctor.overfit_steps': 20,
                           'doctor.lr_find_steps': 5})
  report = jaxtrain.doctor(config, data=TABULAR)
  status = {c['name']: c['status'] for c in report['checks']}
  assert status['dead_relu'] == 'skipped' and status['initial_loss'] in ('pass', 'warn', 'fail')


def test_a_model_redefined_in_a_notebook_trains_the_new_one_and_a_refit_compiles_nothing(monkeypatch):
  def define(width):
    class Net(nn.Module):  # The same name each time, as when a notebook cell runs again.
      @nn.compact
      def __call__(self, tokens):
        return nn.Dense(3)(nn.Dense(width)(nn.Embed(32, 4)(tokens).mean(axis=1)))
    return Net()

  config = small_config(**{'train.num_steps': 10})
  first = define(4)
  assert jaxtrain.fit(config, model=first, data=TOKENS).state.params['Dense_1']['kernel'].shape == (4, 4)
  misses = build._program.cache_info().misses
  jaxtrain.fit(config, model=first, data=TOKENS)  # The same object again: the same compiled program.
  assert build._program.cache_info().misses == misses
  assert jaxtrain.fit(config, model=define(8), data=TOKENS).state.params['Dense_1']['kernel'].shape == (4, 8)
  # A name registered again in the zoo's registry trains the new entry too.
  registered = small_config(**{'train.num_steps': 10, 'model.name': 'notebook_net'})
  for width in (4, 8):
    monkeypatch.setitem(models.MODELS, 'notebook_net', lambda cfg, num_classes, width=width: define(width))
    run = jaxtrain.fit(registered, data=TOKENS)
    assert run.state.params['Dense_1']['kernel'].shape == (4, width)


def test_population_and_sweep_through_fit_with_user_objects(tmp_path):
  config = small_config(**{'population.size': 2, 'population.lr': (1e-3, 1e-2), 'train.num_steps': 20})
  recorder = Recorder()
  run = jaxtrain.fit(config, tmp_path / 'population', model=tokens.TokenNet(rngs=nnx.Rngs(0)), data=TOKENS,
                     callbacks=[recorder])
  assert [m['optim.lr'] for m in run.summary['members']] == [1e-3, 1e-2]
  evals = [call[2] for call in recorder.calls if call[0] == 'eval']
  assert [record['step'] for record in evals] == [20] and {'eval/loss/m0', 'eval/loss/m1'} <= set(evals[0])
  assert recorder.calls[-1] == ('fit_end', 20)
  assert (tmp_path / 'population' / 'members' / 'm1' / 'checkpoints').is_dir()
  sweep = small_config(**{'sweep.space': ('optim.lr=grid(0.001, 0.01)',), 'sweep.sampler': 'grid',
                          'train.num_steps': 20})
  result = jaxtrain.sweep(sweep, tmp_path / 'sweep', model=tokens.TokenNet(rngs=nnx.Rngs(0)), data=TOKENS)
  assert len(result['trials']) == 2 and result['best']['eval/accuracy'] > 0


@pytest.mark.usefixtures('optimized')  # The doctor's probes train hundreds of steps.
def test_doctor_and_lr_find_on_a_user_model_skip_only_the_zoo_checks(tmp_path):
  config = small_config(**{'doctor.overfit_steps': 30, 'doctor.lr_find_steps': 10})
  report = jaxtrain.doctor(config, tmp_path, model=tokens.TokenNet(rngs=nnx.Rngs(0)), data=TOKENS,
                           task=tokens.FOCAL)
  status = {c['name']: c['status'] for c in report['checks']}
  assert status['dead_relu'] == status['saturated_units'] == status['initial_loss'] == 'skipped'
  for name in ('overfit_batch', 'vanishing_gradients', 'exploding_gradients', 'learning_rate'):
    assert status[name] in ('pass', 'warn', 'fail'), name
  advice = {c['name']: c['advice'] for c in report['checks']}
  assert 'zoo' in advice['dead_relu']
  # With a zoo task, the chance-level initial loss check runs on the user's model too.
  classification = jaxtrain.doctor(config, tmp_path / 'zoo_task', model=tokens.TokenNet(rngs=nnx.Rngs(0)),
                                   data=TOKENS)
  assert {c['name']: c['status'] for c in classification['checks']}['initial_loss'] != 'skipped'
  result = jaxtrain.lr_find(small_config(**{'lr_find.num_steps': 10}), tmp_path / 'lr',
                            model=tokens.TokenNet(rngs=nnx.Rngs(0)), data=TOKENS)
  assert len(result['lrs']) >= 2 and result['suggested_lr'] > 0

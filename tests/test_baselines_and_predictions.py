"""The doctor's second edition (note 002): baselines, the data as the model sees it, the predictions of a run
(confusion, worst examples, dynamics on a fixed batch), dropout off on any model, and the comparisons.

Each concern is tested by itself on small data; one digits run checks every figure of summary.json
against a computation by hand, and a user's Linen model that ignores its input must be flagged.
"""

import json
import math
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from conftest import ROOT
from flax import nnx

import jaxtrain
from jaxtrain import config as config_lib
from jaxtrain import data, models, tasks
from jaxtrain import model as model_lib
from jaxtrain.callbacks import dynamics
from jaxtrain.diagnostics import baselines, experiment, predictions, views

sys.path.insert(0, str(ROOT))
from examples import tokens  # noqa: E402

TOKENS = jaxtrain.data.Arrays(train=tokens.make(512, 0), eval=tokens.make(256, 1))


def tokens_config(**overrides):
  config = config_lib.defaults()
  config_lib.override(config, {
      'model.inputs': ('tokens',), 'data.normalize': (), 'data.batch_size': 32, 'train.num_steps': 40,
      'train.log_every_steps': 10, 'train.eval_every_steps': 20, 'optim.lr': 3e-3,
      'train.progress_bar': False, 'compile_cache.enabled': False, 'doctor.baseline_steps': 40, **overrides})
  return config


class IgnoresInput(nn.Module):
  """Logits from a bias alone: the inputs reach the model and change nothing."""

  @nn.compact
  def __call__(self, tokens):
    return jnp.broadcast_to(self.param('bias', nn.initializers.zeros, (3,)), (tokens.shape[0], 3))


class SoftmaxHead(nn.Module):
  """A classifier that ends in a softmax, fed to a loss that applies its own (note 004's bug)."""

  @nn.compact
  def __call__(self, tokens):
    return nn.softmax(nn.Dense(3)(nn.Embed(32, 8)(tokens).mean(axis=1)))


class LinenDropout(nn.Module):
  rate: float = 0.5

  @nn.compact
  def __call__(self, tokens, train: bool = False):
    x = nn.Embed(32, 16)(tokens).mean(axis=1)
    return nn.Dense(3)(nn.Dropout(self.rate, deterministic=not train)(nn.relu(nn.Dense(64)(x))))


class NNXSigmoidHead(nnx.Module):
  def __init__(self, rngs: nnx.Rngs):
    self.embed, self.head = nnx.Embed(32, 8, rngs=rngs), nnx.Linear(8, 1, rngs=rngs)

  def __call__(self, tokens):
    return nnx.sigmoid(self.head(self.embed(tokens).mean(axis=1)))


# ---- Constant baselines, by hand.

def test_constant_outputs_are_the_best_constant_for_each_loss():
  labels = {'label': np.array([0, 0, 0, 1, 1, 2, 0, 0])}
  softmax = baselines.constant_outputs(tasks.build(_task('classification')), labels, (4,), 100)
  np.testing.assert_allclose(np.exp(softmax), np.array([6, 3, 2, 1]) / 12, rtol=1e-6)  # Add-one smoothed.
  assert softmax.argmax() == 0  # The majority class.
  binary = baselines.constant_outputs(tasks.build(_task('binary')), {'label': np.array([1, 0, 0, 0])}, (1,),
                                      100)
  assert jax.nn.sigmoid(binary[0]) == pytest.approx(0.25)
  regression = baselines.constant_outputs(tasks.build(_task('regression')),
                                          {'label': np.array([[1.0, 10.0], [3.0, 20.0]])}, (2,), 100)
  np.testing.assert_allclose(regression, [2.0, 15.0])
  only_first = baselines.constant_outputs(tasks.build(_task('regression')),
                                          {'label': np.array([1.0, 3.0, 100.0])}, (1,), 2)
  np.testing.assert_allclose(only_first, [2.0])  # stats_max_examples bounds the labels read.
  assert baselines.constant_outputs(jaxtrain.Task(loss=tokens.focal_loss), labels, (4,), 100) is None


def _task(name: str) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({'name': name, 'label_smoothing': 0.0})


# ---- One digits run: every figure against the state it describes.

def test_a_run_reports_baselines_confusion_worst_examples_and_dynamics(make_config, tmp_path):
  config = make_config('digits_mlp', **{'train.num_steps': 40, 'train.eval_every_steps': 20,
                                        'diagnostics.fixed_batch': 8, 'diagnostics.report': True})
  run = jaxtrain.fit(config, tmp_path)
  exp, stats, _ = experiment.prepare(config, tmp_path)
  summary = json.loads((tmp_path / 'summary.json').read_text())
  final = summary['final']

  train_labels = np.asarray(exp.splits.train['label'])
  eval_labels = np.asarray(exp.splits.eval['label'])
  prior = (np.bincount(train_labels, minlength=10) + 1) / (len(train_labels) + 10)
  majority = summary['baselines']['majority']
  assert majority['eval/accuracy'] == pytest.approx(np.mean(eval_labels == prior.argmax()))
  assert majority['eval/loss'] == pytest.approx(-np.mean(np.log(prior[eval_labels])), rel=1e-5)
  assert final['eval/loss'] < baselines.MARGIN * majority['eval/loss']
  assert 'no_better_than_baseline' not in {f['name'] for f in summary['diagnosis']}

  confusion = np.array(summary['confusion'])
  assert confusion.shape == (10, 10) and confusion.sum() == len(eval_labels)
  np.testing.assert_array_equal(confusion.sum(axis=1), np.bincount(eval_labels, minlength=10))
  assert np.trace(confusion) / confusion.sum() == pytest.approx(final['eval/accuracy'])

  predicted = predictions.split_predictions(exp, run.state, stats)
  assert predicted['loss'].mean() == pytest.approx(final['eval/loss'], rel=1e-5)
  np.testing.assert_array_equal(predicted['label'], eval_labels)
  worst = predictions.worst(predicted['loss'], 5)
  assert predicted['loss'][worst[0]] == predicted['loss'].max()
  assert np.all(np.diff(predicted['loss'][worst]) <= 0)  # Highest loss first.
  for plot in ('batch', 'examples', 'confusion', 'dynamics', 'curves'):
    assert (tmp_path / 'plots' / f'{plot}.png').stat().st_size > 5000, plot

  records = [json.loads(line) for line in (tmp_path / dynamics.DYNAMICS_FILE).read_text().splitlines()]
  assert [r['step'] for r in records] == [20, 40]
  np.testing.assert_allclose(records[-1]['label_probability'], predicted['label_probability'][:8], rtol=1e-5)

  config.train.num_steps = 60  # Resumed: the records continue, none repeated.
  jaxtrain.fit(config, tmp_path)
  records = [json.loads(line) for line in (tmp_path / dynamics.DYNAMICS_FILE).read_text().splitlines()]
  assert [r['step'] for r in records] == [20, 40, 60]


def test_batch_view_is_step_one_batch_after_augmentation(make_config, tmp_path):
  plain = make_config('digits_cnn', **{'data.augment': 'none'})
  exp, stats, _ = experiment.prepare(plain, None)
  seen = views.first_batch(exp, exp.new_state(), stats)
  expected = data.train_batches(exp.splits.train, stats, plain.data.batch_size, plain.seed)[0]
  np.testing.assert_array_equal(seen['image'], expected['image'])
  flipped = make_config('digits_cnn', **{'data.augment': 'flip'})
  exp, stats, _ = experiment.prepare(flipped, None)
  seen = views.first_batch(exp, exp.new_state(), stats)['image']
  assert not np.array_equal(seen, expected['image'])  # Some images are flipped...
  assert all(np.array_equal(a, b) or np.array_equal(a, b[:, ::-1]) for a, b in zip(seen, expected['image'],
                                                                                     strict=True))
  views.write_batch(exp, exp.new_state(), stats, tmp_path)
  assert (tmp_path / views.BATCH_PLOT).stat().st_size > 5000


def test_batch_view_of_token_data_is_a_table_of_statistics(tmp_path):
  lines = views.feature_lines(tokens.make(32, 0))
  header, *rows = lines
  assert header.split()[:3] == ['key', 'shape', 'dtype']
  assert [r.split()[0] for r in rows] == ['label', 'tokens']
  assert '(32, 12)' in rows[1] and 'int32' in rows[1]
  config = tokens_config()
  exp, stats, _ = experiment.prepare(config, None, model=tokens.TokenNet(rngs=nnx.Rngs(0)),
                                     data_source=TOKENS)
  assert set(views.write_batch(exp, exp.new_state(), stats, tmp_path)) == {'tokens', 'label'}
  assert (tmp_path / views.BATCH_PLOT).stat().st_size > 3000


# ---- Checks on any model.

def test_a_model_that_ignores_its_input_is_flagged_by_the_doctor_and_after_a_run(tmp_path):
  config = tokens_config(**{'doctor.checks': ('baselines',)})
  report = jaxtrain.doctor(config, tmp_path / 'doctor', model=IgnoresInput(), data=TOKENS)
  found = {c['name']: c for c in report['checks']}
  assert found['input_independent']['status'] == 'fail'
  assert 'model.inputs' in found['input_independent']['advice']
  assert set(report['baselines']) == {'majority', 'input_independent'}
  assert report['verdict'] == 'fail'
  config.doctor.baseline_steps = 100
  healthy = jaxtrain.doctor(config, tmp_path / 'healthy', model=tokens.TokenNet(rngs=nnx.Rngs(0)),
                            data=TOKENS)
  assert {c['name']: c['status'] for c in healthy['checks']}['input_independent'] == 'pass'

  config.train.num_steps = 60  # The doctor's input-independent baseline joins the run's summary.
  run = jaxtrain.fit(config, tmp_path / 'doctor', model=IgnoresInput(), data=TOKENS)
  assert set(run.summary['baselines']) == {'majority', 'input_independent'}
  finding = next(f for f in run.summary['diagnosis'] if f['name'] == 'no_better_than_baseline')
  assert 'input_independent' in finding['evidence'] and 'model.inputs' in finding['advice']
  assert np.array(run.summary['confusion']).sum() == 256  # A user's model and data get every figure too.
  for plot in ('batch', 'examples', 'confusion'):  # Token ids: tables, not images, for batch and examples.
    assert (tmp_path / 'doctor' / 'plots' / f'{plot}.png').stat().st_size > 3000, plot


def test_no_false_alarm_on_the_shipped_user_model_config(data_dir):
  config = jaxtrain.load_config(ROOT / 'configs' / 'tokens_nnx.py', {
      'data.data_dir': data_dir, 'compile_cache.enabled': False, 'doctor.lr_find_steps': 60})
  report = jaxtrain.doctor(config)
  assert report['verdict'] != 'fail', [c for c in report['checks'] if c['status'] == 'fail']


@pytest.mark.parametrize('module, ending', [(SoftmaxHead(), 'a softmax'), (None, 'a sigmoid')],
                         ids=['linen_softmax', 'nnx_sigmoid'])
def test_probabilities_fed_to_a_logit_loss_fail_the_output_layer_check(module, ending):
  task = 'classification' if module is not None else 'binary'
  module = module if module is not None else NNXSigmoidHead(nnx.Rngs(0))
  arrays = TOKENS if task == 'classification' else jaxtrain.data.Arrays(
      train={**tokens.make(256, 0), 'label': (tokens.make(256, 0)['label'] == 0).astype(np.int32)},
      eval={**tokens.make(64, 1), 'label': (tokens.make(64, 1)['label'] == 0).astype(np.int32)})
  report = jaxtrain.doctor(tokens_config(**{'doctor.checks': ('init',), 'task.name': task}), model=module,
                           data=arrays)
  check = next(c for c in report['checks'] if c['name'] == 'output_layer')
  assert check['status'] == 'fail' and ending in check['advice'], check
  assert 'remove the output activation' in check['advice']


def test_probability_detection_spares_logits_and_relu_outputs():
  from jaxtrain.diagnostics import doctor
  rng = np.random.default_rng(0)
  assert doctor.probabilities(rng.normal(size=(8, 4))) is None
  assert doctor.probabilities(np.maximum(rng.uniform(-0.5, 0.9, (8, 4)), 0)) is None  # ReLU: exact zeros.
  assert doctor.probabilities(jax.nn.softmax(rng.normal(size=(8, 4)))).startswith('a softmax')
  assert doctor.probabilities(jax.nn.sigmoid(rng.normal(size=(8, 4)))).startswith('a sigmoid')


def _outputs(model, variables, batch, key):
  return model.apply(variables, batch, train=True, rngs={'dropout': key}, mutable=['batch_stats'])[0]


@pytest.mark.parametrize('kind', ['linen', 'nnx', 'zoo'])
def test_without_dropout_turns_off_every_dropout_layer_in_training_mode(kind):
  batch = {'tokens': tokens.make(16, 0)['tokens'], 'image': np.random.default_rng(0).normal(
      size=(16, 8, 8, 1)).astype(np.float32)}
  if kind == 'linen':
    model = model_lib.wrap(LinenDropout(), ('tokens',))
  elif kind == 'nnx':
    model = model_lib.wrap(tokens.TokenNet(dropout=0.5, rngs=nnx.Rngs(0)), ('tokens',))
  else:
    config = config_lib.defaults()
    config.model.update(name='mlp', dropout=0.5, features=(32,))
    model = model_lib.wrap(models.build(config.model, 3), ('image',))
  variables = model.init(jax.random.PRNGKey(0), batch)
  keys = jax.random.split(jax.random.PRNGKey(1), 2)
  on = [_outputs(model, variables, batch, key) for key in keys]
  assert not np.allclose(*on)
  off = model.without_dropout()
  first, second = (_outputs(off, variables, batch, key) for key in keys)
  np.testing.assert_array_equal(first, second)
  if kind != 'nnx':  # TokenNet's BatchNorm uses batch statistics in training mode: only then equal to eval.
    np.testing.assert_allclose(first, model.apply(variables, batch, train=False), rtol=1e-5, atol=1e-6)


def test_overfit_check_passes_on_a_user_model_with_heavy_dropout():
  config = tokens_config(**{'doctor.checks': ('training',), 'doctor.overfit_steps': 60, 'optim.lr': 1e-2})
  report = jaxtrain.doctor(config, model=LinenDropout(rate=0.7), data=TOKENS)
  status = {c['name']: c['status'] for c in report['checks']}
  assert status['overfit_batch'] == 'pass', report['checks']


# ---- The comparisons.

def test_compare_regularization_and_norm(make_config, tmp_path):
  config = make_config('digits_mlp', **{'doctor.checks': (), 'doctor.compare': 'regularization',
                                        'doctor.compare_steps': 60, 'model.dropout': 0.3,
                                        'optim.weight_decay': 1e-4})
  report = jaxtrain.doctor(config, tmp_path / 'regularization')
  (check,) = report['checks']
  result = report['comparison']
  assert check['name'] == 'regularization' and set(result) == {'with', 'without'}
  for run in result.values():
    assert run['gap'] == pytest.approx(run['eval_loss'] - run['train_loss'])
    assert 0 < run['train_loss'] < math.log(10)
  assert result['without']['train_loss'] < result['with']['train_loss']  # Dropout slows memorizing.

  config.doctor.compare = 'norm'
  report = jaxtrain.doctor(config, tmp_path / 'norm')
  result = report['comparison']
  assert report['checks'][0]['name'] == 'batch_norm'
  for choice in ('batch', 'none'):
    assert 1 <= result[choice]['steps_to_target'] <= 60
  user = jaxtrain.doctor(tokens_config(**{'doctor.checks': (), 'doctor.compare': 'norm'}),
                         model=tokens.TokenNet(rngs=nnx.Rngs(0)), data=TOKENS)
  assert user['checks'][0]['status'] == 'skipped' and 'model.norm' in user['checks'][0]['advice']


@pytest.mark.parametrize('overrides, message', [
    ({'doctor.checks': ('data', 'speed')}, "doctor.checks=('data', 'speed') is out of range; choose among"),
    ({'doctor.compare': 'dropout'}, "doctor.compare='dropout' is out of range"),
    ({'diagnostics.fixed_batch': 1000}, 'diagnostics.fixed_batch=1000 is out of range'),
    ({'doctor.baseline_steps': 0}, 'doctor.baseline_steps=0 is out of range'),
])
def test_bad_doctor_settings_are_one_line_errors(make_config, tmp_path, overrides, message):
  with pytest.raises(jaxtrain.ConfigError, match=message.replace('(', r'\(').replace(')', r'\)')):
    jaxtrain.doctor(make_config('digits_mlp', **overrides), tmp_path / 'w')
  assert not (tmp_path / 'w').exists()

"""The training doctor, the LR range test and learning-curve diagnosis (jaxtrain/diagnostics).

The doctor is run on the failure cases of notes 003 and 004 built from configs (MLPs, which compile in
seconds) and must name each; the default CNN must pass without a false alarm, from the command line, on a
trained workdir whose files it must not change.
"""

import hashlib
import json
import math
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import CONFIGS, ROOT

import jaxtrain
from jaxtrain import config as config_lib
from jaxtrain import model as model_lib
from jaxtrain import optim, tasks
from jaxtrain.diagnostics import curves, doctor, experiment, lr_find, stats
from jaxtrain.models import MLP, layers


def cli(*args, workdir, data_dir):
  command = [sys.executable, '-m', 'jaxtrain.main', *args, f'--workdir={workdir}',
             f'--config.data.data_dir={data_dir}', '--config.train.progress_bar=False']
  return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, env=os.environ)


def snapshot(workdir: pathlib.Path) -> dict:
  return {str(p.relative_to(workdir)): hashlib.md5(p.read_bytes()).hexdigest()
          for p in sorted(workdir.rglob('*')) if p.is_file()}


def statuses(report: dict) -> dict:
  return {c['name']: c['status'] for c in report['checks']}


# ---- The doctor on real configs.

FAILURES = [
    # name, overrides of digits_mlp, the check that must fail.
    ('vanishing', {'model.features': (64,) * 8, 'model.activation': 'sigmoid'}, 'vanishing_gradients'),
    ('exploding', {'model.kernel_init': 'normal(10)'}, 'exploding_gradients'),
    ('dead_relu', {'model.bias_init': 'constant(-10)'}, 'dead_relu'),
    ('lr_too_high', {'optim.lr': 10.0}, 'learning_rate'),
    ('too_small_to_overfit', {'model.features': (1,)}, 'overfit_batch'),
]


def check_report(report: dict, workdir: pathlib.Path) -> dict:
  """doctor.json as documented; returns {check name: status}."""
  assert json.loads((workdir / 'doctor.json').read_text()) == report
  assert (workdir / 'plots' / 'gradient_flow.png').stat().st_size > 1000
  for check in report['checks']:
    assert set(check) >= {'name', 'status', 'value', 'expected', 'advice'}
    assert check['status'] in ('pass', 'warn', 'fail')
    assert check['status'] == 'pass' or check['advice'], check
  found = statuses(report)
  assert report['verdict'] == doctor.verdict([doctor.Check(n, s, 0, '') for n, s in found.items()])
  return found


@pytest.mark.parametrize('overrides, failing', [f[1:] for f in FAILURES], ids=[f[0] for f in FAILURES])
def test_doctor_names_each_failure_of_the_notes(make_config, tmp_path, overrides, failing):
  report = jaxtrain.doctor(make_config('digits_mlp', **overrides), tmp_path)
  assert check_report(report, tmp_path)[failing] == 'fail', doctor.format_report(report)
  assert report['verdict'] == 'fail'


def test_doctor_and_lr_find_leave_a_trained_run_untouched(make_config, data_dir, tmp_path):
  """Also: no false alarm on a healthy config, and a bad setting exits 2 before any file is written."""
  workdir = tmp_path / 'run'
  jaxtrain.fit(make_config('digits_mlp', **{'train.num_steps': 10, 'train.eval_every_steps': 5}), workdir)
  before = snapshot(workdir)
  report = jaxtrain.doctor(make_config('digits_mlp'), workdir)
  found = check_report(report, workdir)
  assert 'fail' not in found.values(), doctor.format_report(report)
  assert 'learning_curves' in found  # The workdir's metrics.jsonl was read.
  result = cli('--config', str(CONFIGS / 'digits_mlp.py'), '--mode=lr_find',
               '--config.lr_find.num_steps=30', workdir=workdir, data_dir=data_dir)
  assert result.returncode == 0, result.stderr
  suggested = json.loads(result.stdout.strip().splitlines()[-1])['suggested_lr']
  saved = json.loads((workdir / 'lr_find.json').read_text())
  assert saved['suggested_lr'] == suggested and len(saved['lrs']) == len(saved['losses']) <= 30
  assert (workdir / 'plots' / 'lr_find.png').exists()
  written = ('doctor.json', 'lr_find.json', 'plots/gradient_flow.png', 'plots/lr_find.png', 'plots/batch.png')
  assert ({k: v for k, v in snapshot(workdir).items() if k not in written}
          == {k: v for k, v in before.items() if k not in written})

  fresh = tmp_path / 'fresh'  # The command line turns this error into its one line (tests/test_cli.py).
  with pytest.raises(config_lib.ConfigError, match=r'lr_find\.smoothing=1\.5 is out of range'):
    jaxtrain.doctor(make_config('digits_mlp', **{'lr_find.smoothing': 1.5}), fresh)
  assert not fresh.exists()


@pytest.mark.usefixtures('optimized')  # The doctor's probes train hundreds of steps.
def test_cli_doctor_passes_the_default_job(data_dir, tmp_path):
  result = cli('--config', str(CONFIGS / 'digits_cnn.py'), '--mode=doctor', workdir=tmp_path,
               data_dir=data_dir)
  assert result.returncode == 0, result.stdout + result.stderr
  assert 'verdict: ' in result.stdout and 'overfit_batch' in result.stdout
  found = check_report(json.loads((tmp_path / 'doctor.json').read_text()), tmp_path)
  assert 'fail' not in found.values(), result.stdout
  assert set(found) == {'initial_loss', 'output_layer', 'labels', 'class_balance', 'finite_inputs',
                        'input_scale', 'overfit_batch', 'vanishing_gradients', 'exploding_gradients',
                        'dead_relu', 'update_ratio', 'learning_rate', 'majority_baseline',
                        'input_independent'}
  assert sorted(p.name for p in tmp_path.rglob('*') if p.is_file()) == ['batch.png', 'doctor.json',
                                                                        'gradient_flow.png']


@pytest.mark.parametrize('overrides, message', [
    ({'lr_find.max_lr': 1e-8}, 'lr_find.max_lr=1e-08 is out of range; it must be > lr_find.min_lr'),
    ({'lr_find.diverge_factor': 1.0}, 'lr_find.diverge_factor'),
    ({'lr_find.num_parallel': 1}, 'lr_find.num_parallel'),
    ({'doctor.flow_steps': 200}, 'it must be <= doctor.overfit_steps=100'),
    ({'doctor.probe_examples': 0}, 'doctor.probe_examples'),
])
def test_bad_diagnostic_settings_are_config_errors_before_any_file(make_config, tmp_path, overrides,
                                                                   message):
  with pytest.raises(config_lib.ConfigError, match=message.replace('.', r'\.').replace('(', r'\(')):
    jaxtrain.lr_find(make_config('digits_mlp', **overrides), tmp_path / 'w')
  assert not (tmp_path / 'w').exists()


# ---- The LR range test.

def test_lr_find_suggestion_trains_digits_well(make_config, tmp_path):
  result = jaxtrain.lr_find(make_config('digits_mlp', **{'lr_find.num_steps': 60}), tmp_path)
  assert json.loads((tmp_path / 'lr_find.json').read_text()) == result
  assert 1e-4 < result['suggested_lr'] < 0.1
  lrs = np.asarray(result['lrs'])
  np.testing.assert_allclose(lrs[1:] / lrs[:-1], lrs[1] / lrs[0], rtol=1e-6)  # Exponential growth.
  # The smoothed losses are the bias-corrected moving average of the raw ones.
  average, beta = 0.0, 0.9
  for i, (raw, smoothed) in enumerate(zip(result['raw_losses'], result['losses'], strict=True)):
    average = beta * average + (1 - beta) * raw
    assert smoothed == pytest.approx(average / (1 - beta ** (i + 1)), rel=1e-6)
  if result['diverged_lr'] is not None:  # Stopped where the smoothed loss passed 4x its best.
    assert result['losses'][-1] > 4 * min(result['losses'])
  run = jaxtrain.fit(make_config('digits_mlp', **{'optim.lr': result['suggested_lr'],
                                                  'train.num_steps': 100, 'train.eval_every_steps': 100}))
  assert run.summary['final']['test/accuracy'] >= 0.9


def test_range_test_compiles_once_and_the_parallel_test_trains_a_vmapped_population(make_config, tmp_path):
  config = make_config('digits_mlp')
  exp, normalization, _ = experiment.prepare(config, None)
  step, state = lr_find.trainer(exp, exp.program.model, config)
  result = lr_find.range_test(exp, normalization, step, state, 1e-5, 1.0, 15, 0.9, 4.0)
  assert len(result['lrs']) > 1 and step._cache_size() == 1  # Every rate ran on one compiled step.

  step, states = lr_find.trainer(exp, exp.program.model, config, population=4)
  result = lr_find.parallel_test(exp, normalization, step, states, 1e-4, 10.0, 20)
  assert step._cache_size() == 1
  np.testing.assert_allclose(result['lrs'], [1e-4, 1e-4 * 46.4159, 1e-4 * 2154.43, 10.0], rtol=1e-4)
  assert len(result['losses']) == 4 and result['suggested_lr'] in result['lrs']
  finite = [loss for loss in result['losses'] if loss is not None]
  assert result['losses'][result['lrs'].index(result['suggested_lr'])] == min(finite)
  assert result['suggested_lr'] < 10.0  # Adam at 10 does not train an MLP.

  saved = jaxtrain.lr_find(make_config('digits_mlp', **{'lr_find.parallel': True, 'lr_find.num_parallel': 3,
                                                        'lr_find.num_steps': 10}), tmp_path)
  assert len(saved['lrs']) == 3 and (tmp_path / 'plots' / 'lr_find.png').exists()


def test_held_lr_optimizer_matches_the_configured_one_at_the_same_rate(make_config):
  """The range test trains exactly what optim.build builds, only with the rate in the state."""
  config = make_config('digits_mlp', **{'optim.weight_decay': 0.01, 'optim.schedule': 'constant',
                                        'optim.warmup_steps': 0, 'optim.clip_norm': 1.0})
  params = {'dense': {'kernel': jnp.ones((3, 2)), 'bias': jnp.ones(2)}}
  grads = jax.tree.map(lambda p: 0.5 * p, params)
  tx = optim.build(config.optim, 10).tx
  expected, _ = tx.update(grads, tx.init(params), params)
  held = lr_find.held_lr_optimizer(config.optim)
  state = held.tx.init(params)
  state = (*state[:-1], jnp.float32(config.optim.lr))
  updates, state = held.tx.update(grads, state, params)
  for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(updates), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-6)
  assert held.learning_rate(state, 0) == pytest.approx(config.optim.lr)


def test_suggestion_is_the_steepest_descent_before_the_minimum():
  lrs = np.geomspace(1e-6, 1.0, 61)  # 10 points per decade.
  x = np.log10(lrs)
  losses = 2.0 - 1.5 / (1 + np.exp(-3 * (x + 3))) + np.where(x > -1, 20 * (x + 1) ** 2, 0)
  assert lr_find.suggest(lrs, losses) == pytest.approx(1e-3, rel=0.3)  # The sigmoid's steepest point.
  assert lr_find.suggest(lrs, np.linspace(1, 3, 61)) == pytest.approx(1e-7)  # Rising: min / 10.
  # A moving average's first values follow a lucky batch or two: a fall there is no descent (a configs/
  # tokens_nnx.py range test once suggested 1e-7 from its first three points).
  noisy = losses.copy()
  noisy[:3] = [3.0, 2.4, 2.1]
  assert lr_find.suggest(lrs, noisy) == pytest.approx(1e-6, rel=0.01)
  assert lr_find.suggest(lrs, noisy, warmup=10) == pytest.approx(1e-3, rel=0.3)


# ---- Per-layer statistics (also meant for the jitted train step).

def test_layer_statistics():
  params = {'Block_0': {'Dense_0': {'kernel': jnp.full((2, 2), 2.0), 'bias': jnp.ones(2)}},
            'head': {'kernel': jnp.ones((2, 1))}}
  assert jax.tree.map(float, stats.layer_norms(params)) == {'Block_0/Dense_0': 4.0,
                                                            'head': pytest.approx(math.sqrt(2))}
  ratios = jax.jit(stats.update_ratios)(jax.tree.map(lambda p: 1e-3 * p, params), params)
  np.testing.assert_allclose(list(ratios.values()), 1e-3, rtol=1e-5)
  # Unit 0 is zero for every example: dead; unit 1 fires once: alive.
  outputs = {'Block_0': {'Activation_0': {'__call__': (jnp.array([[0.0, 1.0], [-1.0, 0.0]]),)}}}
  assert float(stats.dead_fractions(outputs)['Block_0/Activation_0']) == 0.5
  outputs = {'Block_0': {'Activation_0': {'__call__': (jnp.array([0.001, 0.5, 0.999, 0.3]),)}}}
  assert float(stats.saturated_fractions(outputs, 'sigmoid')['Block_0/Activation_0']) == 0.5


def test_forward_order_is_the_call_order_not_the_sorted_one():
  model = MLP(num_classes=3, features=(4,) * 11, kernel_init=layers.initializer('he_normal', 'k'),
              bias_init=layers.bias_initializer('zeros'))
  order = model_lib.wrap(model).forward_order({'image': jnp.zeros((1, 2, 2, 1))})
  dense = [path for path in order if path.endswith('Dense_0') or path == 'head']
  assert dense == [f'Block_{i}/Dense_0' for i in range(11)] + ['head']  # Block_10 after Block_9.


# ---- Checks on synthetic inputs.

def _task(name: str) -> tasks.Task:
  task_config = config_lib.defaults().task
  task_config.name = name
  return tasks.build(task_config)


def test_output_layer_check_catches_probabilities_and_a_head_that_does_not_fit():
  logits = np.random.default_rng(0).normal(size=(16, 10)).astype(np.float32)
  assert doctor.check_output_layer(logits, 10, _task('classification')).status == 'pass'
  softmax = doctor.check_output_layer(np.asarray(jax.nn.softmax(logits)), 10, _task('classification'))
  assert softmax.status == 'fail' and 'softmax' in softmax.advice
  sigmoid = doctor.check_output_layer(np.asarray(jax.nn.sigmoid(logits)), 10, _task('classification'))
  assert sigmoid.status == 'fail' and 'sigmoid' in sigmoid.advice
  narrow = doctor.check_output_layer(logits[:, :1], 10, _task('classification'))
  assert narrow.status == 'fail' and 'needs 10 output(s)' in narrow.advice
  binary = doctor.check_output_layer(logits[:, :1], 10, _task('binary'))  # A binary loss on 10 classes.
  assert binary.status == 'fail' and 'needs a data set with 2 classes' in binary.advice


def test_initial_loss_check_expects_the_chance_loss():
  chance = doctor.chance_loss('classification', 10)
  assert chance == pytest.approx(math.log(10))
  assert doctor.chance_loss('binary', 2) == pytest.approx(math.log(2))
  assert doctor.chance_loss('regression', 1) is None
  assert doctor.check_initial_loss(2.4, chance).status == 'pass'
  assert doctor.check_initial_loss(4.0, chance).status == 'warn'
  assert doctor.check_initial_loss(1e4, chance).status == 'fail'
  assert doctor.check_initial_loss(float('nan'), chance).status == 'fail'


def test_data_checks():
  labels = np.repeat(np.arange(10), 20)
  assert doctor.check_labels(labels, 10).status == 'pass'
  assert doctor.check_labels(labels + 1, 10).status == 'fail'
  assert doctor.check_class_balance(labels, 10).status == 'pass'
  assert doctor.check_class_balance(labels[labels != 3], 10).status == 'warn'
  assert doctor.check_class_balance(np.concatenate([labels, np.zeros(500, int)]), 10).status == 'warn'
  images = np.random.default_rng(0).normal(size=(8, 4, 4, 1))
  assert doctor.check_finite_inputs(images).status == 'pass'
  assert doctor.check_input_scale(images).status == 'pass'
  assert doctor.check_input_scale(images * 50 + 128).status == 'warn'  # Raw pixels.
  images[0, 0, 0, 0] = np.nan
  assert doctor.check_finite_inputs(images).status == 'fail'


def test_report_is_strict_json_and_the_table_lists_every_check(tmp_path):
  checks = [doctor.check_initial_loss(float('inf'), 2.3), doctor.check_labels(np.arange(3), 3)]
  report = {'checks': [vars(c) for c in checks], 'verdict': doctor.verdict(checks)}
  experiment.write_json(tmp_path / 'doctor.json', report)
  assert json.loads((tmp_path / 'doctor.json').read_text())['checks'][0]['value'] == 'inf'
  table = doctor.format_report(report)
  assert 'FAIL     initial_loss' in table and 'PASS     labels' in table and 'verdict: fail' in table


# ---- Learning-curve diagnosis on synthetic histories.

def history(train, evals=None, lrs=None, every: int = 10) -> list[dict]:
  """metrics.jsonl-like records: train (and lr) every `every` steps, evaluations at 5x that period."""
  records = []
  for i, loss in enumerate(train):
    step = (i + 1) * every
    record = {'step': step, 'epoch': step / 100, 'train/loss': float(loss)}
    if lrs is not None:
      record['train/lr'] = float(lrs[i])
    records.append(record)
    if evals is not None and (i + 1) % 5 == 0:
      records.append({'step': step, 'epoch': step / 100, 'eval/loss': float(evals[i]),
                      'eval/accuracy': float(max(0.0, 1 - evals[i] / 2.3))})
  return records


STEPS = np.arange(1, 101) * 10.0


def names(records) -> list[str]:
  found = curves.diagnose(records)
  for finding in found:
    assert set(finding) == {'name', 'evidence', 'advice'} and finding['evidence'] and finding['advice']
  return [f['name'] for f in found]


def test_a_healthy_finished_run_has_no_finding():
  train = 2.3 * np.exp(-STEPS / 100) + 0.01
  cosine = 1e-3 * 0.5 * (1 + np.cos(np.pi * STEPS / 1000))
  assert names(history(train, train + 0.09, cosine)) == []


def test_overfitting_validation_rises_while_training_falls():
  train = 2.3 * np.exp(-STEPS / 100) + 0.001
  evals = 0.3 + 2e-6 * (STEPS - 300) ** 2  # Lowest at step 300.
  found = curves.diagnose(history(train, evals))
  assert [f['name'] for f in found][0] == 'overfitting'
  assert 'step 300' in found[0]['evidence'] and 'weight_decay' in found[0]['advice']


def test_underfitting_both_losses_high_and_close():
  train = 2.3 - 0.4 * STEPS / 1000
  assert 'underfitting' in names(history(train, train + 0.02))


def test_plateau_at_a_constant_learning_rate_and_not_once_it_is_decayed():
  train = np.maximum(2.3 - STEPS / 300, 1.0) + 0.01 * np.sin(STEPS)
  assert 'plateau' in names(history(train, lrs=np.full(100, 1e-3)))
  decayed = np.where(STEPS > 700, 1e-4, 1e-3)
  assert 'plateau' not in names(history(train, lrs=decayed))


def test_divergence_by_nan_or_blow_up_is_the_only_finding():
  train = list(2.3 * np.exp(-STEPS / 100)) + [float('nan')]
  assert names(history(train)) == ['divergence']
  blow_up = np.concatenate([np.linspace(2.3, 0.5, 50), np.linspace(0.5, 6.0, 50)])
  found = curves.diagnose(history(blow_up, lrs=np.full(100, 1.0)))
  assert [f['name'] for f in found] == ['divergence'] and 'lower optim.lr' in found[0]['advice']


def test_decay_too_early_cut_while_the_loss_fell_fast():
  lrs = np.where(STEPS <= 200, 0.1, 0.01)
  train = 2.3 * np.where(STEPS <= 200, np.exp(-STEPS / 200), np.exp(-1 - (STEPS - 200) / 5000))
  found = curves.diagnose(history(train, lrs=lrs))
  assert 'decay_too_early' in [f['name'] for f in found]
  assert 'after step 200' in next(f for f in found if f['name'] == 'decay_too_early')['evidence']


def test_still_improving_and_slow_start():
  train = 2.3 * np.exp(-STEPS / 600)
  assert 'still_improving' in names(history(train, train + 0.05, np.full(100, 1e-3)))
  slow = np.where(STEPS <= 300, 2.3, 2.3 * np.exp(-(STEPS - 300) / 100) + 0.05)
  assert 'slow_start' in names(history(slow, lrs=np.full(100, 1e-3)))
  warmup = np.minimum(STEPS / 300, 1) * 1e-3  # The same curve under warmup is not an initialization sign.
  assert 'slow_start' not in names(history(slow, lrs=warmup))


def test_short_or_empty_histories_have_no_finding():
  assert curves.diagnose([]) == []
  assert curves.diagnose([{'step': 10, 'train/loss': 2.0}, {'step': 20, 'test/accuracy': 0.9}]) == []

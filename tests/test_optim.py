"""Optimizers, schedules, plateau, weight decay, penalties and clipping: what optim.build promises.

Training runs share one MLP and one list of digits batches per test module, and jit only the step of
the optimizer under test, so every optimizer and schedule gets a real (short) run in about a second.
Schedule values are checked against their formulas written out here with numpy, not against optax.
"""

import copy
import math
import types

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import CONFIGS

import jaxtrain
from jaxtrain import config as config_lib
from jaxtrain import data, models, optim, steps
from jaxtrain import model as model_lib
from jaxtrain import state as state_lib

NUM_STEPS = 30


@pytest.fixture(scope='module')
def digits(data_dir):
  """The digits MLP config, model and first NUM_STEPS train batches, built once per module."""
  config = jaxtrain.load_config(CONFIGS / 'digits_mlp.py', {'data.data_dir': data_dir})
  splits = data.load(config)
  stats = data.compute_stats(splits.train, config.data.stats_max_examples)
  stream = data.train_batches(splits.train, stats, config.data.batch_size, config.seed)
  return types.SimpleNamespace(
      config=config, model=model_lib.wrap(models.build(config.model, splits.num_classes)),
      example={'image': np.zeros((1, *splits.train['image'].shape[1:]), np.float32)},
      batches=[stream[i] for i in range(NUM_STEPS)])


def train_losses(digits, **optim_overrides) -> np.ndarray:
  """The training loss at each of NUM_STEPS steps of the digits MLP with `optim.<key>` overrides."""
  config = copy.deepcopy(digits.config)
  overrides = {'warmup_steps': 0, **optim_overrides}  # The config's warmup would outlast the run.
  config_lib.override(config, {f'optim.{k}': v for k, v in overrides.items()})
  optimizer = optim.build(config.optim, NUM_STEPS)
  state = state_lib.create(digits.model, optimizer.tx, digits.example, config.seed)
  # Compiling dominates a 30-step run of this tiny MLP; unoptimized code compiles in half the time.
  train_step = jax.jit(steps.make_train_step(digits.model, optimizer, config.optim),
                       compiler_options={'xla_backend_optimization_level': 0})
  losses = []
  for batch in digits.batches:
    state, metrics = train_step(state, batch)
    losses.append(metrics['loss'])
  return np.asarray(jax.device_get(losses))


def assert_learns(losses: np.ndarray) -> None:
  """Well below the first step's loss and below half the loss of a uniform guess over 10 classes."""
  assert np.all(np.isfinite(losses))
  final = losses[-5:].mean()
  assert final < 0.5 * losses[0], (losses[0], final)
  assert final < 0.5 * math.log(10), final


# A learning rate that trains the digits MLP in NUM_STEPS steps; a new optimizer needs an entry.
LEARNING_RATES = {
    'sgd': 0.1, 'momentum': 0.05, 'nesterov': 0.05, 'adagrad': 0.05,
    'adadelta': 5.0,  # Its step starts at sqrt(eps) per unit, so it needs a large multiplier.
    'rmsprop': 1e-3, 'adam': 1e-3, 'adamw': 1e-3,
}


@pytest.mark.parametrize('name', sorted(optim.OPTIMIZERS))
def test_every_optimizer_lowers_the_training_loss(digits, name):
  weight_decay = 1e-4 if name == 'adamw' else 0.0
  assert_learns(train_losses(digits, name=name, lr=LEARNING_RATES[name], schedule='constant',
                             weight_decay=weight_decay))


@pytest.mark.parametrize('schedule', sorted(optim.SCHEDULES))
def test_every_schedule_lowers_the_training_loss(digits, schedule):
  """Decaying schedules spend part of the short run at a low rate, hence adam's larger peak."""
  assert_learns(train_losses(digits, name='adam', lr=3e-3, schedule=schedule))


def optim_config(**overrides):
  config = config_lib.defaults()
  config_lib.override(config, {f'optim.{k}': v for k, v in overrides.items()})
  return config.optim


def step_decay(t, lr, n, c):
  return lr * c.decay_factor ** sum(t >= b * n for b in c.decay_boundaries)


def sgdr(t, lr, n, c):
  length = math.ceil(n / c.cycles)
  return lr / 2 * (1 + math.cos(math.pi * (t % length) / length))


# name -> lr at step t of n decay steps, written from each schedule's definition.
FORMULAS = {
    'constant': lambda t, lr, n, c: lr,
    'plateau': lambda t, lr, n, c: lr,  # Constant until an evaluation lowers it (tested below).
    'step': step_decay,
    'exponential': lambda t, lr, n, c: lr * c.decay_factor ** (t / n),
    'cosine': lambda t, lr, n, c: lr / 2 * (1 + math.cos(math.pi * t / n)),
    'linear': lambda t, lr, n, c: lr * (1 - t / n),
    'inverse_sqrt': lambda t, lr, n, c: lr / math.sqrt(t + 1),
    'sgdr': sgdr,
}
SAMPLED_STEPS = (0, 1, 10, 24, 25, 26, 33, 49, 50, 51, 74, 75, 76, 90, 99)


def test_every_schedule_has_a_value_test():
  assert set(FORMULAS) | {'one_cycle'} == set(optim.SCHEDULES)


@pytest.mark.parametrize('name', sorted(FORMULAS))
def test_schedule_values_follow_their_formulas(name):
  c = optim_config(schedule=name, lr=0.1, decay_factor=0.1, decay_boundaries=(0.5, 0.75),
                   cycles=4)
  lr_at = optim.schedule(c, total_steps=100)
  for t in SAMPLED_STEPS:
    assert float(lr_at(t)) == pytest.approx(FORMULAS[name](t, 0.1, 100, c), rel=1e-4, abs=1e-7), t


def test_step_schedule_decays_by_the_factor_at_each_boundary():
  lr_at = optim.schedule(optim_config(schedule='step', lr=1.0, decay_factor=0.5,
                                      decay_boundaries=(0.5, 0.75)), total_steps=100)
  assert [float(lr_at(t)) for t in (49, 50, 74, 75, 99)] == [1.0, 0.5, 0.5, 0.25, 0.25]


def test_step_schedule_applies_boundaries_that_round_to_the_same_step_twice():
  """With 20 steps, 0.3 and 0.31 both fall on step 6: the LR must still drop twice there."""
  lr_at = optim.schedule(optim_config(schedule='step', lr=1.0, decay_factor=0.1,
                                      decay_boundaries=(0.3, 0.31)), total_steps=20)
  assert float(lr_at(5)) == 1.0
  assert float(lr_at(6)) == pytest.approx(0.01)


def test_sgdr_restarts_at_the_peak_every_cycle():
  lr_at = optim.schedule(optim_config(schedule='sgdr', lr=0.1, cycles=4), total_steps=100)
  values = np.array([float(lr_at(t)) for t in range(100)])
  np.testing.assert_allclose(values[[0, 25, 50, 75]], 0.1, rtol=1e-6)
  assert np.all(values[[24, 49, 74, 99]] < 1e-3)
  for cycle in values.reshape(4, 25):
    assert np.all(np.diff(cycle) < 0)


def test_one_cycle_rises_to_the_peak_at_30_percent_then_falls():
  lr_at = optim.schedule(optim_config(schedule='one_cycle', lr=0.1), total_steps=100)
  values = np.array([float(lr_at(t)) for t in range(101)])
  peak = int(values.argmax())
  assert 28 <= peak <= 32
  assert values[peak] == pytest.approx(0.1, rel=1e-5)
  assert np.all(np.diff(values[:peak + 1]) > 0) and np.all(np.diff(values[peak:]) < 0)
  assert values[0] < 0.1 / 10 and values[-1] < 0.1 / 1000


@pytest.mark.parametrize('name', ['cosine', 'inverse_sqrt', 'step', 'linear'])
def test_warmup_rises_linearly_from_zero_then_starts_the_schedule(name):
  """Warmup takes the first steps; the schedule then runs over the rest as if it started there."""
  c = optim_config(schedule=name, lr=0.1, warmup_steps=10, decay_boundaries=(0.5, 0.75))
  lr_at = optim.schedule(c, total_steps=110)
  for t in (0, 1, 5, 9):
    assert float(lr_at(t)) == pytest.approx(0.1 * t / 10, abs=1e-8), t
  for t in (10, 11, 35, 59, 60, 85, 100, 109):
    expected = FORMULAS[name](t - 10, 0.1, 100, c)
    assert float(lr_at(t)) == pytest.approx(expected, rel=1e-4, abs=1e-7), t


def small_params(seed: int = 0):
  """A small CNN's parameters (conv and dense kernels, BatchNorm, PReLU, head bias), all nonzero."""
  config = config_lib.defaults()
  config_lib.override(config, {'model.features': (4, 8), 'model.head_features': (16,),
                               'model.norm': 'batch', 'model.activation': 'prelu'})
  model = models.build(config.model, 10)
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)))['params']
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda x: rng.normal(size=x.shape).astype(np.float32), shapes)


def is_kernel(path) -> bool:
  return path[-1] == 'kernel'


def test_plateau_lowers_the_lr_after_patience_evaluations_without_improvement():
  optimizer = optim.build(optim_config(name='sgd', lr=0.1, schedule='plateau',
                                       plateau_patience=3, plateau_factor=0.5), total_steps=100)
  params = {'dense': {'kernel': jnp.ones((2, 2))}}
  opt_state = optimizer.tx.init(params)
  assert float(optimizer.learning_rate(opt_state, 0)) == pytest.approx(0.1)

  observe = jax.jit(optimizer.observe)  # Compiled once instead of dispatching its ops each call.

  def lrs_after(state, losses):
    values = []
    for loss in losses:
      state = observe(state, loss)
      values.append(float(optimizer.learning_rate(state, 7)))
    return state, values

  # Steadily improving losses never lower the LR.
  opt_state, lrs = lrs_after(opt_state, [2.0, 1.5, 1.2, 1.0, 0.9, 0.8, 0.7, 0.6])
  assert lrs == pytest.approx([0.1] * 8)
  # The third evaluation without improvement (patience=3) halves it, the next three halve it again.
  opt_state, lrs = lrs_after(opt_state, [0.6, 0.7, 0.65, 0.6, 0.61, 0.8, 0.9])
  assert lrs == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.05, 0.025, 0.025])
  # The lowered rate is the one applied: an SGD update is -lr * scale * grad.
  grads = {'dense': {'kernel': jnp.full((2, 2), 2.0)}}
  updates, _ = optimizer.tx.update(grads, opt_state, params)
  np.testing.assert_allclose(updates['dense']['kernel'], -0.025 * 2.0, rtol=1e-6)


@pytest.mark.parametrize('overrides', [{'plateau_patience': 0}, {'plateau_factor': 1.0}])
def test_plateau_rejects_a_patience_or_factor_that_cannot_work(overrides):
  """patience=0 would lower the LR on every improvement, factor=1 never; both are config errors."""
  key = f'optim.{next(iter(overrides))}'
  config = config_lib.defaults()
  config_lib.override(config, {'optim.schedule': 'plateau', 'train.num_steps': 10,
                               **{f'optim.{k}': v for k, v in overrides.items()}})
  with pytest.raises(jaxtrain.ConfigError, match=key):
    config_lib.validate(config)


def test_logged_lr_is_the_schedule_value_and_the_rate_applied(digits):
  """Cosine with warmup on SGD: metrics['lr'] follows the formula and params move by -lr * grad."""
  config = copy.deepcopy(digits.config)
  config_lib.override(config, {'model.dropout': 0.0, 'optim.name': 'sgd', 'optim.lr': 0.5,
                               'optim.schedule': 'cosine', 'optim.warmup_steps': 4})
  model = models.build(config.model, 10)
  optimizer = optim.build(config.optim, total_steps=12)
  state = state_lib.create(model_lib.wrap(model), optimizer.tx, digits.example, config.seed)
  train_step = jax.jit(steps.make_train_step(model_lib.wrap(model), optimizer, config.optim))

  @jax.jit
  def grads_of(params, batch):
    def loss(p):
      logits = model.apply({'params': p}, batch['image'], train=True)
      return optax.softmax_cross_entropy_with_integer_labels(logits, batch['label']).mean()
    return jax.grad(loss)(params)

  for t in range(12):
    expected = 0.5 * t / 4 if t < 4 else 0.25 * (1 + math.cos(math.pi * (t - 4) / 8))
    batch = digits.batches[t]
    grads = grads_of(state.params, batch)
    new_state, metrics = train_step(state, batch)
    assert float(metrics['lr']) == pytest.approx(expected, rel=1e-5, abs=1e-8), t
    for new, old, g in zip(jax.tree.leaves(new_state.params), jax.tree.leaves(state.params),
                           jax.tree.leaves(grads), strict=True):
      np.testing.assert_allclose(new, old - expected * g, rtol=1e-4, atol=1e-6)
    state = new_state


@pytest.mark.parametrize('name', ['sgd', 'adam'])
def test_weight_decay_is_decoupled_and_shrinks_only_kernels(name):
  """With zero gradients the update is exactly -lr * wd * w on kernels, whatever the preconditioner
  (adam included: a coupled L2 term would be normalized to about -lr * sign(w)), and 0 elsewhere."""
  optimizer = optim.build(optim_config(name=name, lr=0.1, weight_decay=0.5), total_steps=10)
  params = small_params()
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = optimizer.tx.update(zeros, optimizer.tx.init(params), params)
  flat_params = flax.traverse_util.flatten_dict(params)
  flat_updates = flax.traverse_util.flatten_dict(updates)
  kernels = [path for path in flat_params if is_kernel(path)]
  assert len(kernels) == 4  # Two convs, the hidden dense layer and the head.
  assert {path[-1] for path in flat_params} == {'kernel', 'bias', 'scale', 'negative_slope'}
  for path, param in flat_params.items():
    expected = -0.1 * 0.5 * param if is_kernel(path) else jnp.zeros_like(param)
    np.testing.assert_allclose(flat_updates[path], expected, rtol=1e-6, atol=1e-8, err_msg=path)


def test_l1_l2_penalty_sums_over_kernels_only():
  params = small_params()
  flat = flax.traverse_util.flatten_dict(params)
  kernels = [np.asarray(v, np.float64) for path, v in flat.items() if is_kernel(path)]
  abs_sum = sum(np.abs(k).sum() for k in kernels)
  square_sum = sum(np.square(k).sum() for k in kernels)
  assert float(optim.penalty(params, 0.01, 0.0)) == pytest.approx(0.01 * abs_sum, rel=1e-5)
  assert float(optim.penalty(params, 0.0, 0.1)) == pytest.approx(0.05 * square_sum, rel=1e-5)
  assert float(optim.penalty(params, 0.01, 0.1)) == pytest.approx(
      0.01 * abs_sum + 0.05 * square_sum, rel=1e-5)
  assert float(optim.penalty(params, 0.0, 0.0)) == 0.0
  # Scaling every non-kernel parameter leaves the penalty unchanged.
  scaled = flax.traverse_util.unflatten_dict(
      {path: v if is_kernel(path) else 10 * v for path, v in flat.items()})
  assert float(optim.penalty(scaled, 0.01, 0.1)) == pytest.approx(
      float(optim.penalty(params, 0.01, 0.1)), rel=1e-6)


def dense_tree(scale: float, seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  return {'dense': {'kernel': scale * rng.normal(size=(4, 5)).astype(np.float32),
                    'bias': scale * rng.normal(size=5).astype(np.float32)}}


def test_clip_norm_bounds_the_global_norm_of_sgd_updates():
  optimizer = optim.build(optim_config(name='sgd', lr=0.5, clip_norm=1.0), total_steps=10)
  params = dense_tree(1.0)
  state = optimizer.tx.init(params)
  huge = dense_tree(1000.0, seed=1)
  updates, _ = optimizer.tx.update(huge, state, params)
  assert float(optax.global_norm(updates)) == pytest.approx(0.5 * 1.0, rel=1e-4)
  # Clipping rescales the gradient as a whole: the direction is kept.
  scale = 0.5 / float(optax.global_norm(huge))
  for u, g in zip(jax.tree.leaves(updates), jax.tree.leaves(huge), strict=True):
    np.testing.assert_allclose(u, -scale * g, rtol=1e-4, atol=1e-9)
  # Gradients already inside the ball pass unchanged.
  small = dense_tree(0.1, seed=1)
  assert float(optax.global_norm(small)) < 1.0
  updates, _ = optimizer.tx.update(small, state, params)
  for u, g in zip(jax.tree.leaves(updates), jax.tree.leaves(small), strict=True):
    np.testing.assert_allclose(u, -0.5 * g, rtol=1e-6)


def test_clip_value_clips_each_gradient_element():
  optimizer = optim.build(optim_config(name='sgd', lr=1.0, clip_value=0.5), total_steps=10)
  params = {'dense': {'kernel': jnp.zeros((4, 5)), 'bias': jnp.zeros(5)}}
  grads = {'dense': {'kernel': jnp.linspace(-3, 3, 20).reshape(4, 5),
                     'bias': jnp.array([-0.2, 0.0, 0.4, 0.7, -9.0])}}
  updates, _ = optimizer.tx.update(grads, optimizer.tx.init(params), params)
  for path in [('dense', 'kernel'), ('dense', 'bias')]:
    g = np.asarray(grads[path[0]][path[1]])
    np.testing.assert_allclose(updates[path[0]][path[1]], -np.clip(g, -0.5, 0.5), rtol=1e-6)

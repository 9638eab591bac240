"""Models and their named parts: initializer statistics, activations, BatchNorm, dropout, pooling.

Models are built from configs as a run builds them (models.build), but small, and applied without
jit: a forward pass of a tiny CNN costs less than compiling it.
"""

import math
import re

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import CONFIGS

import jaxtrain
from jaxtrain import config as config_lib
from jaxtrain import models
from jaxtrain import state as state_lib
from jaxtrain.models import layers

CONV = (3, 3, 64, 128)  # A conv kernel: fan_in = 3*3*64, fan_out = 3*3*128.
FAN_IN, FAN_OUT = 3 * 3 * 64, 3 * 3 * 128
DENSE = (512, 512)
TALL = (256, 128)  # Orthogonal columns: W^T W = scale^2 I.
TRUNCATED_STD = 0.87962566103423978  # Std of a unit normal truncated to [-2, 2].


BATCH = 8


def model_config(**overrides):
  """A small model config with `model.<key>` overrides. Tests share its widths and BATCH, so the
  operations jax compiles for one test (it runs them eagerly) are reused by the next."""
  config = config_lib.defaults()
  small = {'features': (4, 8), 'head_features': (16,), 'kernel_init': 'he_normal'}
  config_lib.override(config, {f'model.{k}': v for k, v in {**small, **overrides}.items()})
  return config.model


def images(seed: int, n: int = BATCH) -> np.ndarray:
  """Digits-shaped inputs from numpy: no jax random program to compile for each new shape."""
  return np.random.default_rng(seed).normal(size=(n, 8, 8, 1)).astype(np.float32)


def sample(spec: str, shape=CONV, activation: str = 'relu') -> np.ndarray:
  init = layers.initializer(spec, 'model.kernel_init', activation)
  return np.asarray(init(jax.random.PRNGKey(0), shape, jnp.float32), np.float64)


def normal(std):
  def check(x):
    assert abs(x.mean()) < 0.02 * std
    assert x.std() == pytest.approx(std, rel=0.03)
  return check


def uniform(bound):
  """U(-bound, bound): inside the bounds, reaching them, variance bound^2 / 3."""
  def check(x):
    assert np.abs(x).max() <= bound and np.abs(x).max() > 0.99 * bound
    assert x.min() < -0.99 * bound  # Symmetric, not [0, bound).
    assert abs(x.mean()) < 0.02 * bound
    assert x.var() == pytest.approx(bound ** 2 / 3, rel=0.03)
  return check


def truncated(std):
  def check(x):
    normal(std)(x)
    bound = 2 * std / TRUNCATED_STD
    assert np.abs(x).max() <= bound * (1 + 1e-6) and np.abs(x).max() > 0.98 * bound
  return check


def orthogonal(scale):
  def check(x):
    np.testing.assert_allclose(x.T @ x, scale ** 2 * np.eye(x.shape[1]), atol=1e-3)
  return check


def constant(value):
  def check(x):
    assert np.all(x == value)
  return check


# spec -> (shape, statistics it must have).
INITIALIZER_CASES = {
    'he_normal': (CONV, normal(math.sqrt(2 / FAN_IN))),
    'kaiming_normal': (CONV, normal(math.sqrt(2 / FAN_IN))),
    'he_uniform': (CONV, uniform(math.sqrt(6 / FAN_IN))),  # Variance 2 / fan_in.
    'kaiming_uniform': (CONV, uniform(math.sqrt(6 / FAN_IN))),
    'lecun_normal': (CONV, normal(math.sqrt(1 / FAN_IN))),
    'lecun_uniform': (CONV, uniform(math.sqrt(3 / FAN_IN))),
    'glorot_normal': (CONV, normal(math.sqrt(2 / (FAN_IN + FAN_OUT)))),
    'xavier_normal': (CONV, normal(math.sqrt(2 / (FAN_IN + FAN_OUT)))),
    'glorot_uniform': (CONV, uniform(math.sqrt(6 / (FAN_IN + FAN_OUT)))),
    'xavier_uniform': (CONV, uniform(math.sqrt(6 / (FAN_IN + FAN_OUT)))),
    'normal(0.02)': (DENSE, normal(0.02)),
    'normal': (DENSE, normal(0.01)),
    'truncated_normal(0.02)': (DENSE, truncated(0.02)),
    'truncated_normal': (DENSE, truncated(0.01)),
    'uniform(0.1)': (DENSE, uniform(0.1)),
    'uniform': (DENSE, uniform(0.05)),
    'orthogonal(1.4)': (TALL, orthogonal(1.4)),
    'orthogonal': (TALL, orthogonal(1.0)),
    'constant(100)': (CONV, constant(100.0)),
    ' constant( -2.5 ) ': (CONV, constant(-2.5)),
    'zeros': (CONV, constant(0.0)),
    'ones': (CONV, constant(1.0)),
}


def test_every_initializer_has_a_statistics_test():
  names = {re.match(r'\s*([a-z_]+)', spec).group(1) for spec in INITIALIZER_CASES}
  assert names == set(layers.INITIALIZERS)


@pytest.mark.parametrize('spec', list(INITIALIZER_CASES))
def test_initializer_has_its_documented_statistics(spec):
  shape, check = INITIALIZER_CASES[spec]
  x = sample(spec, shape)
  assert x.shape == shape
  check(x)


AUTO = {'relu': 'he', 'leaky_relu': 'he', 'elu': 'he', 'prelu': 'he', 'gelu': 'he', 'gelu_exact': 'he',
        'selu': 'lecun', 'tanh': 'glorot', 'sigmoid': 'glorot'}
AUTO_STD = {'he': math.sqrt(2 / FAN_IN), 'lecun': math.sqrt(1 / FAN_IN),
            'glorot': math.sqrt(2 / (FAN_IN + FAN_OUT))}


def test_auto_init_covers_every_activation_with_its_family():
  assert set(AUTO) == set(layers.ACTIVATIONS) == set(layers.AUTO_INIT)
  for activation, family in AUTO.items():
    assert layers.AUTO_INIT[activation].startswith(family), activation


@pytest.mark.parametrize('activation', sorted(AUTO))
def test_auto_init_draws_with_the_activations_variance(activation):
  x = sample('auto', CONV, activation)
  assert x.std() == pytest.approx(AUTO_STD[AUTO[activation]], rel=0.03)


@pytest.mark.parametrize('spec', ['bogus', 'normal(abc)', 'he_normal(2)', 'Normal(0.1)',
                                  'normal(0.1', 'zeros()x'])
def test_bad_initializer_spec_is_a_config_error_naming_the_key(spec):
  with pytest.raises(jaxtrain.ConfigError, match=re.escape(f'model.kernel_init={spec!r}')):
    layers.initializer(spec, 'model.kernel_init')


def test_bad_bias_init_in_a_config_names_model_bias_init():
  config = model_config(bias_init='normal(abc)')
  with pytest.raises(jaxtrain.ConfigError, match=re.escape("model.bias_init='normal(abc)'")):
    models.build(config, 10)


@pytest.mark.parametrize('name', ['mlp', 'cnn'])
@pytest.mark.parametrize('activation', sorted(layers.ACTIVATIONS))
def test_every_activation_builds_and_runs(name, activation):
  features = (16,) if name == 'mlp' else (4, 8)
  model = models.build(model_config(name=name, activation=activation, features=features), 10)
  x = images(0)
  variables = model.init(jax.random.PRNGKey(1), x)
  logits = model.apply(variables, x)
  assert logits.shape == (BATCH, 10)
  assert np.all(np.isfinite(logits))
  assert float(jnp.std(logits)) > 0  # Not a constant function of the input.


def test_prelu_learns_one_slope_per_block():
  model = models.build(model_config(name='cnn', activation='prelu'), 10)
  x = images(0)
  params = model.init(jax.random.PRNGKey(1), x)['params']
  flat = flax.traverse_util.flatten_dict(params)
  slopes = [path for path in flat if path[-1] == 'negative_slope']
  assert len(slopes) == 3  # Two conv blocks and the head block.
  grads = flax.traverse_util.flatten_dict(
      jax.grad(lambda p: model.apply({'params': p}, x).sum())(params))
  assert all(float(jnp.abs(grads[path])) > 0 for path in slopes)
  relu = models.build(model_config(name='cnn', activation='relu'), 10)
  assert not any(p[-1] == 'negative_slope'
                 for p in flax.traverse_util.flatten_dict(relu.init(jax.random.PRNGKey(1), x)))


@pytest.fixture
def batchnorm_cnn(make_config):
  """The default job's CNN (BatchNorm), narrower, without dropout: train mode is deterministic."""
  config = make_config('digits_cnn', **{'model.dropout': 0.0, 'model.features': (4, 8),
                                        'model.head_features': (16,)})
  assert config.model.norm == 'batch'
  model = models.build(config.model, 10)
  return model, model.init(jax.random.PRNGKey(0), images(0))


def test_batchnorm_running_statistics_move_with_momentum_0_9(batchnorm_cnn):
  model, variables = batchnorm_cnn
  x = 2.0 + 3.0 * images(1)  # Far from the initial running mean 0 and variance 1.
  _, updated = model.apply(variables, x, train=True, mutable=['batch_stats'])
  kernel = variables['params']['Block_0']['Conv_0']['kernel']
  conv = nn.Conv(kernel.shape[-1], (3, 3), use_bias=False).apply({'params': {'kernel': kernel}}, x)
  stats = updated['batch_stats']['Block_0']['BatchNorm_0']
  np.testing.assert_allclose(stats['mean'], 0.1 * conv.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(stats['var'], 0.9 + 0.1 * conv.var(axis=(0, 1, 2)), rtol=1e-4)


def test_batchnorm_eval_output_does_not_depend_on_the_rest_of_the_batch(batchnorm_cnn):
  model, variables = batchnorm_cnn
  for seed in range(3):  # Non-trivial running statistics.
    _, updated = model.apply(variables, 2.0 + 3.0 * images(seed), train=True,
                             mutable=['batch_stats'])
    variables = {**variables, **updated}
  example, others = images(10, 1), 5.0 * images(11, BATCH - 1) - 1.0

  alone = model.apply(variables, example, train=False)
  together = model.apply(variables, jnp.concatenate([example, others]), train=False)[:1]
  np.testing.assert_allclose(alone, together, rtol=1e-5, atol=1e-5)

  # Eval reads the running statistics: the initial ones give another output ...
  initial = model.apply({**variables, 'batch_stats': batchnorm_cnn[1]['batch_stats']}, example,
                        train=False)
  assert np.abs(initial - alone).max() > 1e-2
  # ... and training normalizes with the batch's statistics, so the company matters there.
  train_alone, _ = model.apply(variables, jnp.concatenate([example, images(12, BATCH - 1)]),
                               train=True, mutable=['batch_stats'])
  train_together, _ = model.apply(variables, jnp.concatenate([example, others]), train=True,
                                  mutable=['batch_stats'])
  assert np.abs(train_alone[0] - train_together[0]).max() > 1e-2


def test_dropout_is_random_in_training_and_off_at_eval():
  model = models.build(model_config(name='mlp', features=(16,), dropout=0.5), 10)
  plain = models.build(model_config(name='mlp', features=(16,), dropout=0.0), 10)
  x = images(0)
  variables = model.init(jax.random.PRNGKey(1), x)

  def train(seed):
    return model.apply(variables, x, train=True, rngs={'dropout': jax.random.PRNGKey(seed)})

  assert np.abs(train(0) - train(1)).max() > 1e-3
  np.testing.assert_array_equal(train(0), train(0))
  evaluated = model.apply(variables, x, train=False)
  np.testing.assert_array_equal(evaluated, model.apply(variables, x, train=False))
  # At eval the model is the same function as without dropout (no rescaling by 1 - rate).
  np.testing.assert_allclose(evaluated, plain.apply(variables, x), rtol=1e-6)
  assert np.abs(train(0) - evaluated).max() > 1e-3


def conv_block_outputs(spatial_dropout: bool, train: bool):
  """Both conv blocks' outputs of a CNN whose activations are all positive before dropout: positive
  inputs, a positive constant kernel, zero bias and ReLU, so a zero can only come from dropout."""
  config = model_config(name='cnn', dropout=0.5, kernel_init='constant(0.1)',
                        bias_init='zeros', activation='relu', spatial_dropout=spatial_dropout)
  model = models.build(config, 10)
  x = np.random.default_rng(0).uniform(0.1, 1.0, size=(BATCH, 8, 8, 1)).astype(np.float32)
  variables = model.init(jax.random.PRNGKey(1), x)
  _, state = model.apply(variables, x, train=train, rngs={'dropout': jax.random.PRNGKey(2)},
                         capture_intermediates=True, mutable=['intermediates'])
  return [np.asarray(state['intermediates'][f'Block_{i}']['__call__'][0]) for i in (0, 1)]


def test_spatial_dropout_drops_whole_feature_maps():
  dropped, kept = conv_block_outputs(True, train=True), conv_block_outputs(True, train=False)
  for block in (0, 1):
    assert dropped[block].ndim == 4 and np.all(kept[block] > 0)
    zero_fraction = (dropped[block] == 0).mean(axis=(1, 2))  # Per (example, channel).
    assert set(np.unique(zero_fraction)) == {0.0, 1.0}
    assert 0.25 < zero_fraction.mean() < 0.75
  # The first block's kept maps are its eval maps scaled by 1 / (1 - rate).
  np.testing.assert_allclose(dropped[0], np.where(dropped[0] == 0, 0, 2 * kept[0]), rtol=1e-5)


def test_unit_dropout_drops_single_pixels():
  """The contrast that makes the spatial test meaningful: without it, maps are partly zero."""
  dropped = conv_block_outputs(False, train=True)[0]
  zero_fraction = (dropped == 0).mean(axis=(1, 2))
  assert np.all((zero_fraction > 0) & (zero_fraction < 1))


@pytest.mark.parametrize('head_pooling', layers.HEAD_POOLINGS)
def test_every_head_pooling_runs(head_pooling):
  model = models.build(model_config(name='cnn', head_pooling=head_pooling), 10)
  x = images(0)
  variables = model.init(jax.random.PRNGKey(1), x)
  logits = model.apply(variables, x)
  assert logits.shape == (BATCH, 10) and np.all(np.isfinite(logits))
  params = variables['params']
  # 8x8 -> 4x4 -> 2x2 with 8 channels: flatten feeds 32 features to the head block, the rest 8.
  head_inputs = 32 if head_pooling == 'flatten' else 8
  assert params['Block_2']['Dense_0']['kernel'].shape == (head_inputs, 16)
  if head_pooling == 'attention':
    assert params['AttentionPool_0']['score']['kernel'].shape == (8, 1)
  else:
    assert 'AttentionPool_0' not in params


def test_head_pooling_values():
  xs = np.random.default_rng(0).normal(size=(2, 3, 3, 4)).astype(np.float32)
  x = jnp.asarray(xs)
  np.testing.assert_allclose(layers.pool_head('flatten', x), xs.reshape(2, 36))
  np.testing.assert_allclose(layers.pool_head('avg', x), xs.mean(axis=(1, 2)), rtol=1e-6)
  np.testing.assert_allclose(layers.pool_head('max', x), xs.max(axis=(1, 2)))

  def attend(kernel):
    params = {'score': {'kernel': kernel, 'bias': jnp.zeros(1)}}
    return layers.AttentionPool().apply({'params': params}, x)

  # Equal scores average the positions; a sharp score on channel 0 picks its largest position.
  np.testing.assert_allclose(attend(jnp.zeros((4, 1))), xs.mean(axis=(1, 2)), rtol=1e-5,
                             atol=1e-6)
  tokens = xs.reshape(2, 9, 4)
  picked = tokens[np.arange(2), tokens[..., 0].argmax(axis=1)]
  sharp = jnp.zeros((4, 1)).at[0, 0].set(1000.0)
  np.testing.assert_allclose(attend(sharp), picked, rtol=1e-4, atol=1e-4)


def test_max_and_avg_pooling_differ_and_unknown_names_are_config_errors():
  x = images(0)
  max_model = models.build(model_config(name='cnn', pooling='max'), 10)
  avg_model = models.build(model_config(name='cnn', pooling='avg'), 10)
  variables = max_model.init(jax.random.PRNGKey(1), x)  # Pooling has no parameters.
  assert np.abs(max_model.apply(variables, x) - avg_model.apply(variables, x)).max() > 1e-3
  for key, value in [('pooling', 'sum'), ('head_pooling', 'mean')]:
    with pytest.raises(jaxtrain.ConfigError, match=f'model.{key}={value!r}'):
      models.build(model_config(name='cnn', **{key: value}), 10)


def num_params(config_name: str) -> int:
  model = models.build(jaxtrain.load_config(CONFIGS / f'{config_name}.py').model, 10)
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)))
  return state_lib.num_params(shapes['params'])


def test_default_models_have_the_expected_number_of_parameters():
  """Fixed counts catch a silent change of the default models (a layer, a bias, a width).

  digits_cnn: conv 3*3*1*32 + BN 2*32 = 352; pool 8->4; conv 3*3*32*64 + BN 2*64 = 18_560;
  pool 4->2; flatten 2*2*64 = 256 -> dense 256*128 + BN 2*128 = 33_024 (no biases before BN);
  head 128*10 + 10 = 1_290. Total 53_226.
  digits_mlp: 64*256 + 256 = 16_640; 256*128 + 128 = 32_896; head 128*10 + 10 = 1_290. Total 50_826.
  """
  assert num_params('digits_cnn') == 352 + 18_560 + 33_024 + 1_290 == 53_226
  assert num_params('digits_mlp') == 16_640 + 32_896 + 1_290 == 50_826

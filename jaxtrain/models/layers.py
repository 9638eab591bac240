"""Building blocks chosen by name: activations, initializers, normalization, dropout, pooling.

Names are parsed once, when the model is built, so a typo fails before training with the list of choices.
"""

import contextlib
import contextvars
import functools
import re
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxtrain.config import ConfigError, lookup

ACTIVATIONS = {
    'sigmoid': nn.sigmoid,
    'tanh': nn.tanh,
    'relu': nn.relu,
    'leaky_relu': nn.leaky_relu,
    'elu': nn.elu,
    'selu': nn.selu,
    'gelu': nn.gelu,  # Flax's default, the tanh approximation.
    'gelu_exact': functools.partial(nn.gelu, approximate=False),  # The erf form: PyTorch's nn.GELU().
    'prelu': None,  # Has a learned slope: built as the nn.PReLU module by `Activation`.
}

# 'auto' follows note 004: He for the ReLU family, LeCun for SELU, Glorot for tanh/sigmoid.
AUTO_INIT = {
    'relu': 'he_normal', 'leaky_relu': 'he_normal', 'elu': 'he_normal', 'prelu': 'he_normal',
    'gelu': 'he_normal', 'gelu_exact': 'he_normal', 'selu': 'lecun_normal', 'tanh': 'glorot_uniform',
    'sigmoid': 'glorot_uniform',
}


def _uniform(scale: float):
  """U(-scale, scale); jax's own `uniform(scale)` samples [0, scale), which no one means by the name."""
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -scale, scale)
  return init


def _truncated_normal(std: float):
  """Normal truncated at two standard deviations, rescaled so the samples' std is `std`."""
  return nn.initializers.truncated_normal(std / 0.87962566103423978)


# name -> (factory, default argument or None when the initializer takes no argument).
INITIALIZERS = {
    'zeros': (lambda: nn.initializers.zeros, None),
    'ones': (lambda: nn.initializers.ones, None),
    'constant': (nn.initializers.constant, 0.0),
    'normal': (nn.initializers.normal, 0.01),
    'truncated_normal': (_truncated_normal, 0.01),
    'uniform': (_uniform, 0.05),
    'orthogonal': (nn.initializers.orthogonal, 1.0),
    'glorot_normal': (nn.initializers.glorot_normal, None),
    'glorot_uniform': (nn.initializers.glorot_uniform, None),
    'xavier_normal': (nn.initializers.xavier_normal, None),
    'xavier_uniform': (nn.initializers.xavier_uniform, None),
    'he_normal': (nn.initializers.he_normal, None),
    'he_uniform': (nn.initializers.he_uniform, None),
    'kaiming_normal': (nn.initializers.kaiming_normal, None),
    'kaiming_uniform': (nn.initializers.kaiming_uniform, None),
    'lecun_normal': (nn.initializers.lecun_normal, None),
    'lecun_uniform': (nn.initializers.lecun_uniform, None),
}

_SPEC = re.compile(r'^\s*([a-z_]+)\s*(?:\(\s*([^()]*?)\s*\))?\s*$')


def initializer(spec: str, key: str, activation: str = 'relu'):
  """'he_normal', 'normal(0.02)', 'orthogonal(1.4)' or 'auto' -> a jax initializer."""
  if spec == 'auto':
    spec = AUTO_INIT[activation]
  match = _SPEC.match(spec)
  if not match:
    raise ConfigError(f"{key}={spec!r} is not an initializer; write a name like 'he_normal' or "
                      f"'normal(0.02)'; choose one of: auto, {', '.join(sorted(INITIALIZERS))}")
  name, argument = match.groups()
  factory, default = lookup(INITIALIZERS, key, name)
  if default is None:
    if argument:
      raise ConfigError(f'{key}={spec!r}: {name} takes no argument')
    return factory()
  try:
    value = float(argument) if argument else default
  except ValueError:
    raise ConfigError(f'{key}={spec!r}: the argument of {name} must be a number') from None
  return factory(value)


# Initializers that draw from a weight matrix's fan-in/fan-out or need two dimensions: not for biases.
_MATRIX_ONLY = ('glorot', 'xavier', 'he_', 'kaiming', 'lecun', 'orthogonal')


def bias_initializer(spec: str):
  """Like `initializer` for 1-D biases: 'auto' means zeros; fan-based initializers are rejected."""
  if spec == 'auto':
    spec = 'zeros'
  if spec.strip().startswith(_MATRIX_ONLY):
    raise ConfigError(f'model.bias_init={spec!r} needs a weight matrix; biases take zeros, ones, '
                      'constant(v), normal(std), truncated_normal(std), uniform(scale) or auto')
  return initializer(spec, 'model.bias_init')


def check_activation(name: str) -> None:
  lookup(ACTIVATIONS, 'model.activation', name)


class Activation(nn.Module):
  """A named activation; 'prelu' learns its negative slope per layer."""

  kind: str

  @nn.compact
  def __call__(self, x):
    if self.kind == 'prelu':
      return nn.PReLU()(x)
    return ACTIVATIONS[self.kind](x)


NORMS = {
    'none': None,
    'batch': functools.partial(nn.BatchNorm, momentum=0.9, epsilon=1e-5),
    'layer': nn.LayerNorm,
}


def normalization(name: str, train: bool, **kwargs):
  """A norm layer (BatchNorm uses batch statistics in training and running averages at eval), or None.

  `kwargs` go to the Flax layer: `dtype`, or `scale_init` for a residual branch that starts at zero.
  """
  norm = lookup(NORMS, 'model.norm', name)
  if norm is None:
    return None
  if name == 'batch':  # Under pmap, the batch statistics are those of the global batch.
    return norm(use_running_average=not train, axis_name=_DATA_AXIS.get(), **kwargs)
  return norm(**kwargs)


# The pmap axis the batch is split over, while parallel.py traces a step under pmap; None otherwise. Layers
# whose result depends on the whole batch (BatchNorm, dropout's example indices) read it when traced, so
# models need no parallelism argument.
_DATA_AXIS = contextvars.ContextVar('jaxtrain_data_axis', default=None)


def current_data_axis() -> str | None:
  return _DATA_AXIS.get()


@contextlib.contextmanager
def data_parallel_axis(name: str):
  token = _DATA_AXIS.set(name)
  try:
    yield
  finally:
    _DATA_AXIS.reset(token)


class Dropout(nn.Module):
  """Dropout whose mask for an example depends only on the key and the example's index in the global batch.

  So one device, a mesh and pmap (each device seeing a slice of the batch) drop the same units and train
  identically; flax's nn.Dropout draws one mask for the array it is given, which changes with the split.
  `broadcast_dims` share the mask along those axes (1, 2 for spatial dropout of NHWC maps).
  """

  rate: float
  broadcast_dims: Sequence[int] = ()
  deterministic: bool = False

  @nn.compact
  def __call__(self, x):
    if self.deterministic or self.rate == 0:
      return x
    keep = 1.0 - self.rate
    axis = _DATA_AXIS.get()
    first = jax.lax.axis_index(axis) * x.shape[0] if axis else 0
    keys = jax.vmap(functools.partial(jax.random.fold_in, self.make_rng('dropout')))(
        first + jnp.arange(x.shape[0]))
    shape = [1 if dim in self.broadcast_dims else size for dim, size in enumerate(x.shape)][1:]
    mask = jax.vmap(lambda key: jax.random.bernoulli(key, keep, shape))(keys)
    return jnp.where(mask, x / keep, jnp.zeros_like(x))


# model.remat: what a block's backward pass recomputes instead of keeping from its forward pass
# (jax.checkpoint policies). 'full' keeps only the block's inputs; 'dots_saveable' keeps the matmul and
# conv outputs and recomputes the cheap elementwise work between them.
REMAT_POLICIES = {'none': None, 'full': None, 'dots_saveable': jax.checkpoint_policies.dots_saveable}


def remat(block: type[nn.Module], mode: str, train_argnum: int) -> type[nn.Module]:
  """`block` with activation checkpointing per `mode` (model.remat); `train_argnum` is the position of its
  `train` argument in `__call__` (self is 0), a Python bool the checkpoint must treat as static."""
  policy = lookup(REMAT_POLICIES, 'model.remat', mode)
  if mode == 'none':
    return block
  return nn.remat(block, policy=policy, static_argnums=(train_argnum,))


# Parameters stay float32 whatever the compute dtype: bf16 updates of small weights would round to nothing.
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def compute_dtype(name: str):
  return lookup(DTYPES, 'model.dtype', name)


POOLINGS = {'max': nn.max_pool, 'avg': nn.avg_pool}
HEAD_POOLINGS = ('flatten', 'avg', 'max', 'attention')


class AttentionPool(nn.Module):
  """A learned weighted average of the spatial positions: one score per position, softmax, sum."""

  @nn.compact
  def __call__(self, x):
    tokens = x.reshape(x.shape[0], -1, x.shape[-1])
    scores = nn.Dense(1, name='score')(tokens)
    weights = jax.nn.softmax(scores, axis=1)
    return jnp.sum(weights * tokens, axis=1)


def pool_head(name: str, x):
  """(batch, H, W, C) -> (batch, features) as configured by model.head_pooling."""
  if name == 'flatten':
    return x.reshape(x.shape[0], -1)
  if name == 'avg':
    return x.mean(axis=(1, 2))
  if name == 'max':
    return x.max(axis=(1, 2))
  return AttentionPool()(x)

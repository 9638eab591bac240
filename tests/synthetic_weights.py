"""Weights and inputs that NumPy regenerates bit for bit from a seed, for the torchvision fixtures.

tests/fixtures/torchvision/make.py loads these weights into torchvision's own models and records their
logits; tests/test_weights.py regenerates the same weights without PyTorch and compares the zoo's logits.
`RandomState` is NumPy's frozen legacy stream, the same on every NumPy version.
"""

import re

import numpy as np

# A residual block's norms (torchvision: layer<stage>.<block>.bn<k>); the last of each block scales its
# branch down, or with BatchNorm in eval mode each addition doubles the activations' variance and
# ResNet-50's logits reach 1e4, where float32 rounding alone exceeds the 1e-4 the tests ask.
_BLOCK_NORM = re.compile(r'^(layer\d+\.\d+)\.bn(\d)\.weight$')


def _last_norms(keys) -> set:
  last = {}
  for key in keys:
    match = _BLOCK_NORM.match(key)
    if match:
      last[match[1]] = max(last.get(match[1], key), key)
  return set(last.values())


def state_dict(spec: list, seed: int) -> dict:
  """{key: array} for spec's [key, shape, dtype] rows, scaled so activations stay O(1) through the net."""
  rng = np.random.RandomState(seed)
  last_norms = _last_norms(key for key, _, _ in spec)
  weights = {}
  for key, shape, dtype in spec:
    if dtype == 'int64':
      weights[key] = np.zeros(shape, np.int64)
      continue
    if key.endswith('running_var'):
      value = rng.uniform(0.5, 1.5, shape)
    elif key.endswith(('running_mean', 'bias')):
      value = 0.1 * rng.standard_normal(shape)
    elif key.endswith(('class_token', 'pos_embedding')):
      value = 0.02 * rng.standard_normal(shape)
    elif len(shape) == 1:  # A norm's scale.
      value = (0.2 if key in last_norms else 1.0) * (1 + 0.1 * rng.standard_normal(shape))
    else:  # Conv (out, in, h, w) and linear (out, in) kernels: He / LeCun by fan-in.
      fan_in = int(np.prod(shape[1:]))
      value = rng.standard_normal(shape) * np.sqrt((2 if len(shape) == 4 else 1) / fan_in)
    weights[key] = value.astype(np.float32)
  return weights


def images(seed: int, shape: tuple) -> np.ndarray:
  """An NCHW float32 batch."""
  return np.random.RandomState(seed).standard_normal(shape).astype(np.float32)

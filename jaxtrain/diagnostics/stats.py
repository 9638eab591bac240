"""Per-layer statistics: gradient and weight norms, update/weight ratios, dead and saturated units.

Pure functions of pytrees and arrays with no host I/O, so the same code runs in the doctor and inside a
jitted train step (to log them during training). A layer is named by its module path, 'Block_0/Conv_0';
its statistics use only its kernel: biases and norm scales say little about how a layer learns.
"""

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxtrain.models import layers

# A sigmoid output below 0.01 or above 0.99 (slope < 0.01) and a tanh beyond +-0.99 (slope < 0.02) pass
# almost no gradient back.
SATURATED = {
    'sigmoid': lambda y: (y < 0.01) | (y > 0.99),
    'tanh': lambda y: jnp.abs(y) > 0.99,
}
# Activations whose units can die: zero output and zero slope for every negative input.
DYING = ('relu',)


# Note 004: a layer whose gradient/weight norm ratio is under 1/100 (a warning) or 1/1000 (a failure) of a
# later layer's hardly learns. The doctor and the alerts during training use the same rule.
VANISHING_WARN, VANISHING_FAIL = 1e-2, 1e-3


def vanishing(grads: dict[str, float], weights: dict[str, float], order: list[str]) -> tuple[float, str]:
  """The smallest (layer's gradient/weight ratio) / (the largest ratio of the layers after it), over the
  layers in forward order (`order`, input first), and that layer; (1.0, '') for one layer. On the host."""
  ratios = np.array([[float(grads[layer]) / max(float(weights[layer]), 1e-12) for layer in order]])
  worst, where = vanishing_rows(ratios)
  return float(worst[0]), (order[where[0]] if where[0] >= 0 else '')


def vanishing_rows(ratios: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """`vanishing` for many steps at once: `ratios[step, layer]` (gradient/weight, forward order) ->
  (the worst drop per step, its layer's index or -1 where no layer is below a later one)."""
  # As Python's max over a list did: a NaN of a later layer is passed over, and a layer whose own drop is
  # not a number (its ratio NaN, or infinite over an infinite maximum) is never the worst.
  later_max = np.fmax.accumulate(ratios[:, ::-1], axis=1)[:, ::-1]
  with np.errstate(invalid='ignore', divide='ignore'):
    drops = ratios / np.fmax(later_max, 1e-30)
  drops = np.where(np.isnan(drops), np.inf, drops)
  where = np.argmin(drops, axis=1) if drops.shape[1] else np.zeros(len(drops), int)
  worst = drops[np.arange(len(drops)), where] if drops.shape[1] else np.ones(len(drops))
  below = worst < 1.0
  return np.where(below, worst, 1.0), np.where(below, where, -1)


def layer_norms(tree, leaf: str = 'kernel') -> dict[str, jax.Array]:
  """{layer path: L2 norm of its `leaf`} for a params-shaped tree (weights, gradients or updates)."""
  return {'/'.join(path[:-1]): jnp.sqrt(jnp.sum(jnp.square(x)))
          for path, x in flax.traverse_util.flatten_dict(tree).items() if path[-1] == leaf}


def update_ratios(updates, params) -> dict[str, jax.Array]:
  """{layer: |update| / |weights|}; about 1e-3 per step is healthy (cs231n's rule of thumb), much more
  means the learning rate is too high for that layer, much less that it hardly learns."""
  weights = layer_norms(params)
  return {name: norm / (weights[name] + 1e-12) for name, norm in layer_norms(updates).items()}


def is_activation(module: nn.Module, method_name: str) -> bool:
  """The `capture_intermediates` filter that records the output of every activation layer."""
  return isinstance(module, layers.Activation) and method_name == '__call__'


def _outputs(intermediates) -> dict[str, jax.Array]:
  """{'Block_0/Activation_0': output} from the 'intermediates' collection captured with `is_activation`."""
  return {'/'.join(path[:-1]): values[0]
          for path, values in flax.traverse_util.flatten_dict(intermediates).items()}


def dead_fractions(intermediates) -> dict[str, jax.Array]:
  """{activation layer: fraction of its units (channels) that are zero for every example and position}.

  Such a ReLU unit passes no gradient to the weights that feed it, so it never recovers (note 004).
  """
  return {name: 1.0 - jnp.mean(jnp.any(y > 0, axis=tuple(range(y.ndim - 1))))
          for name, y in _outputs(intermediates).items()}


def saturated_fractions(intermediates, kind: str) -> dict[str, jax.Array]:
  """{activation layer: fraction of outputs in the flat tails of a sigmoid or tanh (`SATURATED`)}."""
  return {name: jnp.mean(SATURATED[kind](y)) for name, y in _outputs(intermediates).items()}


def activation_moments(intermediates) -> dict[str, tuple[jax.Array, jax.Array]]:
  """{activation layer: (mean, std) of its outputs}; a std collapsing towards 0 layer after layer is the
  signature of vanishing activations (note 004)."""
  return {name: (jnp.mean(y), jnp.std(y)) for name, y in _outputs(intermediates).items()}


@flax.struct.dataclass
class Statistics:
  """Named scalars packed in one vector, the names static (pytree metadata). A diagnostic step returns a few
  dozen statistics; as separate outputs each would cost the step an output buffer and the loop a transfer
  or a jitted stack, which weighs where a step takes milliseconds (benchmarks/diagnostics.py)."""
  values: jax.Array  # [len(names)], or [steps, len(names)] once stacked on the host.
  names: tuple[str, ...] = flax.struct.field(pytree_node=False)

  @classmethod
  def pack(cls, named: dict[str, jax.Array]) -> 'Statistics':
    names = tuple(sorted(named))
    return cls(jnp.stack([jnp.asarray(named[name], jnp.float32) for name in names]), names)


def training_stats(grads, updates, params, intermediates, activation: str) -> Statistics:
  """The per-layer statistics logged during training as `diag/<statistic>/<layer>` (inside jit).

  Gradient, weight and update norms and the update/weight ratio per layer; per activation layer the
  output mean and std, the dead fraction (ReLU) or the saturated fraction (sigmoid, tanh).
  `intermediates` is None when activations were not captured (gradient accumulation).
  """
  out = {}
  for name, norm in layer_norms(grads).items():
    out[f'grad_norm/{name}'] = norm
  for name, norm in layer_norms(params).items():
    out[f'param_norm/{name}'] = norm
  for name, ratio in update_ratios(updates, params).items():
    out[f'update_ratio/{name}'] = ratio
  if intermediates is not None:
    for name, (mean, std) in activation_moments(intermediates).items():
      out[f'act_mean/{name}'], out[f'act_std/{name}'] = mean, std
    if activation in DYING:
      out.update({f'dead/{name}': value for name, value in dead_fractions(intermediates).items()})
    if activation in SATURATED:
      out.update({f'saturated/{name}': value
                  for name, value in saturated_fractions(intermediates, activation).items()})
  return Statistics.pack(out)

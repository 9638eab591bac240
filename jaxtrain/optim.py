"""Config -> one optax chain: clip -> optimizer -> decoupled weight decay -> learning rate schedule.

Each optimizer is its optax `scale_by_*` transform without the learning rate, so weight decay sits between
the preconditioner and the schedule for every optimizer alike (AdamW's decoupling, also for SGD), and the
learning rate that is logged is exactly the one applied. `plateau` scales the update by
optax.contrib.reduce_on_plateau's factor; that factor moves only when an evaluation is observed.
"""

import dataclasses
import math
import re
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from jaxtrain.config import ConfigError, lookup

OPTIMIZERS: dict[str, Callable] = {
    'sgd': lambda c: optax.identity(),
    'momentum': lambda c: optax.trace(decay=c.momentum),
    'nesterov': lambda c: optax.trace(decay=c.momentum, nesterov=True),
    'adagrad': lambda c: optax.scale_by_rss(initial_accumulator_value=0.1, eps=c.eps),
    'adadelta': lambda c: optax.scale_by_adadelta(rho=c.decay, eps=c.eps),
    'rmsprop': lambda c: optax.scale_by_rms(decay=c.decay, eps=c.eps),
    'adam': lambda c: optax.scale_by_adam(b1=c.beta1, b2=c.beta2, eps=c.eps),
    'adamw': lambda c: optax.scale_by_adam(b1=c.beta1, b2=c.beta2, eps=c.eps),
}


def _inverse_sqrt(lr: float) -> optax.Schedule:
  """lr / sqrt(t) with t counted from 1 at the first step after warmup."""
  return lambda step: lr / jnp.sqrt(step + 1.0)


def _sgdr(lr: float, steps: int, cycles: int) -> optax.Schedule:
  """Cosine annealing with warm restarts: `cycles` equal cosine decays (snapshot-ensemble friendly)."""
  length = max(1, math.ceil(steps / cycles))
  return optax.sgdr_schedule([dict(init_value=lr, peak_value=lr, decay_steps=length, warmup_steps=0)
                              for _ in range(cycles)])


def _step(lr: float, steps: int, boundaries, factor: float) -> optax.Schedule:
  """lr times `factor` once per boundary passed; boundaries that round to one step multiply."""
  scales = {}
  for step in (round(b * steps) for b in boundaries):
    scales[step] = scales.get(step, 1.0) * factor
  return optax.piecewise_constant_schedule(lr, scales)


# name -> (peak lr, decay steps, optim config) -> schedule.
SCHEDULES: dict[str, Callable] = {
    'constant': lambda lr, n, c: optax.constant_schedule(lr),
    'plateau': lambda lr, n, c: optax.constant_schedule(lr),
    'step': lambda lr, n, c: _step(lr, n, c.decay_boundaries, c.decay_factor),
    'exponential': lambda lr, n, c: optax.exponential_decay(lr, max(1, n), c.decay_factor),
    'cosine': lambda lr, n, c: optax.cosine_decay_schedule(lr, max(1, n)),
    'linear': lambda lr, n, c: optax.linear_schedule(lr, 0.0, max(1, n)),
    'inverse_sqrt': lambda lr, n, c: _inverse_sqrt(lr),
    'sgdr': lambda lr, n, c: _sgdr(lr, n, c.cycles),
    'one_cycle': lambda lr, n, c: optax.cosine_onecycle_schedule(max(1, n), lr),
}


def schedule(optim_config, total_steps: int) -> optax.Schedule:
  """The learning rate at each step: optional linear warmup from 0, then the named decay."""
  make = lookup(SCHEDULES, 'optim.schedule', optim_config.schedule)
  warmup = min(optim_config.warmup_steps, total_steps)
  decay = make(optim_config.lr, total_steps - warmup, optim_config)
  if warmup == 0:
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, optim_config.lr, warmup), decay], [warmup])


def kernel_mask(params):
  """True for weight matrices and conv kernels; biases, norm scales and PReLU slopes are not decayed."""
  return jax.tree_util.tree_map_with_path(lambda path, _: path[-1].key == 'kernel', params)


def penalty(params, l1: float, l2: float):
  """L1 and L2 penalties on the kernels, added to the loss: l1 * sum|w| + l2 / 2 * sum w^2."""
  kernels = [p for p, is_kernel in zip(jax.tree.leaves(params), jax.tree.leaves(kernel_mask(params)),
                                       strict=True) if is_kernel]
  total = jnp.zeros(())
  if l1:
    total += l1 * sum(jnp.abs(k).sum() for k in kernels)
  if l2:
    total += 0.5 * l2 * sum(jnp.square(k).sum() for k in kernels)
  return total


def _plateau_scale() -> optax.GradientTransformation:
  """Multiplies updates by the plateau factor held in reduce_on_plateau's state, without moving it."""
  plateau = optax.contrib.reduce_on_plateau()

  def update(updates, state, params=None):
    del params
    return jax.tree.map(lambda u: u * state.scale, updates), state
  return optax.GradientTransformation(plateau.init, update)


def parameter_path(path) -> str:
  """A key path of the params tree as the rules see it: 'params/Block_0/Conv_0/kernel'."""
  return 'params/' + jax.tree_util.keystr(tuple(path), simple=True, separator='/')


def _compile(key: str, pattern: str) -> re.Pattern:
  try:
    return re.compile(pattern)
  except re.error as e:
    raise ConfigError(f'{key} has an invalid regex {pattern!r}: {e}') from None


def _rules(optim_config) -> list[tuple[str, str, float]]:
  """(config key, regex, LR factor) per rule: every `freeze` regex (factor 0), then `lr_multipliers`."""
  rules = [('optim.freeze', pattern, 0.0) for pattern in optim_config.freeze]
  for rule in optim_config.lr_multipliers:
    pattern, _, factor = rule.rpartition('=')
    try:
      value = float(factor)
    except ValueError:
      value = -1.0
    if not pattern or value < 0:
      raise ConfigError(f"optim.lr_multipliers entry {rule!r} is not 'regex=factor' with a factor >= 0; "
                        "e.g. 'params/head/.*=10'")
    rules.append(('optim.lr_multipliers', pattern, value))
  return rules


def parameter_rules(optim_config, params) -> dict[str, tuple[str, float]]:
  """{parameter path: (the rule that hit it, its LR factor)}; the first matching rule wins (freeze first),
  unmatched parameters get ('-', 1.0). Raises ConfigError for a regex that matches no parameter, so a typo
  cannot silently leave a layer trainable."""
  paths = [parameter_path(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
  hits = {}
  for key, pattern, factor in _rules(optim_config):
    matched = [p for p in paths if _compile(key, pattern).fullmatch(p)]
    if not matched:
      raise ConfigError(f'{key} regex {pattern!r} matches no parameter (it must match a whole path); the '
                        f'paths are: {", ".join(paths[:8])}{", ..." if len(paths) > 8 else ""}')
    for path in matched:
      hits.setdefault(path, (f'{key} {pattern}' if factor else f'freeze {pattern}', factor))
  return {path: hits.get(path, ('-', 1.0)) for path in paths}


def rules_table(rules: dict[str, tuple[str, float]]) -> str:
  """The table of which rule hit which parameter, for the log."""
  width = max(len(p) for p in rules)
  lines = [f'{"parameter":<{width}}  {"lr x":>6}  rule']
  lines += [f'{path:<{width}}  {factor:>6g}  {rule}' for path, (rule, factor) in rules.items()]
  return '\n'.join(lines)


def _factors(optim_config, tree):
  """The LR factor of each leaf of a params-shaped tree."""
  rules = parameter_rules(optim_config, tree)
  return jax.tree_util.tree_map_with_path(lambda path, _: rules[parameter_path(path)][1], tree)


def _scale_by_rules(optim_config) -> optax.GradientTransformation:
  """Multiplies each parameter's update by its LR factor (the factors are constants of the program)."""

  def update(updates, state, params=None):
    del params
    factors = _factors(optim_config, updates)
    return jax.tree.map(lambda u, f: u if f == 1.0 else u * f, updates, factors), state
  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def with_rules(tx: optax.GradientTransformation, optim_config) -> optax.GradientTransformation:
  """`tx` for the trainable parameters, optax.set_to_zero for the frozen ones (no optimizer state and no
  weight decay for them: they stay bit-identical), then the LR multipliers."""
  labels = lambda params: jax.tree.map(  # noqa: E731
      lambda f: 'frozen' if f == 0.0 else 'trained', _factors(optim_config, params))
  return optax.chain(optax.multi_transform({'trained': tx, 'frozen': optax.set_to_zero()}, labels),
                     _scale_by_rules(optim_config))


@dataclasses.dataclass(frozen=True)
class Optimizer:
  """The optax chain plus what the loop needs to log the learning rate and drive `plateau`."""

  tx: optax.GradientTransformation
  schedule: optax.Schedule
  plateau: optax.GradientTransformationExtraArgs | None

  def learning_rate(self, opt_state, step):
    """The learning rate applied at `step` (the schedule times the plateau factor)."""
    lr = self.schedule(step)
    return lr * opt_state[-1].scale if self.plateau else lr

  def observe(self, opt_state, eval_loss):
    """Feeds one evaluation loss to reduce_on_plateau; a no-op for the other schedules."""
    if not self.plateau:
      return opt_state
    _, plateau_state = self.plateau.update(updates={}, state=opt_state[-1], value=eval_loss)
    return (*opt_state[:-1], plateau_state)


def build(optim_config, total_steps: int) -> Optimizer:
  """The configured optimizer; raises ConfigError for an unknown optimizer or schedule name."""
  scale_by = lookup(OPTIMIZERS, 'optim.name', optim_config.name)(optim_config)
  lr_schedule = schedule(optim_config, total_steps)
  parts = []
  if optim_config.clip_value > 0:
    parts.append(optax.clip(optim_config.clip_value))
  if optim_config.clip_norm > 0:
    parts.append(optax.clip_by_global_norm(optim_config.clip_norm))
  parts.append(scale_by)
  if optim_config.weight_decay > 0:
    parts.append(optax.add_decayed_weights(optim_config.weight_decay, mask=kernel_mask))
  parts.append(optax.scale_by_learning_rate(lr_schedule))
  if optim_config.freeze or optim_config.lr_multipliers:
    parts = [with_rules(optax.chain(*parts), optim_config)]
  plateau = None
  if optim_config.schedule == 'plateau':
    plateau = optax.contrib.reduce_on_plateau(
        factor=optim_config.plateau_factor, patience=optim_config.plateau_patience)
    parts.append(_plateau_scale())
  return Optimizer(tx=optax.chain(*parts), schedule=lr_schedule, plateau=plateau)

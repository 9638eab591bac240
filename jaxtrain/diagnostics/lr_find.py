"""Leslie Smith's learning-rate range test (note 004), sequential or as a vmapped population.

Sequential: one run whose learning rate grows exponentially from `lr_find.min_lr` to `lr_find.max_lr` over
`lr_find.num_steps` steps; the loss is smoothed (an exponential moving average with bias correction), the
test stops once the smoothed loss exceeds `lr_find.diverge_factor` times its best, and the suggestion is
where the smoothed loss falls fastest. Parallel (`lr_find.parallel=True`): `lr_find.num_parallel` short runs
at fixed learning rates trained at once by one vmapped, jitted step; the suggestion is the rate with the
lowest final loss.

The learning rate lives in the optimizer state, not in the compiled program, so one compiled step serves
every rate. The workdir's checkpoints, metrics and normalization are never written.
"""

import dataclasses
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxtrain import optim, steps
from jaxtrain.data import augment
from jaxtrain.diagnostics import experiment, plots, stats

RESULT_FILE = 'lr_find.json'
PLOT_FILE = 'plots/lr_find.png'


@dataclasses.dataclass(frozen=True)
class _HeldLR(optim.Optimizer):
  """An optimizer whose learning rate is the last element of its state (set with `with_lr`)."""

  def learning_rate(self, opt_state, step):
    del step
    return opt_state[-1]


def _scale_by_held_lr() -> optax.GradientTransformation:
  """Multiplies the updates by a learning rate kept in the state; the update leaves it as it is."""

  def update(updates, lr, params=None):
    del params
    return jax.tree.map(lambda u: lr * u, updates), lr

  return optax.GradientTransformation(lambda params: jnp.ones((), jnp.float32), update)


def held_lr_optimizer(optim_config) -> optim.Optimizer:
  """The configured optimizer (clipping, preconditioner, weight decay) at learning rate 1, then scaled by
  the rate held in its state: optim.build's own chain, with the schedule replaced by a traced number."""
  lr_free = ml_collections.ConfigDict(optim_config.to_dict())
  lr_free.update(lr=1.0, schedule='constant', warmup_steps=0)
  base = optim.build(lr_free, total_steps=1)
  return _HeldLR(tx=optax.chain(base.tx, _scale_by_held_lr()), schedule=base.schedule, plateau=None)


def with_lr(state, lr):
  """`state` with the learning rate its next step applies (an array of rates for a vmapped population),
  placed where the old one was: an argument placed differently would compile the step again."""
  lr = jax.device_put(jnp.asarray(lr, jnp.float32), state.opt_state[-1].sharding)
  return state.replace(opt_state=(*state.opt_state[:-1], lr))


def suggest(lrs, smoothed, warmup: int = 0) -> float:
  """The rate where the smoothed loss falls fastest, searched up to the loss's minimum; a tenth of the
  minimum's rate when there is no descent before it.

  The slope at each rate is taken across a decade of rates around it: step-to-step differences of even a
  smoothed loss are mostly noise. The first `warmup` values (the moving average's window, where few losses
  are averaged) are the noisiest: no slope starts among them. Without that, a lucky second batch at the
  lowest rate once made the steepest "descent" of a range test, and the doctor advised a rate of 1e-7.
  """
  x, smoothed = np.log10(np.asarray(lrs)), np.asarray(smoothed)
  lowest = int(np.argmin(smoothed))
  warmup = min(warmup, max(lowest - 2, 0))
  if lowest < 2:
    return float(10 ** x[lowest] / 10)
  reach = max(1, round(0.5 / (x[1] - x[0])))  # Points in half a decade.
  points = np.arange(warmup, lowest + 1)
  before = np.maximum(points - reach, warmup)
  after = np.minimum(points + reach, lowest)
  slopes = (smoothed[after] - smoothed[before]) / (x[after] - x[before])
  return float(10 ** x[points[int(np.argmin(slopes))]])


def trainer(exp, model, config: ml_collections.ConfigDict, population: int = 0):
  """(jitted step, initial state) to train `model` with `config`'s optimizer (rate held in the state) and
  augmentation, on the run's task and initial parameters: steps.make_train_step, plus each layer's
  update/weight ratio in the metrics. With `population` > 0 that many copies train at once (vmapped; give
  each its rate with `with_lr`). Placed like the loop's step, so it compiles once; the state is donated."""
  optimizer = held_lr_optimizer(config.optim)
  train_step = steps.make_train_step(model, optimizer, config.optim, task=exp.program.task,
                                     augment=augment.build(config.data))

  def step(state, batch):
    new, metrics = train_step(state, batch)
    updates = jax.tree.map(jnp.subtract, new.params, state.params)
    return new, {**metrics, 'update_ratio': stats.update_ratios(updates, state.params)}

  state = exp.new_state()
  state = state.replace(opt_state=optimizer.tx.init(state.params))
  if population:
    step = jax.vmap(step, in_axes=(0, None))
    state = jax.tree.map(lambda x: jnp.repeat(x[None], population, axis=0), state)
  replicated = exp.strategy.replicated
  return (jax.jit(step, in_shardings=(replicated, exp.strategy.data_sharded),
                  out_shardings=(replicated, replicated), donate_argnums=0),
          jax.device_put(state, replicated))


def range_test(exp, normalization: dict, step, state, min_lr: float, max_lr: float, num_steps: int,
               smoothing: float, diverge_factor: float) -> dict:
  """The sequential test of a jitted `step` from `state` (see `trainer`) on the training stream:
  {'lrs', 'losses' (smoothed), 'raw_losses', 'suggested_lr', 'diverged_lr' (where it stopped, or None)}."""
  lrs = np.geomspace(min_lr, max_lr, num_steps)
  raw, smoothed, diverged, average = [], [], None, 0.0
  batches = experiment.batches(exp, normalization, exp.config.data.batch_size)
  for lr, batch in zip(lrs, batches, strict=False):
    state, metrics = step(with_lr(state, lr), exp.strategy.place_batch(batch))
    loss = float(metrics['loss'])
    if not np.isfinite(loss):
      diverged = float(lr)
      break
    raw.append(loss)
    # An exponential moving average, bias-corrected so that the first values are not pulled towards 0.
    average = smoothing * average + (1 - smoothing) * loss
    smoothed.append(average / (1 - smoothing ** len(raw)))
    if smoothed[-1] > diverge_factor * min(smoothed):
      diverged = float(lr)
      break
  done = len(smoothed)
  return {'lrs': lrs[:done].tolist(), 'losses': smoothed, 'raw_losses': raw,
          'suggested_lr': (suggest(lrs[:done], smoothed, round(1 / (1 - smoothing))) if done
                           else float(min_lr)),
          'diverged_lr': diverged}


def parallel_test(exp, normalization: dict, step, states, min_lr: float, max_lr: float,
                  num_steps: int) -> dict:
  """A population (see `trainer`) at fixed rates from min_lr to max_lr, all from the run's initial
  parameters and trained on the same batches by one vmapped step: {'lrs', 'losses' (the mean of each run's
  last tenth of steps; None where it diverged), 'suggested_lr' (the rate with the lowest)}."""
  lrs = np.geomspace(min_lr, max_lr, len(states.step))
  states, losses = with_lr(states, lrs), []
  batches = experiment.batches(exp, normalization, exp.config.data.batch_size)
  for _, batch in zip(range(num_steps), batches, strict=False):
    states, metrics = step(states, exp.strategy.place_batch(batch))
    losses.append(metrics['loss'])
  final = np.asarray(jax.device_get(jnp.stack(losses)))[-max(1, num_steps // 10):].mean(axis=0)
  finite = np.isfinite(final)
  return {'lrs': lrs.tolist(), 'losses': np.where(finite, final, None).tolist(),
          'suggested_lr': float(lrs[np.argmin(np.where(finite, final, np.inf))])}


def lr_find(config: ml_collections.ConfigDict | None, workdir: str | pathlib.Path | None = None, *,
            model=None, data=None, task=None) -> dict:
  """Runs the configured range test (on the `model`, `data` and `task` objects when passed, as in `fit`);
  writes lr_find.json and plots/lr_find.png into `workdir` (a temporary directory when None) and returns
  lr_find.json's content."""
  exp, normalization, workdir = experiment.prepare(config, workdir, model=model, data_source=data, task=task)
  config = exp.config
  c = config.lr_find
  step, state = trainer(exp, exp.program.model, config, c.num_parallel if c.parallel else 0)
  if c.parallel:
    result = parallel_test(exp, normalization, step, state, c.min_lr, c.max_lr, c.num_steps)
  else:
    result = range_test(exp, normalization, step, state, c.min_lr, c.max_lr, c.num_steps, c.smoothing,
                        c.diverge_factor)
  experiment.write_json(workdir / RESULT_FILE, result)
  plots.lr_find(result, workdir / PLOT_FILE, parallel=c.parallel, configured_lr=config.optim.lr)
  return result

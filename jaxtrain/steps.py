"""Pure train and eval steps: (state, batch) -> (state, metrics). No host I/O; jitted by parallel.py.

What a step computes is fixed by the task (its loss and metrics, jaxtrain/tasks.py), the on-device
augmentation (jaxtrain/data/augment.py) and the optimizer config (penalties, gradient accumulation, EMA).
"""

import jax
import jax.numpy as jnp
import ml_collections
import optax

from jaxtrain import optim, tasks
from jaxtrain.diagnostics import stats
from jaxtrain.models import layers
from jaxtrain.state import TrainState, variables

CLASSIFICATION = tasks.build(ml_collections.ConfigDict({'name': 'classification', 'label_smoothing': 0.0}))
_AUGMENT_STREAM = 1  # Augmentation draws from fold_in(step key, 1); dropout from the step key itself.


def make_loss_fn(model, optim_config, task: tasks.Task = CLASSIFICATION, capture: bool = False):
  """(params, state, batch[, rng]) -> (objective, (loss, logits, new_model_state)): the task's mean loss
  plus L1/L2 penalties; dropout draws from `rng`, by default `fold_in(state.rng, state.step)`. With
  `capture`, new_model_state['intermediates'] holds every activation layer's output."""

  def loss_fn(params, state: TrainState, batch: dict, rng=None):
    rng = jax.random.fold_in(state.rng, state.step) if rng is None else rng
    logits, new_model_state = model.apply(
        variables(state.replace(params=params)), batch, train=True,
        rngs={'dropout': rng}, mutable=['batch_stats', 'intermediates'] if capture else ['batch_stats'],
        capture_intermediates=stats.is_activation if capture else False)
    loss = task.loss(logits, batch).mean()
    axis = layers.current_data_axis()
    if axis:  # pmap: the mean over the devices' slices is the global batch's mean loss. Its gradient with
      # respect to the replicated parameters is then the global one: shard_map's autodiff sums the
      # per-device contributions itself (a pmean of the gradients would count them n times).
      loss = jax.lax.pmean(loss, axis)
    objective = loss + optim.penalty(params, optim_config.l1, optim_config.l2)
    return objective, (loss, logits, new_model_state)

  return loss_fn


def augmented(augment, state: TrainState, batch: dict) -> dict:
  """The batch as the step at `state.step` trains on it: `augment(rng, images)` drawn from the step key,
  on the 'image' key (build.prepare refuses augmentation for data without one, so only `data.augment=none`
  meets such a batch)."""
  if augment is None or 'image' not in batch:
    return batch
  key = jax.random.fold_in(jax.random.fold_in(state.rng, state.step), _AUGMENT_STREAM)
  return {**batch, 'image': augment(key, batch['image'])}


def _train_metrics(task: tasks.Task, outputs, batch) -> dict:
  """The task's per-example metrics as batch means (the totals behind mean IoU or perplexity are for eval)."""
  sums = task.sums(outputs, batch, jnp.ones(jax.tree.leaves(batch)[0].shape[0], bool))
  return {k: v / sums['count'] for k, v in sums.items() if k not in (*tasks.TOTALS, 'loss')}


def make_train_step(model, optimizer: optim.Optimizer, optim_config, nonfinite: str = 'halt',
                    task: tasks.Task = CLASSIFICATION, augment=None, diagnose: str | None = None,
                    max_skips: int = 0):
  """The train step for `model`: augmentation, the task's loss (+ L1/L2 penalties), one optimizer update.

  `diagnose` (the model's activation name) makes the diagnostic variant of the step: its metrics also hold
  `diag`, per-layer statistics as one vector (`diagnostics.stats.training_stats`). The loop runs it only every
  `diagnostics.every_steps`, so other steps pay nothing.

  With `optim.accumulate_steps=k` the batch is split into k micro-batches whose gradients are summed by a
  `lax.scan` inside the step: one update per step, and the only extra buffer is the running gradient sum
  (optax.MultiSteps would instead keep a second parameter-sized buffer in the optimizer state across steps).

  A step whose loss or gradient norm is not finite changes nothing but `skips` (params, optimizer state and
  BatchNorm statistics keep their values), decided in-graph so no step waits for the host. With
  `nonfinite='skip'` the run goes on with the next batch, until `max_skips` (> 0) such steps in a row:
  then every later step is dropped and `step` stops at the last of them; with 'halt' every step after the
  first bad one is dropped and `step` stops at the last good one. Either way the loop, when it next looks,
  finds the state and the step where the run must halt, exactly. (optax.apply_if_finite skips only the
  optimizer update: BatchNorm statistics would still take the NaN, and after its error budget it applies the
  bad update.)
  """
  micro_batches = optim_config.accumulate_steps
  capture = diagnose is not None and micro_batches == 1  # Activations of one micro-batch are enough.
  grad_fn = jax.grad(make_loss_fn(model, optim_config, task, capture), has_aux=True)

  def gradients(state: TrainState, batch: dict, rng):
    """(mean gradient, mean loss, train metrics, new BatchNorm statistics, captured activations) over the
    micro-batches."""
    if micro_batches == 1:
      grads, (loss, logits, model_state) = grad_fn(state.params, state, batch, rng)
      return (grads, loss, _train_metrics(task, logits, batch), model_state.get('batch_stats', {}),
              model_state.get('intermediates'))

    def accumulate(carry, micro):
      grads_sum, loss_sum, metrics_sum, batch_stats = carry
      index, micro_batch = micro
      grads, (loss, logits, model_state) = grad_fn(
          state.params, state.replace(batch_stats=batch_stats), micro_batch, jax.random.fold_in(rng, index))
      metrics = _train_metrics(task, logits, micro_batch)
      return (jax.tree.map(jnp.add, grads_sum, grads), loss_sum + loss,
              jax.tree.map(jnp.add, metrics_sum, metrics), model_state.get('batch_stats', {})), None

    split = jax.tree.map(lambda x: x.reshape(micro_batches, -1, *x.shape[1:]), batch)
    first = jax.tree.map(lambda x: x[0], split)
    metrics_shape = jax.eval_shape(lambda: _train_metrics(task, model.apply(
        variables(state), first, train=False), first))
    zeros = (jax.tree.map(jnp.zeros_like, state.params), jnp.zeros(()),
             jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), metrics_shape), state.batch_stats)
    (grads, loss, metrics, batch_stats), _ = jax.lax.scan(
        accumulate, zeros, (jnp.arange(micro_batches), split))
    mean = lambda tree: jax.tree.map(lambda x: x / micro_batches, tree)  # noqa: E731
    return mean(grads), loss / micro_batches, mean(metrics), batch_stats, None

  def train_step(state: TrainState, batch: dict):
    rng = jax.random.fold_in(state.rng, state.step)
    batch = augmented(augment, state, batch)
    grads, loss, task_metrics, new_batch_stats, activations = gradients(state, batch, rng)
    axis = layers.current_data_axis()
    if axis:  # pmap: each device's metrics are of its slice of the batch. So are a user model's BatchNorm
      # statistics (the zoo's layers average theirs already): kept as their mean over the devices, as the
      # Flax ImageNet example's cross-replica mean does, so the state stays one replicated value.
      task_metrics = jax.lax.pmean(task_metrics, axis)
      new_batch_stats = jax.tree.map(
          lambda x: jax.lax.pmean(x, axis) if jnp.issubdtype(x.dtype, jnp.floating) else x, new_batch_stats)
    updates, opt_state = optimizer.tx.update(grads, state.opt_state, state.params)
    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    limit = 1 if nonfinite == 'halt' else max_skips  # Bad steps in a row after which the run is frozen.
    frozen = state.skips >= limit if limit else jnp.zeros((), bool)
    apply = finite & ~frozen
    metrics = {
        'loss': loss, **task_metrics,
        'grad_norm': grad_norm,
        'lr': optimizer.learning_rate(state.opt_state, state.step),
        'skipped': 1.0 - apply.astype(jnp.float32),
    }
    params = optax.apply_updates(state.params, updates)
    if diagnose is not None:
      metrics['diag'] = stats.training_stats(grads, updates, state.params, activations, diagnose)
      if axis:
        metrics['diag'] = jax.lax.pmean(metrics['diag'], axis)
    updated = (params, opt_state, new_batch_stats or state.batch_stats, _ema(optim_config, state, params))
    params, opt_state, batch_stats, ema = jax.tree.map(
        lambda new, old: jnp.where(apply, new, old), updated,
        (state.params, state.opt_state, state.batch_stats, state.ema))
    new_state = state.replace(
        step=state.step + (~frozen if nonfinite == 'skip' else apply).astype(jnp.int32),
        params=params, opt_state=opt_state, batch_stats=batch_stats, ema=ema,
        skips=jnp.where(apply, 0, state.skips + (~frozen).astype(jnp.int32)))
    return new_state, metrics

  return train_step


def _ema(optim_config, state: TrainState, params):
  """The moving average of the parameters after this step ({} when optim.ema_decay is 0).

  The decay ramps up as min(decay, (1 + step) / (10 + step)) (as TensorFlow's ExponentialMovingAverage with
  num_updates), so early averages are not dominated by the random initialization. One line of arithmetic:
  optax.ema averages updates, not parameters.
  """
  if not optim_config.ema_decay:
    return state.ema
  decay = jnp.minimum(optim_config.ema_decay, (1.0 + state.step) / (10.0 + state.step))
  return jax.tree.map(lambda average, new: decay * average + (1 - decay) * new, state.ema, params)


def make_forensics(model, optim_config, task: tasks.Task = CLASSIFICATION, augment=None):
  """(state, batch) -> (loss, {module path: output finite}, {parameter path: gradient finite}): the step at
  `state.step` re-run to find where a non-finite value appears. Built and compiled only when a run halts."""
  loss_fn = make_loss_fn(model, optim_config, task)

  def forensics(state: TrainState, batch: dict):
    batch = augmented(augment, state, batch)
    grads, (loss, _, _) = jax.grad(loss_fn, has_aux=True)(state.params, state, batch)
    _, captured = model.apply(variables(state), batch, train=True, capture_intermediates=True,
                              rngs={'dropout': jax.random.fold_in(state.rng, state.step)},
                              mutable=['intermediates', 'batch_stats'])
    finite = lambda tree: {  # noqa: E731
        jax.tree_util.keystr(path, simple=True, separator='/'): jnp.all(jnp.isfinite(x))
        for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]}
    return loss, finite(captured['intermediates']), finite(grads)

  return jax.jit(forensics)


def make_eval_step(model, task: tasks.Task = CLASSIFICATION, use_ema: bool = False):
  """The task's metric sums over the real (masked) examples of a padded batch, so batches add up exactly.
  `use_ema` evaluates the moving average of the parameters."""

  def eval_step(state: TrainState, batch: dict):
    if use_ema:
      state = state.replace(params=state.ema)
    outputs = model.apply(variables(state), batch, train=False)
    return task.sums(outputs, batch, batch['mask'])

  return eval_step

"""Pure train and eval steps: (state, batch) -> (state, metrics). No host I/O; jitted by parallel.py."""

import jax
import jax.numpy as jnp
import optax

from jaxtrain import optim
from jaxtrain.state import TrainState, variables


def cross_entropy(logits, labels):
  """Per-example softmax cross-entropy on integer labels."""
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def make_loss_fn(model, optim_config):
  """(params, state, batch) -> (objective, (loss, logits, new_model_state)): cross-entropy + penalties, with
  dropout drawn from `fold_in(state.rng, state.step)`."""

  def loss_fn(params, state: TrainState, batch: dict):
    logits, new_model_state = model.apply(
        variables(state.replace(params=params)), batch['image'], train=True,
        rngs={'dropout': jax.random.fold_in(state.rng, state.step)}, mutable=['batch_stats'])
    loss = cross_entropy(logits, batch['label']).mean()
    objective = loss + optim.penalty(params, optim_config.l1, optim_config.l2)
    return objective, (loss, logits, new_model_state)

  return loss_fn


def make_train_step(model, optimizer: optim.Optimizer, optim_config, nonfinite: str = 'halt'):
  """The train step for `model`: cross-entropy (+ L1/L2 penalties), one optimizer update.

  A step whose loss or gradient norm is not finite changes nothing but `skips` (params, optimizer state and
  BatchNorm statistics keep their values), decided in-graph so no step waits for the host. With
  `nonfinite='skip'` the run goes on with the next batch; with 'halt' every later step is dropped too and
  `step` stops at the last good one, so the loop, when it next looks, finds the state from before the bad
  step and the step that failed. (optax.apply_if_finite skips only the optimizer update: BatchNorm
  statistics would still take the NaN, and after its error budget it applies the bad update.)
  """

  loss_fn = make_loss_fn(model, optim_config)

  def train_step(state: TrainState, batch: dict):
    grads, (loss, logits, new_model_state) = jax.grad(loss_fn, has_aux=True)(state.params, state, batch)
    updates, opt_state = optimizer.tx.update(grads, state.opt_state, state.params)
    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    apply = finite if nonfinite == 'skip' else finite & (state.skips == 0)
    metrics = {
        'loss': loss,
        'accuracy': jnp.mean(jnp.argmax(logits, -1) == batch['label']),
        'grad_norm': grad_norm,
        'lr': optimizer.learning_rate(state.opt_state, state.step),
        'skipped': 1.0 - apply.astype(jnp.float32),
    }
    updated = (optax.apply_updates(state.params, updates), opt_state,
               new_model_state.get('batch_stats', state.batch_stats))
    params, opt_state, batch_stats = jax.tree.map(
        lambda new, old: jnp.where(apply, new, old), updated,
        (state.params, state.opt_state, state.batch_stats))
    new_state = state.replace(
        step=state.step + (1 if nonfinite == 'skip' else apply.astype(jnp.int32)),
        params=params, opt_state=opt_state, batch_stats=batch_stats,
        skips=jnp.where(apply, 0, state.skips + 1))
    return new_state, metrics

  return train_step


def make_gradient_check(model, optim_config):
  """(state, batch) -> (loss, {parameter path: whether its gradient is finite}): names what went non-finite
  when a run halts. Built and compiled only then."""
  loss_fn = make_loss_fn(model, optim_config)

  def gradient_check(state: TrainState, batch: dict):
    grads, (loss, _, _) = jax.grad(loss_fn, has_aux=True)(state.params, state, batch)
    flat = jax.tree_util.tree_flatten_with_path(grads)[0]
    return loss, {jax.tree_util.keystr(path, simple=True, separator='/'): jnp.all(jnp.isfinite(g))
                  for path, g in flat}

  return jax.jit(gradient_check)


def make_eval_step(model):
  """Sums over the real (masked) examples of a padded batch, so batches add up exactly."""

  def eval_step(state: TrainState, batch: dict):
    logits = model.apply(variables(state), batch['image'], train=False)
    mask = batch['mask']
    return {
        'loss': jnp.sum(jnp.where(mask, cross_entropy(logits, batch['label']), 0.0)),
        'accuracy': jnp.sum(mask & (jnp.argmax(logits, -1) == batch['label'])),
        'count': jnp.sum(mask),
    }

  return eval_step

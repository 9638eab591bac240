"""Pure train and eval steps: (state, batch) -> (state, metrics). No host I/O; jitted by parallel.py."""

import jax
import jax.numpy as jnp
import optax

from jaxtrain import optim
from jaxtrain.state import TrainState, variables


def cross_entropy(logits, labels):
  """Per-example softmax cross-entropy on integer labels."""
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def make_train_step(model, optimizer: optim.Optimizer, optim_config):
  """The train step for `model`: cross-entropy (+ L1/L2 penalties), one optimizer update."""

  def train_step(state: TrainState, batch: dict):
    rng = jax.random.fold_in(state.rng, state.step)

    def loss_fn(params):
      logits, new_model_state = model.apply(
          variables(state.replace(params=params)), batch['image'], train=True,
          rngs={'dropout': rng}, mutable=['batch_stats'])
      loss = cross_entropy(logits, batch['label']).mean()
      objective = loss + optim.penalty(params, optim_config.l1, optim_config.l2)
      return objective, (loss, logits, new_model_state)

    grads, (loss, logits, new_model_state) = jax.grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = optimizer.tx.update(grads, state.opt_state, state.params)
    metrics = {
        'loss': loss,
        'accuracy': jnp.mean(jnp.argmax(logits, -1) == batch['label']),
        'grad_norm': optax.global_norm(grads),
        'lr': optimizer.learning_rate(state.opt_state, state.step),
    }
    new_state = state.replace(
        step=state.step + 1, params=optax.apply_updates(state.params, updates),
        opt_state=opt_state, batch_stats=new_model_state.get('batch_stats', state.batch_stats))
    return new_state, metrics

  return train_step


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

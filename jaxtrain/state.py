"""The train state: one pytree of arrays, so it can be jitted, donated, sharded and checkpointed whole."""

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
  """Everything a step reads and writes. `batch_stats` is the model's non-trained state: Linen's
  'batch_stats' collection, or an NNX module's variables other than its Params; {} when there are none.

  `rng` is the run's base key; step `s` uses `fold_in(rng, s)`, so a resumed run draws the same numbers.
  `skips` counts the consecutive steps whose update was dropped for a non-finite loss or gradient.
  `ema` is the moving average of `params` ({} when optim.ema_decay is 0).
  """

  step: jax.Array
  params: Any
  opt_state: Any
  batch_stats: Any
  rng: jax.Array
  skips: jax.Array
  ema: Any


def create(model, tx: optax.GradientTransformation, example: dict, seed: int, ema: bool = False,
           initial: dict | None = None):
  """A fresh state: parameters from the model's initializers (`model.Model.init` on `example`, a batch of
  zeros shaped like the data) or an NNX module's `initial` variables, optimizer state from `tx`."""
  init_key, rng = jax.random.split(jax.random.PRNGKey(seed))
  variables = model.init(init_key, example, initial)
  params = variables['params']
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    batch_stats=variables.get('batch_stats', {}), rng=rng, skips=jnp.zeros((), jnp.int32),
                    ema=jax.tree.map(jnp.copy, params) if ema else {})


def variables(state: TrainState) -> dict:
  """The Flax variables for `model.apply`."""
  if state.batch_stats:
    return {'params': state.params, 'batch_stats': state.batch_stats}
  return {'params': state.params}


def num_params(params) -> int:
  return sum(x.size for x in jax.tree.leaves(params))

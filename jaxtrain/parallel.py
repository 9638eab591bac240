"""The only module that knows about devices: meshes, shardings, and jitting the steps onto them.

A step is written once for the global batch; under `jax.jit` with a data-parallel mesh XLA splits the batch
across devices and inserts the gradient all-reduce (BatchNorm statistics are over the global batch too).
`single` is the same program on a one-device mesh.
"""

import dataclasses

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxtrain.config import ConfigError, lookup

STRATEGIES = ('auto', 'single', 'mesh')


@dataclasses.dataclass(frozen=True)
class Strategy:
  """Where state and batches live, and the jitted steps."""

  mesh: Mesh

  @property
  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, P())

  @property
  def data_sharded(self) -> NamedSharding:
    return NamedSharding(self.mesh, P('data'))

  @property
  def chunk_sharded(self) -> NamedSharding:
    """Chunks of batches, (steps, batch, ...): each batch split across the data axis."""
    return NamedSharding(self.mesh, P(None, 'data'))

  @property
  def num_devices(self) -> int:
    return self.mesh.size

  def jit_create_state(self, create_fn):
    """`create_fn` under jit, so the state is born on its devices (no host copy)."""
    return jax.jit(create_fn, out_shardings=self.replicated)

  def jit_chunk_train_step(self, train_step):
    """The train step fed from a chunk of batches on the device: `(state, chunk, k)` trains on `chunk[k]`.

    One transfer then serves several steps (see `data.chunk_steps`); the slice happens inside the jit.
    """
    def step_on_chunk(state, chunk, k):
      return train_step(state, jax.tree.map(lambda x: x[k], chunk))
    return jax.jit(step_on_chunk, in_shardings=(self.replicated, self.chunk_sharded, self.replicated),
                   out_shardings=(self.replicated, self.replicated), donate_argnums=0)

  def jit_eval_step(self, eval_step):
    return jax.jit(eval_step, in_shardings=(self.replicated, self.data_sharded),
                   out_shardings=self.replicated)

  def place_batch(self, batch: dict) -> dict:
    return jax.device_put(batch, self.data_sharded)

  def place_chunk(self, chunk: dict) -> dict:
    return jax.device_put(chunk, self.chunk_sharded)


def make(parallel_config, batch_sizes: dict[str, int]) -> Strategy:
  """The configured strategy; every batch size must split evenly across the data-parallel devices."""
  name = parallel_config.strategy
  lookup(STRATEGIES, 'parallel.strategy', name)
  devices = jax.devices()
  if name == 'single' or (name == 'auto' and len(devices) == 1):
    devices = devices[:1]
  for key, size in batch_sizes.items():
    if size % len(devices):
      raise ConfigError(f'{key}={size} does not divide evenly across {len(devices)} devices; '
                        f'use a multiple of {len(devices)} or --config.parallel.strategy=single')
  return Strategy(Mesh(np.asarray(devices), ('data',)))

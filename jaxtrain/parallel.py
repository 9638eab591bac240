"""The only module that knows about devices: meshes, shardings, and compiling the steps onto them.

A step is written once, for one batch (steps.py). The strategies wrap it:

* `single`: one device.
* `mesh`: `jax.jit` over a Mesh with axes ('data', 'fsdp') from `parallel.mesh`. The global batch is split
  over every device; XLA inserts the gradient all-reduce, and BatchNorm statistics and dropout see the global
  batch. Parameters and optimizer state are replicated, or with fsdp > 1 each large array is sharded along
  its largest dimension that `fsdp` divides (FSDP), so each device holds 1/fsdp of it.
* `pmap`: the per-device program of `jax.pmap` (each device runs the step on its slice of the batch, with
  gradients, metrics and BatchNorm statistics averaged by `lax.pmean` over the axis 'batch'), written with
  `jax.shard_map`, which is what jax.pmap is built on today. The state stays one global (replicated) array,
  so the loop, checkpoints and eval are the same for every strategy and a run can resume under another.
* `auto`: `mesh` (data parallel) when there is more than one device, else `single`.

State is born on its devices with its sharding (`jax.jit(create, out_shardings=...)` from the abstract
state of `jax.eval_shape`), and the train step donates it.
"""

import dataclasses
import math
import os
import socket
import time

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxtrain.config import ConfigError, lookup
from jaxtrain.models import layers

STRATEGIES = ('auto', 'single', 'mesh', 'pmap')
PMAP_AXIS = 'batch'


@dataclasses.dataclass(frozen=True)
class Strategy:
  """Where state and batches live, and the compiled steps. Hashable: compiled programs are cached by it."""

  mesh: Mesh  # Axes ('data', 'fsdp'); `pmap` uses the data axis alone.
  fsdp_min_size: int = 0  # Arrays with fewer elements stay replicated under fsdp.
  per_device: bool = False  # The pmap strategy.

  @property
  def num_devices(self) -> int:
    return self.mesh.size

  @property
  def batch_axes(self) -> tuple[str, ...]:
    """A batch is split over every axis: ('data', 'fsdp'), or pmap's one axis."""
    return tuple(self.mesh.axis_names)

  @property
  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, P())

  @property
  def data_sharded(self) -> NamedSharding:
    """Batches: split along their first axis over every device."""
    return NamedSharding(self.mesh, P(self.batch_axes))

  @property
  def chunk_sharded(self) -> NamedSharding:
    """Chunks of batches, (steps, batch, ...): each batch split over every device."""
    return NamedSharding(self.mesh, P(None, self.batch_axes))

  def state_shardings(self, abstract_state):
    """Replicated, or under fsdp each array of >= fsdp_min_size elements sharded along its largest
    dimension divisible by the fsdp axis (optimizer moments shaped like a kernel follow the kernel)."""
    fsdp = self.mesh.shape.get('fsdp', 1)

    def sharding(leaf) -> NamedSharding:
      if fsdp == 1 or leaf.size < self.fsdp_min_size:
        return self.replicated
      for dim in sorted(range(leaf.ndim), key=lambda d: -leaf.shape[d]):
        if leaf.shape[dim] % fsdp == 0:
          return NamedSharding(self.mesh, P(*[None] * dim, 'fsdp'))
      return self.replicated

    return jax.tree.map(sharding, abstract_state)

  def jit_create_state(self, create_fn):
    """`create_fn(seed)` under jit, so the state is born on its devices with its sharding (no host copy)."""
    return jax.jit(create_fn, out_shardings=self.state_shardings(jax.eval_shape(create_fn, 0)))

  def jit_chunk_train_step(self, train_step, abstract_state):
    """The train step fed from a chunk of batches on the device: `(state, chunk, k)` trains on `chunk[k]`.

    One transfer then serves several steps (see `data.chunk_steps`); the slice happens inside the jit.
    """
    if self.per_device:
      train_step = self._per_device(train_step)

    def step_on_chunk(state, chunk, k):
      return train_step(state, jax.tree.map(lambda x: x[k], chunk))

    state_sharding = self.state_shardings(abstract_state)
    return jax.jit(step_on_chunk, in_shardings=(state_sharding, self.chunk_sharded, self.replicated),
                   out_shardings=(state_sharding, self.replicated), donate_argnums=0)

  def _per_device(self, train_step):
    """pmap semantics: each device steps on its slice of the batch; the layers and the step average over
    the axis (BatchNorm statistics, dropout's example indices: `layers.data_parallel_axis`)."""
    def per_device(state, batch):
      with layers.data_parallel_axis(PMAP_AXIS):
        return train_step(state, batch)
    return jax.shard_map(per_device, mesh=self.mesh, in_specs=(P(), P(PMAP_AXIS)), out_specs=(P(), P()))

  def jit_eval_step(self, eval_step, abstract_state):
    """Eval on every device: each batch split over all of them; sums over the real examples."""
    return jax.jit(eval_step, in_shardings=(self.state_shardings(abstract_state), self.data_sharded),
                   out_shardings=self.replicated)

  @property
  def process_shard(self) -> tuple[int, int]:
    """(this process, processes): which rows of each global batch this process reads and places."""
    return jax.process_index(), jax.process_count()

  def place_batch(self, batch: dict) -> dict:
    return self._place(batch, self.data_sharded)

  def place_chunk(self, chunk: dict) -> dict:
    return self._place(chunk, self.chunk_sharded)

  def _place(self, local: dict, sharding: NamedSharding) -> dict:
    """This process's rows onto its devices, as one global array (a plain device_put on one host)."""
    if jax.process_count() == 1:
      return jax.device_put(local, sharding)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local)


def barrier(name: str) -> None:
  """Waits until every process gets here (no-op for one process): e.g. all have looked at the workdir
  before any of them writes to it, so they all take the same decisions."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def initialize_distributed() -> None:
  """Joins a multi-process run, before anything touches a device; does nothing for one process.

  Behind one function because the recipe changes with JAX versions and clusters (MaxText keeps the same
  indirection). Under SLURM (`srun`, SLURM_NTASKS > 1) JAX finds the coordinator itself; elsewhere
  JAXTRAIN_COORDINATOR (host:port of process 0), JAXTRAIN_NUM_PROCESSES and JAXTRAIN_PROCESS_ID say it.
  JAXTRAIN_INIT_TIMEOUT (s, default 300) bounds the wait for the coordinator, and a peer that stops
  answering heartbeats for JAXTRAIN_HEARTBEAT_TIMEOUT (s, default 30) ends the others instead of hanging.
  """
  env = os.environ
  if 'JAXTRAIN_COORDINATOR' in env:
    try:
      where = dict(coordinator_address=env['JAXTRAIN_COORDINATOR'],
                   num_processes=int(env['JAXTRAIN_NUM_PROCESSES']),
                   process_id=int(env['JAXTRAIN_PROCESS_ID']))
    except (KeyError, ValueError) as e:
      raise ConfigError('JAXTRAIN_COORDINATOR needs JAXTRAIN_NUM_PROCESSES and JAXTRAIN_PROCESS_ID '
                        f'(integers); {e} is missing or wrong') from None
  elif int(env.get('SLURM_NTASKS', '1')) > 1:
    where = {}
  else:
    return
  timeout = int(env.get('JAXTRAIN_INIT_TIMEOUT', '300'))
  if where.get('process_id'):  # JAX aborts the process when the coordinator is unreachable: ask first.
    _wait_for_coordinator(where['coordinator_address'], timeout)
  try:
    jax.distributed.initialize(**where, initialization_timeout=timeout,
                               heartbeat_timeout_seconds=int(env.get('JAXTRAIN_HEARTBEAT_TIMEOUT', '30')))
  except Exception as e:  # noqa: BLE001 - JAX raises various errors for an unreachable coordinator.
    coordinator = where.get('coordinator_address', 'the SLURM coordinator')
    reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
    raise ConfigError(f'could not join the run at {coordinator} within {timeout}s ({reason}); '
                      'check that process 0 is running '
                      'and the address is reachable') from None


def _wait_for_coordinator(address: str, timeout: float) -> None:
  """Returns once process 0's coordinator accepts connections; a ConfigError after `timeout` seconds."""
  host, _, port = address.rpartition(':')
  deadline = time.monotonic() + timeout
  while True:
    try:
      socket.create_connection((host, int(port)), timeout=5).close()
      return
    except OSError as e:
      if time.monotonic() > deadline:
        raise ConfigError(f'cannot reach the coordinator JAXTRAIN_COORDINATOR={address} within {timeout}s '
                          f'({e}); start process 0 first, or check the address and port') from None
      time.sleep(1)


def _mesh_shape(mesh_config, num_devices: int) -> tuple[int, int]:
  """(data, fsdp) from `parallel.mesh`; one axis may be -1 (all the devices the other leaves)."""
  sizes = {'data': mesh_config.data, 'fsdp': mesh_config.fsdp}
  for axis, size in sizes.items():
    if size == 0 or size < -1:
      raise ConfigError(f'parallel.mesh.{axis}={size} is out of range; give a positive size or -1')
  if list(sizes.values()).count(-1) > 1:
    raise ConfigError('parallel.mesh has -1 on both axes; set at most one to -1 (all remaining devices)')
  known = math.prod(size for size in sizes.values() if size != -1)
  if num_devices % known:
    raise ConfigError(f'parallel.mesh data={sizes["data"]} x fsdp={sizes["fsdp"]} does not divide the '
                      f'{num_devices} devices; make the product of the axes divide {num_devices}')
  sizes = {axis: num_devices // known if size == -1 else size for axis, size in sizes.items()}
  if sizes['data'] * sizes['fsdp'] != num_devices:
    raise ConfigError(f'parallel.mesh data={sizes["data"]} x fsdp={sizes["fsdp"]} uses '
                      f'{sizes["data"] * sizes["fsdp"]} devices but there are {num_devices}; '
                      'set one axis to -1 to use them all')
  return sizes['data'], sizes['fsdp']


def make(parallel_config, batch_sizes: dict[str, int]) -> Strategy:
  """The configured strategy; every batch size must split evenly across the data-parallel devices."""
  name = lookup(STRATEGIES, 'parallel.strategy', parallel_config.strategy)
  devices = jax.devices()
  if name == 'single' or (name == 'auto' and len(devices) == 1):
    devices = devices[:1]
  data, fsdp = (len(devices), 1) if name in ('auto', 'single', 'pmap') else _mesh_shape(
      parallel_config.mesh, len(devices))
  for key, size in batch_sizes.items():
    if size % len(devices):
      raise ConfigError(f'{key}={size} does not divide evenly across {len(devices)} devices; '
                        f'use a multiple of {len(devices)} or --config.parallel.strategy=single')
  mesh = Mesh(np.asarray(devices).reshape(data, fsdp), ('data', 'fsdp'))
  if name == 'pmap':
    mesh = Mesh(np.asarray(devices), (PMAP_AXIS,))
  return Strategy(mesh=mesh, fsdp_min_size=parallel_config.fsdp_min_size, per_device=name == 'pmap')

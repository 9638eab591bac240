"""The only module that knows about devices: meshes, shardings, and compiling the steps onto them.

A step is written once, for one batch (steps.py). The strategies wrap it:

* `single`: one device.
* `mesh`: `jax.jit` over a Mesh with axes ('data', 'fsdp', 'model') from `parallel.mesh`. The global batch
  is split over the data and fsdp devices; XLA inserts the gradient all-reduce, and BatchNorm statistics and
  dropout see the global batch. Parameters and optimizer state are replicated, or with fsdp > 1 each large
  array is sharded along its largest dimension that `fsdp` divides (FSDP), so each device holds 1/fsdp of
  it. With model > 1 (tensor parallelism, note 001's model parallelism: every device of a model group sees
  the same data and holds part of the model) the attention and MLP kernels of vit and gpt are split by
  `models.MODEL_AXIS_RULES`, Megatron-style; XLA's partitioner inserts the collectives.
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
import re
import socket
import time

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxtrain import models
from jaxtrain.config import ConfigError, lookup
from jaxtrain.models import layers

STRATEGIES = ('auto', 'single', 'mesh', 'pmap')
PMAP_AXIS = 'batch'
# State creation runs once per process, so on a CPU it is compiled for compile time: LLVM's optimizations
# (what JAX_DISABLE_MOST_OPTIMIZATIONS turns off) took 1.7 of the 2.2 s it took to compile the digits CNN's
# initializers and Adam state, and the program ran as fast without them (10 ms). The train and eval steps,
# run thousands of times, keep them. The initial values differ from the optimized program's by a rounding
# (at most 2e-7 here: FMA contraction in the initializers' arithmetic); every run and strategy uses these.
RUN_ONCE_CPU_OPTIONS = {'xla_backend_optimization_level': 0, 'xla_llvm_disable_expensive_passes': True}


@dataclasses.dataclass(frozen=True)
class Strategy:
  """Where state and batches live, and the compiled steps. Hashable: compiled programs are cached by it."""

  mesh: Mesh  # Axes ('data', 'fsdp', 'model'); `pmap` uses the data axis alone.
  fsdp_min_size: int = 0  # Arrays with fewer elements stay replicated under fsdp.
  per_device: bool = False  # The pmap strategy.

  @property
  def num_devices(self) -> int:
    return self.mesh.size

  @property
  def batch_axes(self) -> tuple[str, ...]:
    """A batch is split over every axis but 'model' (a model group sees the same data): ('data', 'fsdp'),
    or pmap's one axis."""
    return tuple(axis for axis in self.mesh.axis_names if axis != 'model')

  @property
  def data_parallel_size(self) -> int:
    """The devices a batch is split over (batch sizes must divide by it)."""
    return math.prod(self.mesh.shape[axis] for axis in self.batch_axes)

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
    """Per array: its dimension split over 'model' by `models.MODEL_AXIS_RULES` (matched on its path, so
    optimizer moments follow their kernel) when the axis divides it; then, under fsdp and for arrays of
    >= fsdp_min_size elements, its largest other dimension divisible by the fsdp axis; else replicated."""
    fsdp, model = self.mesh.shape.get('fsdp', 1), self.mesh.shape.get('model', 1)

    def sharding(path, leaf) -> NamedSharding:
      spec = [None] * leaf.ndim
      if model > 1:
        spec = list(_model_axis_spec(jax.tree_util.keystr(path, simple=True, separator='/'), leaf, model))
      if fsdp > 1 and leaf.size >= self.fsdp_min_size:
        free = [d for d in range(leaf.ndim) if spec[d] is None and leaf.shape[d] % fsdp == 0]
        if free:
          spec[max(free, key=lambda d: leaf.shape[d])] = 'fsdp'
      return NamedSharding(self.mesh, P(*spec)) if any(spec) else self.replicated

    return jax.tree_util.tree_map_with_path(sharding, abstract_state)

  @property
  def run_once_options(self) -> dict | None:
    """XLA options for a program run once per process: `RUN_ONCE_CPU_OPTIONS` on a CPU, else XLA's own."""
    return RUN_ONCE_CPU_OPTIONS if self.mesh.devices.flat[0].platform == 'cpu' else None

  def jit_create_state(self, create_fn):
    """`create_fn(seed)` under jit, so the state is born on its devices with its sharding (no host copy)."""
    return jax.jit(create_fn, out_shardings=self.state_shardings(jax.eval_shape(create_fn, 0)),
                   compiler_options=self.run_once_options)

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


def agreed_signal(signum: int | None) -> int | None:
  """The signal any process has received (the largest number when several have), agreed on by all
  processes through one all-gather, which every process must call at the same step."""
  agreed = int(np.max(multihost_utils.process_allgather(np.int32(signum or 0))))
  return agreed or None


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


def _model_axis_spec(path: str, leaf, size: int) -> tuple:
  """The PartitionSpec entries the first matching rule gives this array, or all None (replicated) when
  none matches or the axis does not divide the dimension it splits."""
  for pattern, spec in models.MODEL_AXIS_RULES:
    if re.search(pattern, path) and len(spec) == leaf.ndim:
      dim = spec.index('model')
      return spec if leaf.shape[dim] % size == 0 else (None,) * leaf.ndim
  return (None,) * leaf.ndim


MESH_AXES = ('data', 'fsdp', 'model')


def _mesh_shape(mesh_config, num_devices: int) -> tuple[int, int, int]:
  """(data, fsdp, model) from `parallel.mesh`; one axis may be -1 (all the devices the others leave)."""
  sizes = {axis: mesh_config[axis] for axis in MESH_AXES}
  for axis, size in sizes.items():
    if size == 0 or size < -1:
      raise ConfigError(f'parallel.mesh.{axis}={size} is out of range; give a positive size or -1')
  if list(sizes.values()).count(-1) > 1:
    raise ConfigError('parallel.mesh has -1 on several axes; set at most one to -1 (all remaining devices)')
  known = math.prod(size for size in sizes.values() if size != -1)
  shape = ' x '.join(f'{axis}={size}' for axis, size in sizes.items())
  if num_devices % known:
    raise ConfigError(f'parallel.mesh {shape} does not divide the {num_devices} devices; make the product '
                      f'of the axes divide {num_devices}')
  sizes = {axis: num_devices // known if size == -1 else size for axis, size in sizes.items()}
  if math.prod(sizes.values()) != num_devices:
    raise ConfigError(f'parallel.mesh {shape} uses {math.prod(sizes.values())} devices but there are '
                      f'{num_devices}; set one axis to -1 to use them all')
  return sizes['data'], sizes['fsdp'], sizes['model']


def make(parallel_config, batch_sizes: dict[str, int]) -> Strategy:
  """The configured strategy; every batch size must split evenly across the data-parallel devices."""
  name = lookup(STRATEGIES, 'parallel.strategy', parallel_config.strategy)
  devices = jax.devices()
  if name == 'single' or (name == 'auto' and len(devices) == 1):
    devices = devices[:1]
  data, fsdp, model = (len(devices), 1, 1) if name in ('auto', 'single', 'pmap') else _mesh_shape(
      parallel_config.mesh, len(devices))
  for key, size in batch_sizes.items():
    if size % (data * fsdp):
      raise ConfigError(f'{key}={size} does not divide evenly across the {data * fsdp} data-parallel '
                        f'devices; use a multiple of {data * fsdp} or --config.parallel.strategy=single')
  mesh = Mesh(np.asarray(devices).reshape(data, fsdp, model), MESH_AXES)
  if name == 'pmap':
    mesh = Mesh(np.asarray(devices), (PMAP_AXIS,))
  return Strategy(mesh=mesh, fsdp_min_size=parallel_config.fsdp_min_size, per_device=name == 'pmap')

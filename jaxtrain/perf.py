"""How fast and how big the train step is, from the compiled step itself: XLA's cost analysis (FLOPs per
step), its memory analysis (bytes per device before step 1), and model FLOPs utilization against the
peak FLOP/s of the accelerator.

MaxText compiles its step ahead of time and prints its memory before step 1; so does jaxtrain, from the
same compilation the loop then runs (`jit(...).lower(...).compile()` fills jit's own cache, so nothing is
compiled twice). MFU = FLOPs per step per device / (seconds per step x that device's peak FLOP/s).
"""

import jax

from jaxtrain.config import ConfigError

# Dense peak FLOP/s per chip, from the vendors' data sheets (no structured sparsity), by the substring of
# `device.device_kind` that names it (first match wins, so 'H100 PCIe' precedes 'H100'). At JAX's default
# matmul precision XLA runs float32 matmuls as TF32 on NVIDIA GPUs and as one bfloat16 pass on TPUs, so
# those are the float32 peaks.
PEAK_FLOPS = {
    'H100 PCIe': {'bfloat16': 756e12, 'float32': 378e12},
    'H100': {'bfloat16': 989e12, 'float32': 495e12},  # SXM.
    'H200': {'bfloat16': 989e12, 'float32': 495e12},  # H100 SXM's compute, more memory.
    'A100': {'bfloat16': 312e12, 'float32': 156e12},
    'L4': {'bfloat16': 121e12, 'float32': 60e12},
    'TPU v4': {'bfloat16': 275e12, 'float32': 275e12},
    'TPU v5 lite': {'bfloat16': 197e12, 'float32': 197e12},  # v5e.
    'TPU v5': {'bfloat16': 459e12, 'float32': 459e12},  # v5p.
    'TPU v6 lite': {'bfloat16': 918e12, 'float32': 918e12},  # v6e (Trillium).
}
GIB = 1 << 30


def peak_flops(device, dtype: str, override: float = 0.0) -> float | None:
  """Peak FLOP/s of one `device` computing in `dtype` ('float32' or 'bfloat16'): `override` when > 0
  (perf.peak_flops), else the table's; None where unknown (CPUs), and then no MFU is reported."""
  if override > 0:
    return float(override)
  kind = getattr(device, 'device_kind', '')
  return next((peaks[dtype] for name, peaks in PEAK_FLOPS.items() if name in kind), None)


def step_flops(compiled) -> float | None:
  """FLOPs of one call of a compiled step on one device (XLA's cost analysis of the partitioned module)."""
  try:
    cost = compiled.cost_analysis()
  except Exception:  # noqa: BLE001 - a backend without a cost model: report no MFU rather than fail.
    return None
  costs = cost if isinstance(cost, list | tuple) else [cost]
  flops = sum(float(c.get('flops', 0.0)) for c in costs if c)
  return flops or None


def _per_device_bytes(tree) -> int:
  """Bytes of the largest shard of each array of `tree` on one device, summed."""
  total = 0
  for leaf in jax.tree.leaves(tree):
    shape = leaf.sharding.shard_shape(leaf.shape) if hasattr(leaf, 'sharding') else leaf.shape
    size = 1
    for dim in shape:
      size *= dim
    total += size * leaf.dtype.itemsize
  return total


def memory(compiled, state) -> dict:
  """Bytes per device of the compiled train step: the state's parameters and optimizer state (their
  shards), everything the step takes and returns, its temporaries, and the total it needs at once."""
  analysis = compiled.memory_analysis()
  parts = {name: getattr(state, name) for name in ('params', 'opt_state') if hasattr(state, name)}
  # A population's members hold their states inside: the whole state is what a member count multiplies.
  figures = {name: _per_device_bytes(part) for name, part in parts.items()} or {
      'state': _per_device_bytes(state)}
  if analysis is None:  # A backend without a memory analysis.
    return figures
  figures.update(arguments=analysis.argument_size_in_bytes, outputs=analysis.output_size_in_bytes,
                 temporaries=analysis.temp_size_in_bytes, code=analysis.generated_code_size_in_bytes)
  # Donated state buffers are reused for the outputs (the alias); temporaries live during the step.
  figures['total'] = (analysis.argument_size_in_bytes + analysis.output_size_in_bytes
                      - analysis.alias_size_in_bytes + analysis.temp_size_in_bytes
                      + analysis.generated_code_size_in_bytes)
  return figures


def device_memory(device, override: int = 0) -> int | None:
  """The bytes a step may use on `device`: `override` when > 0 (perf.device_memory), else the limit the
  device reports (GPUs and TPUs; None for CPUs, which are not checked)."""
  if override > 0:
    return int(override)
  try:
    stats = device.memory_stats()
  except Exception:  # noqa: BLE001 - backends without memory statistics.
    return None
  return stats.get('bytes_limit') if stats else None


def describe(figures: dict) -> str:
  return ', '.join(f'{name} {value / GIB:.3g} GiB' for name, value in figures.items())


def check_fits(figures: dict, limit: int | None) -> None:
  """A ConfigError with the figures and the levers when the step needs more than `limit` bytes."""
  if limit is None or 'total' not in figures or figures['total'] <= limit:
    return
  raise ConfigError(
      f'the train step needs {figures["total"] / GIB:.3g} GiB per device but the device has '
      f'{limit / GIB:.3g} GiB ({describe(figures)}); lower data.batch_size, raise optim.accumulate_steps '
      '(the same batch in smaller pieces), or shard the state with parallel.mesh.fsdp > 1')

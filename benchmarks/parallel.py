"""Per-device throughput of the parallel strategies on the same model: single, pmap, mesh, mesh with fsdp.

  XLA_FLAGS=--xla_force_host_platform_device_count=2 python benchmarks/parallel.py   # simulated CPU devices
  python benchmarks/parallel.py                                                      # real GPUs

Prints one JSON object: images/s per device of each strategy's jitted train step (digits CNN, fed a chunk of
batches already on the devices), alternated over rounds because the machine is shared. On simulated CPU
devices the devices share the same cores, so the figures compare the strategies' overheads, not scaling.
"""

import argparse
import json
import pathlib
import statistics
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import numpy as np  # noqa: E402

import jaxtrain  # noqa: E402
from jaxtrain import build, data  # noqa: E402

STRATEGIES = {
    'single': {'parallel.strategy': 'single'},
    'pmap': {'parallel.strategy': 'pmap'},
    'mesh': {'parallel.strategy': 'mesh'},
    'mesh_fsdp': {'parallel.strategy': 'mesh', 'parallel.mesh.data': -1, 'parallel.mesh.fsdp': 2},
}


def images_per_sec_per_device(overrides: dict, num_steps: int, batch_size: int) -> float:
  config = jaxtrain.load_config(ROOT / 'configs' / 'digits_cnn.py',
                                {'data.batch_size': batch_size, **overrides})
  exp = build.prepare(config, None)
  stats = data.compute_stats(exp.splits.train, 10_000, tuple(config.data.normalize))
  batches = data.train_batches(exp.splits.train, stats, batch_size, 0)
  chunk = exp.strategy.place_chunk(next(data.chunks(data.iterate(batches), 16)))
  state = exp.new_state()
  state, metrics = exp.program.train_step(state, chunk, np.int32(0))  # Compiles.
  jax.block_until_ready(metrics)
  started = time.perf_counter()
  for step in range(num_steps):
    state, metrics = exp.program.train_step(state, chunk, np.int32(step % 16))
    if step % 16 == 15:  # As fit does at log steps; also keeps simulated CPU devices' collectives in step.
      jax.block_until_ready(metrics)
  jax.block_until_ready(state)
  return num_steps * batch_size / (time.perf_counter() - started) / exp.strategy.num_devices


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--quick', action='store_true')
  parser.add_argument('--batch-size', type=int, default=64)
  args = parser.parse_args()
  num_steps, rounds = (100, 1) if args.quick else (400, 3)
  fsdp_possible = jax.device_count() > 1 and jax.device_count() % 2 == 0
  names = [name for name in STRATEGIES if name != 'mesh_fsdp' or fsdp_possible]
  timings = {name: [] for name in names}
  for _ in range(rounds):
    for name in names:
      timings[name].append(images_per_sec_per_device(STRATEGIES[name], num_steps, args.batch_size))
  print(json.dumps({'devices': jax.device_count(), 'device_kind': jax.devices()[0].device_kind,
                    'batch_size': args.batch_size,
                    **{f'{name}_images_per_sec_per_device': statistics.median(values)
                       for name, values in timings.items()}}, indent=2))


if __name__ == '__main__':
  main()

"""What in-graph diagnostics cost: steady step time with diagnostics.every_steps=1 and =100 ÷ with them off.

  python benchmarks/diagnostics.py            # the default digits CNN, 3 alternated rounds
  python benchmarks/diagnostics.py --quick

Prints one JSON object. The loop's way of running them is replicated: the plain jitted step at every step,
the diagnostic variant (per-layer norms, update ratios, activation statistics) every `every_steps`, its
statistics left on the device until a fetch every 100 steps.
Targets: <= 1.10 (every step), <= 1.01 (every 100).
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
from jaxtrain.diagnostics import training  # noqa: E402


def steps_per_sec(exp, chunk, every: int, num_steps: int) -> float:
  state = exp.new_state()
  program = exp.program
  step_fn = lambda step: program.diag_step if every and step % every == 0 else program.train_step  # noqa: E731
  for step in (1, every or 1):  # Compile both variants before timing.
    state, metrics = step_fn(step)(state, chunk, np.int32(0))
  jax.block_until_ready(metrics)
  diagnostics = training.TrainingDiagnostics()
  started = time.perf_counter()
  for step in range(1, num_steps + 1):
    state, metrics = step_fn(step)(state, chunk, np.int32(step % len(chunk['label'])))
    if 'diag' in metrics:
      diagnostics.add(step, 0.0, metrics.pop('diag'))
    if step % 100 == 0:
      jax.device_get(metrics)
      diagnostics.records()
  jax.block_until_ready(state)
  return num_steps / (time.perf_counter() - started)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--quick', action='store_true')
  args = parser.parse_args()
  num_steps, rounds = (300, 1) if args.quick else (1000, 3)
  config = jaxtrain.load_config(ROOT / 'configs' / 'digits_cnn.py', {'diagnostics.every_steps': 1})
  exp = build.prepare(config, None)
  stats = data.compute_stats(exp.splits.train, 10_000, tuple(config.data.normalize))
  batches = data.train_batches(exp.splits.train, stats, config.data.batch_size, config.seed)
  chunk = exp.strategy.place_chunk(next(data.chunks(data.iterate(batches), 16)))
  timings = {0: [], 1: [], 100: []}
  for _ in range(rounds):  # Alternated, so a noisy minute on the shared machine hits every variant.
    for every in timings:
      timings[every].append(steps_per_sec(exp, chunk, every, num_steps))
  off = statistics.median(timings[0])
  print(json.dumps({
      'steps_per_sec_off': off,
      'step_time_every_1_over_off': off / statistics.median(timings[1]),
      'step_time_every_100_over_off': off / statistics.median(timings[100]),
      'per_round_steps_per_sec': timings}, indent=2))


if __name__ == '__main__':
  main()

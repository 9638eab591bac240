"""Why the test suite compiles with `JAX_DISABLE_MOST_OPTIMIZATIONS=1` (tests/conftest.py): compile time
against step time for the default CNN, with XLA's optimizations and without.

  python benchmarks/suite_compile.py [--rounds 2] [--steps 200]

Each measurement is a fresh process with no compilation cache, alternated between the two settings: the
seconds to create the state (its program compiled and run once), to compile and run the first train step,
and to run `--steps` more steps. A test trains a few dozen steps, so it pays the compilation and hardly the
steps. Prints one JSON object: per setting the medians over rounds, and the steps a run must take before the
optimized program is the cheaper one.
"""

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]

MEASURE = r'''
import json, sys, time
import jax, numpy as np
import jaxtrain
from jaxtrain import build, data
config = jaxtrain.load_config(sys.argv[1], {'data.data_dir': sys.argv[2], 'compile_cache.enabled': False})
exp = build.prepare(config, None)
stats = data.compute_stats(exp.splits.train, 10_000, tuple(config.data.normalize))
chunk = exp.strategy.place_chunk(next(data.chunks(data.iterate(
    data.train_batches(exp.splits.train, stats, config.data.batch_size, config.seed)), 16)))
t1 = time.perf_counter()
state = jax.block_until_ready(exp.new_state())
t2 = time.perf_counter()
state, metrics = exp.program.train_step(state, chunk, np.int32(0))
jax.block_until_ready(metrics)
t3 = time.perf_counter()
for i in range(int(sys.argv[3])):
  state, metrics = exp.program.train_step(state, chunk, np.int32(i % 16))
jax.block_until_ready(metrics)
steps_s = time.perf_counter() - t3
print(json.dumps({'state_s': t2 - t1, 'first_step_s': t3 - t2, 'step_ms': 1e3 * steps_s / int(sys.argv[3])}))
'''


def measure(disabled: bool, data_dir: str, steps: int) -> dict:
  env = {**os.environ, 'JAX_DISABLE_MOST_OPTIMIZATIONS': '1' if disabled else '0',
         'PYTHONPATH': str(ROOT)}
  result = subprocess.run([sys.executable, '-c', MEASURE, str(ROOT / 'configs' / 'digits_cnn.py'), data_dir,
                           str(steps)], env=env, capture_output=True, text=True, check=True)
  return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--rounds', type=int, default=2)
  parser.add_argument('--steps', type=int, default=200)
  parser.add_argument('--data-dir', default=str(pathlib.Path.home() / 'tensorflow_datasets'))
  args = parser.parse_args()
  rounds = {'optimized': [], 'disable_most_optimizations': []}
  for _ in range(args.rounds):
    for name in rounds:
      rounds[name].append(measure(name != 'optimized', args.data_dir, args.steps))
  medians = {name: {key: statistics.median(r[key] for r in runs) for key in runs[0]}
             for name, runs in rounds.items()}
  fast, slow = medians['optimized'], medians['disable_most_optimizations']
  saved_s = fast['state_s'] + fast['first_step_s'] - slow['state_s'] - slow['first_step_s']
  print(json.dumps({**medians, 'per_round': rounds,
                    'compile_saved_s': saved_s,
                    'break_even_steps': saved_s / ((slow['step_ms'] - fast['step_ms']) / 1e3)}, indent=1))


if __name__ == '__main__':
  main()

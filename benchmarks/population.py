"""A K=16 learning-rate population (one vmapped, jitted step) against 16 sequential runs of the same steps.

  python benchmarks/population.py [--steps 200] [--size 16]

Prints JSON: both wall times (compilation, data loading, evaluation and checkpoints included, as a user
sees them) and their ratio; the target is a ratio <= 0.25 with an empty and with a filled compilation
cache. So the measurement runs twice, each time in a fresh process sharing one new cache folder: `cold`
finds it empty, `warm` finds what `cold` wrote (as a user's second session does). A warm cache helps the
sequential runs more: each of them compiles the same programs again where the population compiles once.
"""

import argparse
import json
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np

import jaxtrain
from jaxtrain.experiments import population

CONFIG = pathlib.Path(__file__).resolve().parents[1] / 'configs' / 'digits_mlp.py'


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument('--steps', type=int, default=200)
  parser.add_argument('--size', type=int, default=16)
  parser.add_argument('--cache-dir', help='measure once in this process with this compilation cache folder')
  args = parser.parse_args()
  if args.cache_dir is None:
    with tempfile.TemporaryDirectory() as cache:
      command = [sys.executable, __file__, f'--steps={args.steps}', f'--size={args.size}',
                 f'--cache-dir={cache}']
      results = {state: json.loads(subprocess.run(command, check=True, capture_output=True, text=True)
                                   .stdout.splitlines()[-1]) for state in ('cold', 'warm')}
    print(json.dumps({'size': args.size, 'steps': args.steps, **{
        f'{state}_{key}': value for state, result in results.items() for key, value in result.items()},
        'target': 0.25}))
    return
  lrs = tuple(float(lr) for lr in np.geomspace(1e-4, 1e-1, args.size))
  base = {'train.num_steps': args.steps, 'train.progress_bar': False, 'train.eval_every_steps': args.steps,
          'checkpoint.every_steps': args.steps, 'train.log_every_steps': 50,
          'compile_cache.dir': args.cache_dir}
  with tempfile.TemporaryDirectory() as tmp:
    started = time.time()
    population.fit_population(jaxtrain.load_config(CONFIG, {**base, 'population.size': args.size,
                                                             'population.lr': lrs}), f'{tmp}/population')
    population_s = time.time() - started
    started = time.time()
    for i, lr in enumerate(lrs):
      jaxtrain.fit(jaxtrain.load_config(CONFIG, {**base, 'optim.lr': lr}), f'{tmp}/run{i}')
    sequential_s = time.time() - started
  print(json.dumps({'population_s': round(population_s, 2), 'sequential_s': round(sequential_s, 2),
                    'ratio': round(population_s / sequential_s, 3)}))


if __name__ == '__main__':
  main()

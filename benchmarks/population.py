"""A K=16 learning-rate population (one vmapped, jitted step) against 16 sequential runs of the same steps.

  python benchmarks/population.py [--steps 200] [--size 16]

Prints JSON: both wall times (compilation, data loading, evaluation and checkpoints included, as a user
sees them) and their ratio; the target is a ratio <= 0.25.
"""

import argparse
import json
import pathlib
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
  args = parser.parse_args()
  lrs = tuple(float(lr) for lr in np.geomspace(1e-4, 1e-1, args.size))
  base = {'train.num_steps': args.steps, 'train.progress_bar': False, 'train.eval_every_steps': args.steps,
          'checkpoint.every_steps': args.steps, 'train.log_every_steps': 50}
  with tempfile.TemporaryDirectory() as tmp:
    started = time.time()
    population.fit_population(jaxtrain.load_config(CONFIG, {**base, 'population.size': args.size,
                                                             'population.lr': lrs}), f'{tmp}/population')
    population_s = time.time() - started
    started = time.time()
    for i, lr in enumerate(lrs):
      jaxtrain.fit(jaxtrain.load_config(CONFIG, {**base, 'optim.lr': lr}), f'{tmp}/run{i}')
    sequential_s = time.time() - started
  print(json.dumps({'size': args.size, 'steps': args.steps, 'population_s': round(population_s, 2),
                    'sequential_s': round(sequential_s, 2), 'ratio': round(population_s / sequential_s, 3),
                    'target': 0.25}))


if __name__ == '__main__':
  main()

"""Training throughput of the zoo's big models on synthetic data: images/s of one jitted train step.

  python benchmarks/zoo.py             # resnet18 at CIFAR shape, resnet50 at ImageNet shape, float32 and bf16
  python benchmarks/zoo.py --quick     # fewer, smaller batches

Prints one JSON object on stdout. The step is jaxtrain's own (`steps.make_train_step`: task loss, optimizer
update, non-finite guard), fed a batch already on the device, so the figure is the model's compute, not the
input pipeline. `bf16_over_float32` > 1 means bf16 is faster (on the 2-core CPU VM it was, 1.7-1.9x: XLA's
CPU convolutions move half the bytes).
"""

import argparse
import functools
import json
import pathlib
import statistics
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from jaxtrain import config as config_lib  # noqa: E402
from jaxtrain import model as model_lib  # noqa: E402
from jaxtrain import models, optim, steps  # noqa: E402
from jaxtrain import state as state_lib  # noqa: E402

CASES = {  # name -> (config overrides, image shape, classes)
    'resnet18_cifar': ({'model.name': 'resnet18', 'model.stem': 'cifar'}, (32, 32, 3), 10),
    'resnet50_imagenet': ({'model.name': 'resnet50', 'model.stem': 'imagenet'}, (224, 224, 3), 1000),
}


def images_per_sec(overrides: dict, image_shape, num_classes: int, batch_size: int, timed: int) -> float:
  config = config_lib.defaults()
  config_lib.override(config, {'model.norm': 'batch', 'model.head_pooling': 'avg', 'optim.name': 'momentum',
                               'optim.lr': 0.1, **overrides})
  model = model_lib.wrap(models.build(config.model, num_classes))
  optimizer = optim.build(config.optim, 1000)
  example = {'image': np.zeros((1, *image_shape), np.float32)}
  state = jax.jit(functools.partial(state_lib.create, model, optimizer.tx, example))(0)
  step = jax.jit(steps.make_train_step(model, optimizer, config.optim), donate_argnums=0)
  rng = np.random.default_rng(0)
  batch = jax.device_put({'image': rng.normal(size=(batch_size, *image_shape)).astype(np.float32),
                          'label': rng.integers(0, num_classes, batch_size).astype(np.int32)})
  state, metrics = step(state, batch)  # Compiles.
  jax.block_until_ready(metrics)
  times = []
  for _ in range(timed):
    started = time.perf_counter()
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - started)
  return batch_size / statistics.median(times)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--quick', action='store_true')
  args = parser.parse_args()
  figures = {'device': str(jax.devices()[0].device_kind), 'platform': jax.default_backend()}
  for name, (overrides, shape, classes) in CASES.items():
    batch_size = (16 if args.quick else 64) if shape[0] <= 32 else (4 if args.quick else 16)
    for dtype in ('float32', 'bfloat16'):
      value = images_per_sec({**overrides, 'model.dtype': dtype}, shape, classes, batch_size,
                             2 if args.quick else 5)
      figures[f'{name}_{dtype}_images_per_sec'] = value
      print(f'{name} {dtype} batch {batch_size}: {value:.1f} images/s', file=sys.stderr)
  figures['bf16_over_float32'] = {
      name: figures[f'{name}_bfloat16_images_per_sec'] / figures[f'{name}_float32_images_per_sec']
      for name in CASES}
  print(json.dumps(figures, indent=2))


if __name__ == '__main__':
  main()

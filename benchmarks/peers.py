"""jaxtrain against its peers: PyTorch eager and Keras 3 (on JAX), the same recipe, each as users run it.

  pip install -e '.[bench]'            # torch and keras; a missing one is left out
  python benchmarks/peers.py           # 3 alternated rounds, then ResNet-18; one JSON object on stdout
  python benchmarks/peers.py --quick   # 1 round, a few ResNet-18 steps: a smoke check

1. The whole command. The recipe: configs/digits_cnn.py's CNN without BatchNorm or dropout (per stage a 3x3
   same-padded conv with bias, 32 then 64 channels, ReLU, 2x2 max pooling; flatten; dense 128, ReLU; dense 10;
   53,002 parameters; He-normal kernels), Adam at a constant 3e-3, softmax cross-entropy, batch 64, 3 epochs
   shuffled each epoch over the split jaxtrain trains on (1,293 examples: the digits' train split less the
   config's 10% validation tail); then the test accuracy (360 examples). Each contender is its own process,
   timed from start to exit: interpreter start-up, imports and compilation count, as for a user.
   * jaxtrain: the real CLI (`python -m jaxtrain.main --config configs/digits_cnn.py` and the overrides in
     RECIPE) in a fresh workdir, so it also evaluates the validation split and checkpoints every epoch, as it
     always does; it drops the partial batch (20 steps per epoch). `cold`: a fresh compilation cache folder;
     `warm`: the folder this round's cold run filled (what a user's second run gets).
   * PyTorch eager: TORCH_SCRIPT, a minimal hand-written loop (randperm batches, the partial one dropped),
     with `torch.set_num_threads(os.cpu_count())` and with one thread: on a shared CPU PyTorch's OpenMP
     threads wait for each other at every operator (torch_compare.py saw two threads at 3-45 steps/s while
     one kept 150-280).
   * Keras 3 with KERAS_BACKEND=jax: KERAS_SCRIPT, `compile`, `fit(batch_size=64, epochs=3)` and `evaluate` as
     its guides write them (fit keeps the partial batch of 13, so it compiles a step for that shape too).
   The TFDS folder is prepared once before the rounds, and the peers read the same split from an .npz written
   once, normalized like jaxtrain's (the training split's per-channel mean and std): nobody pays for data
   preparation. Rounds alternate the contenders (the machine is shared: a slow minute lands on all of them);
   medians over rounds, each round in `per_round`. The goal: `jaxtrain_cold_vs_torch` (seconds over seconds)
   <= 0.8.

2. Steady-state steps/s beyond the toy: ResNet-18 as configs/cifar10_resnet18.py builds it (CIFAR stem: 3x3
   conv, no max pooling; BasicBlocks [2, 2, 2, 2], 64..512 channels; BatchNorm; global average pool; 10
   classes), batches of 128 random 32x32x3 float32 images placed once. jaxtrain's step is fit's own program
   from `build.prepare` (SGD, Nesterov momentum 0.9 at 0.1, decoupled weight decay 5e-4 on kernels, the cosine
   schedule, the parameters' EMA at 0.999, metrics), with `data.augment=none` since PyTorch's has none.
   PyTorch's is the same network by hand (no torchvision), `SGD(nesterov=True)` with weight decay on kernels,
   an EMA by `swa_utils.AveragedModel` and a constant rate (a schedule is one scalar per step); NCHW and
   channels-last. In this process: warm-up steps once each (compilation included), then per round a window
   of `--resnet-steps` steps per contender (jaxtrain's ends with `block_until_ready`); the median window's
   steps/s. A step takes 2 to 8 s on a 2-core VM: 2 warm-up steps and 3 windows of 2 take about 3 minutes.
"""

import argparse
import contextlib
import datetime
import importlib.metadata
import importlib.util
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # Runs from a checkout; the subprocesses get the same path.

import jax  # noqa: E402
import numpy as np  # noqa: E402

import jaxtrain  # noqa: E402
from jaxtrain import build, data  # noqa: E402

DIGITS_CONFIG = ROOT / 'configs' / 'digits_cnn.py'
RESNET_CONFIG = ROOT / 'configs' / 'cifar10_resnet18.py'
RECIPE = {'data.batch_size': 64, 'optim.name': 'adam', 'optim.lr': 3e-3, 'optim.schedule': 'constant',
          'optim.warmup_steps': 0, 'model.norm': 'none', 'model.dropout': 0.0, 'train.num_epochs': 3}
ENV = {**os.environ, 'PYTHONPATH': os.pathsep.join(filter(None, [str(ROOT), os.environ.get('PYTHONPATH')]))}

TORCH_SCRIPT = r'''
import json, os, sys
import numpy as np
import torch
from torch import nn
torch.set_num_threads(int(sys.argv[2]) or os.cpu_count())
torch.manual_seed(0)
d = np.load(sys.argv[1])
images = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2).contiguous()  # NHWC -> NCHW
x, y, x_test, y_test = (images(d['x_train']), torch.from_numpy(d['y_train']).long(),
                        images(d['x_test']), torch.from_numpy(d['y_test']).long())
model = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                      nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                      nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10))
for layer in model:
  if isinstance(layer, (nn.Conv2d, nn.Linear)):
    nn.init.kaiming_normal_(layer.weight, nonlinearity='relu')
    nn.init.zeros_(layer.bias)
optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
for epoch in range(3):
  order = torch.randperm(len(x))
  for i in range(len(x) // 64):
    batch = order[64 * i:64 * (i + 1)]
    optimizer.zero_grad(set_to_none=True)
    nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
    optimizer.step()
model.eval()
with torch.no_grad():
  print(json.dumps({'test_accuracy': (model(x_test).argmax(1) == y_test).float().mean().item()}))
'''

KERAS_SCRIPT = r'''
import json, sys
import numpy as np
import keras
keras.utils.set_random_seed(0)
d = np.load(sys.argv[1])
conv = dict(padding='same', activation='relu', kernel_initializer='he_normal')
model = keras.Sequential([
    keras.Input((8, 8, 1)), keras.layers.Conv2D(32, 3, **conv), keras.layers.MaxPooling2D(2),
    keras.layers.Conv2D(64, 3, **conv), keras.layers.MaxPooling2D(2), keras.layers.Flatten(),
    keras.layers.Dense(128, activation='relu', kernel_initializer='he_normal'),
    keras.layers.Dense(10, kernel_initializer='he_normal')])
model.compile(optimizer=keras.optimizers.Adam(3e-3), metrics=['accuracy'],
              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
model.fit(d['x_train'], d['y_train'], batch_size=64, epochs=3, verbose=0)
_, accuracy = model.evaluate(d['x_test'], d['y_test'], batch_size=256, verbose=0)
print(json.dumps({'test_accuracy': float(accuracy)}))
'''


def progress(message: str) -> None:
  print(f'{time.strftime("%H:%M:%S")} peers: {message}', file=sys.stderr, flush=True)


def prepare_digits(tmp: pathlib.Path) -> tuple[pathlib.Path, dict]:
  """Prepares the digits TFDS folder (outside any timing) and writes the split jaxtrain trains on, normalized
  as jaxtrain normalizes it, to an .npz the peers read."""
  config = jaxtrain.load_config(DIGITS_CONFIG, {**RECIPE, 'data.data_dir': str(tmp / 'tfds')})
  splits = data.load(config)
  stats = data.compute_stats(splits.train, config.data.stats_max_examples, ('image',))['image']
  mean, std = np.float32(stats['mean']), np.float32(stats['std'])
  arrays = {f'{k}_{name}': v for name, split in (('train', splits.train), ('test', splits.test))
            for k, v in (('x', (split['image'].astype(np.float32) - mean) / std), ('y', split['label']))}
  np.savez(tmp / 'digits.npz', **arrays)
  return tmp / 'digits.npz', {'digits_train_examples': len(arrays['y_train']),
                              'digits_test_examples': len(arrays['y_test'])}


def timed(command: list[str], env: dict) -> tuple[float, subprocess.CompletedProcess]:
  """(seconds from start to exit, the finished process with its output) of one process, run from the
  checkout; its stderr's tail and an error if it fails. Also times benchmarks/run.py's default job."""
  started = time.perf_counter()
  result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
  wall = time.perf_counter() - started
  if result.returncode:
    sys.stderr.write(result.stderr[-4000:])
    raise RuntimeError(f'{" ".join(command)} failed with exit status {result.returncode}')
  return wall, result


def jaxtrain_cli(tmp: pathlib.Path, cache: pathlib.Path, name: str) -> dict:
  workdir = pathlib.Path(tempfile.mkdtemp(prefix=f'{name}-', dir=tmp))
  command = [sys.executable, '-m', 'jaxtrain.main', '--config', str(DIGITS_CONFIG.relative_to(ROOT)),
             '--workdir', str(workdir), f'--config.data.data_dir={tmp / "tfds"}',
             '--config.train.progress_bar=False', f'--config.compile_cache.dir={cache}',
             *(f'--config.{key}={value}' for key, value in RECIPE.items())]
  wall, _ = timed(command, ENV)
  summary = json.loads((workdir / 'summary.json').read_text())
  return {f'{name}_wall_s': wall, f'{name}_test_accuracy': summary['final']['test/accuracy'],
          f'{name}_steps': summary['steps']}


def peer_script(tmp: pathlib.Path, script: str, args: list[str], name: str, env: dict) -> dict:
  path = tmp / f'{name.split("_")[0]}_digits.py'
  path.write_text(script)
  wall, result = timed([sys.executable, str(path), *args], env)
  accuracy = json.loads(result.stdout.splitlines()[-1])['test_accuracy']
  return {f'{name}_wall_s': wall, f'{name}_test_accuracy': accuracy}


def digits_race(tmp: pathlib.Path, rounds: int, with_torch: bool, with_keras: bool) -> tuple[dict, dict]:
  """The whole-command contenders, alternated round by round: (the data's sizes, every round's figures)."""
  npz, sizes = prepare_digits(tmp)
  progress(f'digits prepared: {sizes}')
  contenders = {'jaxtrain_cold': lambda r: jaxtrain_cli(tmp, tmp / f'cache_{r}', 'jaxtrain_cold'),
                'jaxtrain_warm': lambda r: jaxtrain_cli(tmp, tmp / f'cache_{r}', 'jaxtrain_warm')}
  if with_torch:
    contenders['torch'] = lambda r: peer_script(tmp, TORCH_SCRIPT, [str(npz), '0'], 'torch', ENV)
    contenders['torch_1_thread'] = lambda r: peer_script(tmp, TORCH_SCRIPT, [str(npz), '1'], 'torch_1_thread',
                                                         ENV)
  if with_keras:
    contenders['keras'] = lambda r: peer_script(tmp, KERAS_SCRIPT, [str(npz)], 'keras',
                                                {**ENV, 'KERAS_BACKEND': 'jax'})
  per_round: dict[str, list] = {}
  for r in range(rounds):
    for name, contender in contenders.items():
      figures = contender(r)
      progress(f'round {r + 1}/{rounds} {name}: ' + ', '.join(f'{k}={v:.4g}' for k, v in figures.items()))
      for key, value in figures.items():
        per_round.setdefault(key, []).append(value)
    per_round.setdefault('load_average_1min', []).append(os.getloadavg()[0])  # Other jobs on the machine.
  return sizes, per_round


def jaxtrain_resnet(tmp: pathlib.Path, batch_size: int):
  """fit's compiled ResNet-18 step on two random batches placed once; returns `run(n)`, which does n steps."""
  config = jaxtrain.load_config(RESNET_CONFIG, {'data.augment': 'none',
                                                'compile_cache.dir': str(tmp / 'resnet_cache')})
  rng = np.random.default_rng(0)
  images = rng.standard_normal((2 * batch_size, 32, 32, 3), dtype=np.float32)
  labels = rng.integers(0, 10, 2 * batch_size).astype(np.int32)
  exp = build.prepare(config, None, data_source=data.Arrays(train={'image': images, 'label': labels},
                                                            test={'image': images, 'label': labels}))
  chunk = exp.strategy.place_chunk({'image': images.reshape(2, batch_size, 32, 32, 3),
                                    'label': labels.reshape(2, batch_size)})
  holder = [exp.new_state()]

  def run(n: int) -> None:
    for i in range(n):
      holder[0], metrics = exp.program.train_step(holder[0], chunk, np.int32(i % 2))
    jax.block_until_ready((holder[0], metrics))
  return run


def torch_resnet(batch_size: int, channels_last: bool):
  """The same ResNet-18 in PyTorch eager, with the config's optimizer; returns `run(n)`."""
  import torch
  from torch import nn
  from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

  torch.set_num_threads(os.cpu_count())

  class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
      super().__init__()
      self.branch = nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout),
                                  nn.ReLU(), nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
      nn.init.zeros_(self.branch[-1].weight)  # model.zero_init_residual
      self.shortcut = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                       if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x):
      return torch.relu(self.shortcut(x) + self.branch(x))

  torch.manual_seed(0)
  widths = [64, 64, 128, 128, 256, 256, 512, 512]  # Two BasicBlocks per stage.
  blocks = [Block(cin, cout, 2 if cout != cin else 1)
            for cin, cout in zip([64, *widths[:-1]], widths, strict=True)]
  model = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(), *blocks,
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, 10))
  image = torch.randn(batch_size, 3, 32, 32)
  label = torch.randint(0, 10, (batch_size,))
  if channels_last:
    model, image = model.to(memory_format=torch.channels_last), image.contiguous(
        memory_format=torch.channels_last)
  kernels = [p for p in model.parameters() if p.ndim > 1]
  others = [p for p in model.parameters() if p.ndim <= 1]
  optimizer = torch.optim.SGD([{'params': kernels, 'weight_decay': 5e-4}, {'params': others}], lr=0.1,
                              momentum=0.9, nesterov=True)
  ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.999))

  def run(n: int) -> None:
    for _ in range(n):
      optimizer.zero_grad(set_to_none=True)
      nn.functional.cross_entropy(model(image), label).backward()
      optimizer.step()
      ema.update_parameters(model)
  return run


def resnet_race(tmp: pathlib.Path, rounds: int, warmup: int, steps: int, with_torch: bool) -> dict:
  """Warm-up (and compilation) once per contender, then `rounds` alternated windows of `steps` steps."""
  batch_size = 128
  contenders = {'jaxtrain': jaxtrain_resnet(tmp, batch_size)}
  if with_torch:
    contenders['torch'] = torch_resnet(batch_size, channels_last=False)
    contenders['torch_channels_last'] = torch_resnet(batch_size, channels_last=True)
  for name, run in contenders.items():
    started = time.perf_counter()
    run(warmup)
    progress(f'resnet18 {name}: {warmup} warm-up steps (compilation included) took '
             f'{time.perf_counter() - started:.1f}s')
  per_round: dict[str, list] = {}
  for r in range(rounds):
    for name, run in contenders.items():
      started = time.perf_counter()
      run(steps)
      rate = steps / (time.perf_counter() - started)
      progress(f'resnet18 round {r + 1}/{rounds} {name}: {rate:.3g} steps/s')
      per_round.setdefault(f'resnet18_{name}_steps_per_sec', []).append(rate)
    per_round.setdefault('resnet18_load_average_1min', []).append(os.getloadavg()[0])
  return per_round


def ratios(figures: dict) -> dict:
  """jaxtrain's seconds over each peer's (below 1: jaxtrain is faster); ResNet-18's steps/s over torch's."""
  out = {}
  for mode in ('cold', 'warm'):
    for peer in ('torch', 'torch_1_thread', 'keras'):
      if f'{peer}_wall_s' in figures:
        out[f'jaxtrain_{mode}_vs_{peer}'] = figures[f'jaxtrain_{mode}_wall_s'] / figures[f'{peer}_wall_s']
  for peer in ('torch', 'torch_channels_last'):
    if f'resnet18_{peer}_steps_per_sec' in figures:
      out[f'resnet18_jaxtrain_vs_{peer}'] = (figures['resnet18_jaxtrain_steps_per_sec']
                                            / figures[f'resnet18_{peer}_steps_per_sec'])
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--rounds', type=int, help='alternations of the contenders (default 3; 1 with --quick)')
  parser.add_argument('--quick', action='store_true', help='one round, a few ResNet-18 steps: a smoke check')
  parser.add_argument('--skip-resnet', action='store_true', help='only the whole-command race')
  parser.add_argument('--skip-keras', action='store_true', help='no Keras contender')
  parser.add_argument('--resnet-steps', type=int, help='ResNet-18 steps per contender and round (default 2)')
  args = parser.parse_args()
  rounds = args.rounds or (1 if args.quick else 3)
  warmup = 1 if args.quick else 2  # ResNet-18 steps per contender before its first window.
  steps = args.resnet_steps or (1 if args.quick else 2)
  libraries = {name: importlib.util.find_spec(name) is not None for name in ('torch', 'keras')}
  for name, present in libraries.items():
    if not present:
      progress(f'{name} is not installed: its contenders are left out (pip install -e ".[bench]")')
  with_torch, with_keras = libraries['torch'], libraries['keras'] and not args.skip_keras
  started, load_start = time.perf_counter(), os.getloadavg()
  # TFDS prints its data preparation on stdout; stdout is kept for the one JSON object.
  with tempfile.TemporaryDirectory(prefix='jaxtrain-peers-') as tmp, contextlib.redirect_stdout(sys.stderr):
    tmp = pathlib.Path(tmp)
    sizes, per_round = digits_race(tmp, rounds, with_torch, with_keras)
    if not args.skip_resnet:
      per_round.update(resnet_race(tmp, rounds, warmup, steps, with_torch))
  figures = {k: statistics.median(v) for k, v in per_round.items()}
  versions = {'python': platform.python_version(), 'jax': jax.__version__}
  versions.update({name: importlib.metadata.version(name) for name, present in libraries.items() if present})
  print(json.dumps({
      **figures, **ratios(figures), **sizes, 'quick': args.quick, 'rounds': rounds,
      'resnet18_warmup_steps': None if args.skip_resnet else warmup,
      'resnet18_steps_per_round': None if args.skip_resnet else steps,
      'benchmark_wall_s': time.perf_counter() - started,
      'load_average_start': load_start, 'load_average_end': os.getloadavg(),
      'versions': versions, 'cpus': os.cpu_count(), 'date': datetime.date.today().isoformat(),
      'per_round': per_round}, indent=2))


if __name__ == '__main__':
  main()

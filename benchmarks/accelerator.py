"""Throughput, MFU and memory of jaxtrain's own train step for the models people scale, on an accelerator.

  python benchmarks/accelerator.py                      # all cases, one device and then every device
  python benchmarks/accelerator.py --cases resnet50 --steps 50
  python benchmarks/accelerator.py --quick              # a smoke run that fits a CPU (tiny batches)

Cases (synthetic data, generated once and placed on the devices before timing, so the figure is the
step's compute and not the input pipeline):
- resnet50: ImageNet shape 224x224x3, bfloat16 compute, SGD with momentum, batch 256 per device;
- vit_b16: ViT-B/16 at 224x224, bfloat16, AdamW, batch 128 per device;
- gpt_small: GPT-2 small (12 layers, width 768, 12 heads) on 1,024-token sequences, bfloat16, AdamW,
  batch 16 sequences per device, a 50,304-token vocabulary.

Each case is built by `jaxtrain.build.prepare`, the same path `fit` takes (the jitted chunk step, the
strategy's shardings, donation), first with `parallel.strategy=single` and then, when there is more than
one device, with `parallel.strategy=mesh` over all of them (data parallel; `--fsdp N` shards the state
too). The step is compiled ahead of time as fit does (`Trainer.analyze`), which gives XLA's FLOPs per
step and its memory analysis; the timing is the median of `--rounds` windows of `--steps` steps each.
MFU = FLOPs per step per device / (seconds per step x the device's peak, `jaxtrain.perf.PEAK_FLOPS`).
Prints one JSON object on stdout.

Anchors: NVIDIA's tuned PyTorch ResNet-50 does about 2,470 images/s on one A100 in mixed precision;
MaxText reaches about 50% MFU for Llama-2-7B on H100s.
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
from jaxtrain import build, data, perf  # noqa: E402
from jaxtrain import config as config_lib  # noqa: E402

VOCAB = 50_304  # GPT-2's 50,257 rounded up to a multiple of 64, as nanoGPT does for the matmul shapes.

# name -> (config overrides, per-device batch, example maker(rows, rng) -> {key: array}, unit).
CASES = {
    'resnet50': ({'model.name': 'resnet50', 'model.stem': 'imagenet', 'model.norm': 'batch',
                  'model.head_pooling': 'avg', 'optim.name': 'momentum', 'optim.lr': 0.1}, 256, 'images'),
    'vit_b16': ({'model.name': 'vit', 'model.patch_size': 16, 'model.width': 768, 'model.num_layers': 12,
                 'model.num_heads': 12, 'model.mlp_dim': 3072, 'optim.name': 'adamw', 'optim.lr': 1e-3},
                128, 'images'),
    'gpt_small': ({'model.name': 'gpt', 'model.inputs': ('tokens',), 'model.max_len': 1024,
                   'model.width': 768, 'model.num_layers': 12, 'model.num_heads': 12, 'model.mlp_dim': 3072,
                   'task.name': 'language_modeling', 'data.normalize': (), 'optim.name': 'adamw',
                   'optim.lr': 6e-4}, 16, 'tokens'),
}
# --quick: the same code on shapes a 2-core CPU runs in seconds.
QUICK = {
    'resnet50': ({'model.name': 'resnet18', 'model.width': 16}, 2, (64, 64)),
    'vit_b16': ({'model.width': 64, 'model.num_layers': 2, 'model.num_heads': 2, 'model.mlp_dim': 128}, 2,
                (64, 64)),
    'gpt_small': ({'model.width': 64, 'model.num_layers': 2, 'model.num_heads': 2, 'model.mlp_dim': 128,
                   'model.max_len': 128}, 2, 128),
}


def synthetic(case: str, rows: int, quick: bool) -> jaxtrain.data.Arrays:
  rng = np.random.default_rng(0)
  if CASES[case][2] == 'tokens':
    seq_len = QUICK[case][2] if quick else 1024
    tokens = rng.integers(0, VOCAB, (rows, seq_len + 1), dtype=np.int32)
    split = {'tokens': tokens[:, :-1], 'targets': tokens[:, 1:]}
    return jaxtrain.data.Arrays(train=split, test=split, num_classes=VOCAB)
  side = QUICK[case][2] if quick else (224, 224)
  split = {'image': rng.integers(0, 256, (rows, *side, 3), dtype=np.uint8),
           'label': rng.integers(0, 1000, rows, dtype=np.int32)}
  return jaxtrain.data.Arrays(train=split, test=split, num_classes=1000)


def measure(case: str, strategy: dict, args) -> dict:
  overrides, per_device, unit = CASES[case]
  quick_overrides, quick_batch, _ = QUICK[case]
  if args.quick:
    overrides, per_device = {**overrides, **quick_overrides}, quick_batch
  num_devices = jax.device_count() if strategy['parallel.strategy'] == 'mesh' else 1
  batch_size = per_device * num_devices
  config = config_lib.defaults()
  config_lib.override(config, {
      **overrides, 'model.dtype': args.dtype, 'data.batch_size': batch_size,
      'data.eval_batch_size': batch_size, 'train.num_steps': 10, 'compile_cache.enabled': False,
      'diagnostics.report': False, **strategy})
  splits = synthetic(case, 2 * batch_size, args.quick)
  exp = build.prepare(config, None, data_source=splits)
  stats = data.compute_stats(exp.splits.train, batch_size, tuple(config.data.normalize))
  batch = next(data.iterate(data.train_batches(exp.splits.train, stats, batch_size, 0)))
  chunk = exp.strategy.place_chunk({key: value[None] for key, value in batch.items()})
  state, k = exp.new_state(), np.int32(0)
  compiled = exp.program.train_step.lower(state, chunk, k).compile()  # As Trainer.analyze does.
  memory = perf.memory(compiled, state)
  flops = perf.step_flops(compiled)
  state, metrics = exp.program.train_step(state, chunk, k)  # The first call: warm-up.
  jax.block_until_ready(metrics)
  windows = []
  for _ in range(args.rounds):
    started = time.perf_counter()
    for _ in range(args.steps):
      state, metrics = exp.program.train_step(state, chunk, k)
    jax.block_until_ready((state, metrics))
    windows.append((time.perf_counter() - started) / args.steps)
  step_s = statistics.median(windows)
  per_example = batch['tokens'].shape[1] if unit == 'tokens' else 1
  peak = perf.peak_flops(jax.devices()[0], args.dtype)
  figures = {'devices': num_devices, 'batch_size': batch_size, 'step_s': step_s,
             f'{unit}_per_sec': batch_size * per_example / step_s,
             f'{unit}_per_sec_per_device': batch_size * per_example / step_s / num_devices,
             'step_tflops_per_device': flops / 1e12 if flops else None,
             'mfu': flops / (step_s * peak) if flops and peak else None,
             'memory_gib': {name: value / perf.GIB for name, value in memory.items()}}
  print(f'{case} on {num_devices} device(s): ' + ', '.join(
      f'{key} {value:.4g}' for key, value in figures.items() if isinstance(value, float)), file=sys.stderr)
  return figures


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--cases', nargs='+', default=list(CASES), choices=list(CASES))
  parser.add_argument('--dtype', default='bfloat16', choices=['bfloat16', 'float32'])
  parser.add_argument('--steps', type=int, default=20, help='steps per timed window')
  parser.add_argument('--rounds', type=int, default=3, help='timed windows; the median is reported')
  parser.add_argument('--fsdp', type=int, default=1, help='parallel.mesh.fsdp of the all-device run')
  parser.add_argument('--quick', action='store_true')
  args = parser.parse_args()
  if args.quick:
    args.steps, args.rounds = min(args.steps, 2), min(args.rounds, 1)
  strategies = {'one_device': {'parallel.strategy': 'single'}}
  if jax.device_count() > 1:
    strategies['all_devices'] = {'parallel.strategy': 'mesh', 'parallel.mesh.data': -1,
                                 'parallel.mesh.fsdp': args.fsdp}
  results = {'device_kind': jax.devices()[0].device_kind, 'platform': jax.default_backend(),
             'device_count': jax.device_count(), 'dtype': args.dtype, 'quick': args.quick,
             'peak_flops': perf.peak_flops(jax.devices()[0], args.dtype)}
  for case in args.cases:
    results[case] = {name: measure(case, strategy, args) for name, strategy in strategies.items()}
  print(json.dumps(results, indent=2))


if __name__ == '__main__':
  main()

"""Streamed input: the loader's speed per worker count, the share of training spent waiting for it, and the
peak memory of a run on a data set larger than that memory.

  python benchmarks/input.py                 # About 4 minutes on 2 CPU cores; writes ~4.3 GB under --tmp.
  python benchmarks/input.py --size-gb 0.5   # A smaller data set for the memory figure.

Prints one JSON object. Three measurements, each on ArrayRecord files it writes first:
1. `loader_examples_per_s_w<N>`: batches of 128 from a CIFAR-size set (50,000 JPEG-encoded 32x32x3 images,
   decoded on the host) through `data.train_batches` and `data.iterate(workers=N)`, nothing else running.
2. `input_wait_share_w<N>`: the same data streamed to fit's compiled step (CNN, batch 128,
   data.augment=crop_flip) by fit's own input path (input_wait.py's replica): the share of the wall time
   the loop is blocked waiting for its next batch, with N workers. Target <= 0.02. And
   `streamed_vs_in_memory`: the CLI's steady steps/s streamed with 2 workers over the same run with the
   decoded arrays in memory; on a 2-core machine the decoding shares the cores with the step, so this
   ratio counts that contention, which a blocked-time figure does not.
3. `peak_rss_gb`: the peak resident memory of a CLI run of the MLP (its process, and its largest worker
   process) streaming a generated data set of `--size-gb` decoded (32x32x3 raw images), against the data
   set's size. Target: under 2 GB for 4 GB of data.
"""

import argparse
import functools
import io
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import input_wait as wait_replica  # noqa: E402  (this folder)

import jaxtrain  # noqa: E402  (after the path: the checkout, not an installed copy)
from jaxtrain import build, data  # noqa: E402
from jaxtrain.data import records  # noqa: E402


def _jpeg(image: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format='JPEG', quality=90)
  return buffer.getvalue()


def write_cifar_size(folder: pathlib.Path, count: int) -> None:
  """`count` JPEG images of 32x32x3 with 10 labels (smooth random patterns, so they compress like photos)."""
  rng = np.random.default_rng(0)
  def examples(n, offset):
    for i in range(n):
      small = rng.integers(0, 255, (4, 4, 3), np.uint8)
      image = np.asarray(Image.fromarray(small).resize((32, 32), Image.Resampling.BILINEAR))
      yield {'image': _jpeg(image), 'label': np.int32((i + offset) % 10)}
  records.write(folder / 'train.array_record', examples(count, 0))
  records.write(folder / 'validation.array_record', examples(count // 10, 1))


IMAGE_BYTES = 32 * 32 * 3


def write_raw(folder: pathlib.Path, size_gb: float) -> int:
  """Raw 32x32x3 uint8 images (3 KB each) adding up to `size_gb` decoded; returns the number written."""
  count = int(size_gb * 1e9 // IMAGE_BYTES)
  rng = np.random.default_rng(1)
  pattern = rng.integers(0, 255, (1024, 32, 32, 3), np.uint8)  # Recycled: writing, not drawing, is the cost.
  records.write(folder / 'train.array_record',
                ({'image': pattern[i % 1024], 'label': np.int32(i % 10)} for i in range(count)))
  records.write(folder / 'validation.array_record',
                ({'image': pattern[i], 'label': np.int32(i % 10)} for i in range(512)))
  return count


def loader_speed(folder: pathlib.Path, workers: int, num_batches: int = 60, batch_size: int = 128) -> float:
  """Examples per second out of the train pipeline (after its first batch, so worker start-up is out)."""
  split = records.Stream.of_files([folder / 'train.array_record'])
  stats = data.compute_stats(split, 1000)
  batches = data.iterate(data.train_batches(split, stats, batch_size, seed=0), workers=workers)
  next(batches)
  started = time.perf_counter()
  for _ in range(num_batches):
    next(batches)
  elapsed = time.perf_counter() - started
  batches.close()
  return num_batches * batch_size / elapsed


def cli(folder: pathlib.Path, workdir: pathlib.Path, *overrides: str) -> subprocess.CompletedProcess:
  command = [sys.executable, '-m', 'jaxtrain.main', '--config', 'configs/digits_cnn.py',
             f'--workdir={workdir}', f'--config.data.name=array_record:{folder}',
             '--config.train.progress_bar=False', '--config.compile_cache.enabled=False', *overrides]
  result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
  if result.returncode:
    raise RuntimeError(f'{" ".join(command)} failed:\n{result.stderr[-3000:]}')
  return result


def steady_steps_per_s(workdir: pathlib.Path) -> float:
  """Mean train/steps_per_sec over the log windows after the first (which includes compilation)."""
  rates = [r['train/steps_per_sec'] for r in map(json.loads, (workdir / 'metrics.jsonl').open())
           if 'train/steps_per_sec' in r][1:]
  return float(np.mean(rates))


class StreamBench:
  """What input_wait.py's replica reads: the config, the streamed train batches and fit's compiled step."""

  def __init__(self, folder: pathlib.Path, num_steps: int):
    self.num_steps = num_steps
    self.config = jaxtrain.load_config(ROOT / 'configs/digits_cnn.py', {
        'data.name': f'array_record:{folder}', 'data.in_memory': 'false', 'data.augment': 'crop_flip',
        'data.batch_size': 128, 'compile_cache.enabled': False})
    exp = build.prepare(self.config, None)
    stats = data.compute_stats(exp.splits.train, 2000)
    self.train_data = data.train_batches(exp.splits.train, stats, 128, self.config.seed)
    self._program = (exp.strategy, functools.partial(exp.program.create_state, self.config.seed),
                     exp.program.train_step)

  def jaxtrain_program(self):
    return self._program


def input_wait(folder: pathlib.Path, tmp: pathlib.Path, steps: int) -> dict:
  bench = StreamBench(folder, steps)
  figures = {}
  for workers in (0, 2):
    share = wait_replica.input_wait(bench, workers)['input_wait_share']
    figures[f'input_wait_share_w{workers}'] = share
    print(f'input wait with {workers} workers: {share:.3%}', file=sys.stderr)
  common = ['--config.data.augment=crop_flip', '--config.data.batch_size=128',
            f'--config.train.num_steps={steps}', '--config.train.log_every_steps=50',
            f'--config.train.eval_every_steps={steps}', f'--config.checkpoint.every_steps={steps}']
  cli(folder, tmp / 'memory', *common, '--config.data.in_memory=true')
  cli(folder, tmp / 'streamed', *common, '--config.data.in_memory=false', '--config.data.workers=2')
  memory, streamed = steady_steps_per_s(tmp / 'memory'), steady_steps_per_s(tmp / 'streamed')
  return {**figures, 'train_steps_per_s_in_memory': memory, 'train_steps_per_s_streamed_w2': streamed,
          'streamed_vs_in_memory': streamed / memory}


def peak_rss(folder: pathlib.Path, tmp: pathlib.Path, size_gb: float, count: int) -> dict:
  """The CLI streaming the raw data set with 2 workers; its peak RSS from /usr/bin/time-like accounting:
  the process's own (its log line) and the largest of its children (getrusage of reaped children)."""
  log = tmp / 'rss.json'
  code = ('import json, resource, runpy, sys; sys.argv = sys.argv[1:]\n'
          'try:\n  runpy.run_module("jaxtrain.main", run_name="__main__")\n'
          'finally:\n'
          f'  json.dump({{"self": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, '
          f'"children": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}}, open({str(log)!r}, "w"))\n')
  command = [sys.executable, '-c', code, 'jaxtrain.main', '--config', 'configs/digits_mlp.py',
             f'--workdir={tmp / "big"}', f'--config.data.name=array_record:{folder}',
             '--config.data.in_memory=auto', '--config.data.workers=2', '--config.data.batch_size=128',
             '--config.train.num_steps=300', '--config.train.eval_every_steps=300',
             '--config.checkpoint.every_steps=300', '--config.train.progress_bar=False',
             '--config.compile_cache.enabled=False', '--config.data.stats_max_examples=2000']
  started = time.perf_counter()
  result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
  if result.returncode and not log.exists():
    raise RuntimeError(result.stderr[-3000:])
  rss = json.loads(log.read_text())
  streamed = bool(re.search(r'Streaming .* from disk', result.stderr))
  return {'dataset_gb_decoded': count * IMAGE_BYTES / 1e9, 'dataset_examples': count, 'streamed': streamed,
          'peak_rss_gb': rss['self'] / 1e6, 'peak_rss_worker_gb': rss['children'] / 1e6,
          'rss_run_s': time.perf_counter() - started}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--size-gb', type=float, default=4.0, help='decoded size of the memory test data set')
  parser.add_argument('--examples', type=int, default=50_000, help='CIFAR-size training examples')
  parser.add_argument('--steps', type=int, default=300, help='train steps of the input-wait runs')
  parser.add_argument('--tmp', default=None, help='where the data sets are written (deleted at the end)')
  args = parser.parse_args()
  tmp = pathlib.Path(tempfile.mkdtemp(dir=args.tmp))
  figures = {'cpu_count': os.cpu_count()}
  try:
    cifar = tmp / 'cifar_size'
    cifar.mkdir()
    write_cifar_size(cifar, args.examples)
    for workers in (0, 1, 2, 4):
      figures[f'loader_examples_per_s_w{workers}'] = loader_speed(cifar, workers)
      print(f'workers={workers}: {figures[f"loader_examples_per_s_w{workers}"]:.0f} examples/s',
            file=sys.stderr)
    figures.update(input_wait(cifar, tmp, args.steps))
    big = tmp / 'big_data'
    big.mkdir()
    count = write_raw(big, args.size_gb)
    figures.update(peak_rss(big, tmp, args.size_gb, count))
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  print(json.dumps(figures, indent=2))


if __name__ == '__main__':
  main()

"""Grain pipelines: normalization with training-split statistics, per-epoch shuffles, padded eval batches.

The train pipeline is a random-access `grain.MapDataset` whose item `i` is the batch of optimizer step `i`:
the order is a pure function of (seed, epoch) and resuming at step `s` is slicing at `s`, so the data
position never has to be guessed. Eval batches are padded to a fixed size with a `mask`, so every example
counts exactly once and the eval step compiles once.
"""

import json
import pathlib
import queue
import threading
from collections.abc import Callable, Iterator

import grain
import numpy as np

STATS_FILE = 'normalization.json'


def compute_stats(source, max_examples: int) -> dict:
  """Per-channel mean and std of the images of `source` (the training split, never eval or test)."""
  count = min(len(source), max_examples)
  images = np.stack([source[i]['image'] for i in range(count)]).astype(np.float64)
  axes = tuple(range(images.ndim - 1))
  std = images.std(axis=axes)
  return {'mean': images.mean(axis=axes).tolist(),
          'std': np.where(std > 0, std, 1.0).tolist(),
          'num_examples': count}


def load_or_compute_stats(source, workdir: pathlib.Path, max_examples: int) -> dict:
  """Statistics stored in the workdir win, so eval and resumed runs normalize exactly like training did."""
  path = workdir / STATS_FILE
  if path.exists():
    return json.loads(path.read_text())
  stats = compute_stats(source, max_examples)
  path.write_text(json.dumps(stats, indent=2))
  return stats


def _normalizer(stats: dict) -> Callable[[dict], dict]:
  mean = np.asarray(stats['mean'], np.float32)
  std = np.asarray(stats['std'], np.float32)

  def normalize(batch: dict) -> dict:
    return {'image': (batch['image'].astype(np.float32) - mean) / std,
            'label': batch['label'].astype(np.int32)}
  return normalize


def train_batches(source, stats: dict, batch_size: int, seed: int) -> grain.MapDataset:
  """Endless random-access stream of train batches; item `i` feeds step `i`.

  Grain reshuffles every epoch (the shuffle's index space repeats with a new permutation per epoch) and
  drops each epoch's remainder, so every step sees a full batch.
  """
  return (grain.MapDataset.source(source)
          .shuffle(seed=seed)
          .batch(batch_size, drop_remainder=True)
          .map(_normalizer(stats))
          .repeat(None))


def _pad(batch_size: int) -> Callable[[dict], dict]:
  def pad(batch: dict) -> dict:
    size = len(batch['label'])
    padded = {k: np.pad(v, [(0, batch_size - size)] + [(0, 0)] * (v.ndim - 1)) for k, v in batch.items()}
    padded['mask'] = np.arange(batch_size) < size
    return padded
  return pad


def eval_batches(source, stats: dict, batch_size: int) -> grain.MapDataset:
  """Every example once, in order, in batches of exactly `batch_size` with a `mask` of real examples."""
  return (grain.MapDataset.source(source)
          .batch(batch_size, drop_remainder=False)
          .map(_normalizer(stats))
          .map(_pad(batch_size)))


def iterate(dataset: grain.MapDataset, start: int = 0) -> Iterator[dict]:
  """Iterates from item `start`, reading ahead on host threads."""
  return iter(dataset[start:].to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=4)))


def prefetch(batches: Iterator[dict], place: Callable[[dict], dict], size: int) -> Iterator:
  """Places the next `size` batches on the devices from a background thread while the step runs.

  `size=0` places batches in the caller's thread. An exception in the producer is re-raised here.
  """
  if size == 0:
    yield from map(place, batches)
    return
  buffer = queue.Queue(maxsize=size)
  done = object()
  stop = threading.Event()

  def produce():
    try:
      for batch in batches:
        if stop.is_set():
          return
        buffer.put(place(batch))
      buffer.put(done)
    except BaseException as e:  # Handed to the consumer, which raises it.
      buffer.put(e)

  threading.Thread(target=produce, daemon=True).start()
  try:
    while (item := buffer.get()) is not done:
      if isinstance(item, BaseException):
        raise item
      yield item
  finally:
    stop.set()
    while not buffer.empty():  # Unblock a producer waiting on a full queue.
      buffer.get_nowait()

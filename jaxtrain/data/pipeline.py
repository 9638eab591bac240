"""Grain pipelines over splits in memory or on disk: training-split normalization, per-epoch global
shuffles, padded eval, worker processes.

A split is a dict of arrays (decoded once, `sources.load`) or a `records.Stream` that decodes the rows of
each batch on demand; `gather` reads either. The train pipeline is a random-access `grain.MapDataset` whose
item `i` is the batch of optimizer step `i`: its example indices come from a global shuffle of the split,
drawn per epoch from (seed, epoch), so resuming at step `s` is slicing at `s` and the data position
never has to be guessed, with or without worker processes (`data.workers`: Grain's `mp_prefetch`, whose
worker `w` makes items w, w + W, ... and whose output keeps the order). Eval batches are padded to a fixed
size with a `mask`, so every example counts once and eval compiles once.

Why batches as items rather than Grain's per-example `shuffle().batch()`: on a CPU host the per-example
chain costs 1-4 ms of Python per batch of 32 (more than a train step of the default CNN; see
benchmarks/README.md), while a batch's indices and one fancy-indexed gather cost a fraction of that.
"""

import ctypes
import json
import os
import pathlib
import queue
import signal
import sys
import threading
from collections.abc import Callable, Iterator

import grain
import numpy as np
from absl import flags

from jaxtrain.data import records

STATS_FILE = 'normalization.json'


def compute_stats(split: dict, max_examples: int, keys=('image',)) -> dict:
  """Per-channel (last axis) mean and std of each of `keys` in a split: the training split, never eval or
  test. Only these keys are normalized (`data.normalize`): token ids and tabular features pass as they are."""
  stats = {}
  for key in keys:
    if key not in split:  # 'image', the default, on data without images (build.prepare checks others).
      continue
    values = split[key][:max_examples].astype(np.float64)
    axes = tuple(range(values.ndim - 1)) or (0,)
    std = values.std(axis=axes)
    stats[key] = {'mean': np.atleast_1d(values.mean(axis=axes)).tolist(),
                  'std': np.atleast_1d(np.where(std > 0, std, 1.0)).tolist()}
  return {**stats, 'num_examples': min(length(split), max_examples)}


def load_or_compute_stats(split: dict, workdir: pathlib.Path, max_examples: int, write: bool = True,
                          keys=('image',)) -> dict:
  """Statistics stored in the workdir win, so eval and resumed runs normalize exactly like training did.
  Only one process of a multi-process run writes them (`write`); the others compute the same numbers."""
  path = workdir / STATS_FILE
  if path.exists():
    stats = json.loads(path.read_text())
    if 'mean' in stats:  # Written before normalization was per key: it was the images'.
      return {'image': {'mean': stats['mean'], 'std': stats['std']}, 'num_examples': stats['num_examples']}
    return stats
  stats = compute_stats(split, max_examples, keys)
  if write:
    path.write_text(json.dumps(stats, indent=2))
  return stats


def gather(split, indices) -> dict:
  """The examples at `indices` of a split in memory (a fancy-indexed copy) or on disk (read and decoded)."""
  if isinstance(split, records.Stream):
    return split.gather(indices)
  return {key: value[indices] for key, value in split.items()}


def length(split: dict) -> int:
  """The number of examples of a split (every array has one row per example)."""
  return len(next(iter(split.values())))


def device_dtype(values: np.ndarray) -> np.dtype:
  """The dtype an array travels to the device with: JAX's 32-bit defaults, so 64-bit NumPy arrays become
  int32/float32; integers stay integers (token ids for nn.Embed), and small ones (uint8 pixels) keep their
  width."""
  if np.issubdtype(values.dtype, np.floating):
    return np.dtype(np.float32)
  if values.dtype.itemsize > 4 and np.issubdtype(values.dtype, np.integer):
    return np.dtype(np.int32)
  return values.dtype


def _normalizer(stats: dict) -> Callable[[dict], dict]:
  """Normalizes the keys `stats` has to float32 with their training-split mean and std; casts the rest
  with `device_dtype`."""
  moments = {key: (np.asarray(value['mean'], np.float32), np.asarray(value['std'], np.float32))
             for key, value in stats.items() if isinstance(value, dict)}

  def normalize(batch: dict) -> dict:
    out = {}
    for key, values in batch.items():
      if key in moments:
        mean, std = moments[key]
        out[key] = (values.astype(np.float32) - mean) / std
      else:
        out[key] = values.astype(device_dtype(values), copy=False)
    return out
  return normalize


def _rows(size: int, shard: tuple[int, int]) -> slice:
  """Process `index` of `count` reads rows [index * size / count, (index + 1) * size / count) of a batch."""
  index, count = shard
  return slice(index * size // count, (index + 1) * size // count)


class _EpochOrder:
  """Epoch e's order of the examples: one vectorised permutation drawn from (seed, e), the latest two kept.

  Why not Grain's index shuffle (`grain.experimental.index_shuffle`, one call per index, which holds no
  permutation): measured at 3-16 us per index on a CPU host, it cost 1.9 ms per batch of 64, as much as a
  whole train step of the default CNN, against 0.3 ms per epoch for the permutation. The permutation holds
  8 bytes per example (10 MB for ImageNet), nothing next to the examples themselves. A class, not a
  closure over a cache, so Grain can send it to worker processes.
  """

  def __init__(self, seed: int, num_examples: int):
    self._seed, self._num_examples, self._cache = seed, num_examples, {}

  def __call__(self, epoch: int) -> np.ndarray:
    if epoch not in self._cache:
      if len(self._cache) >= 2:
        self._cache.pop(min(self._cache))
      self._cache[epoch] = np.random.default_rng([self._seed, epoch]).permutation(self._num_examples)
    return self._cache[epoch]


def train_batches(split: dict, stats: dict, batch_size: int, seed: int,
                  shard: tuple[int, int] = (0, 1)) -> grain.MapDataset:
  """Endless random-access stream of train batches; item `i` feeds step `i`.

  Every epoch is a new permutation drawn from (seed, epoch); each epoch's remainder is dropped, so every
  step sees a full batch and no example repeats within an epoch. With several processes, `shard=(index,
  count)` makes a process gather and normalize only its rows of each global batch.
  """
  num_examples = length(split)
  steps_per_epoch = num_examples // batch_size
  normalize = _normalizer(stats)
  order = _EpochOrder(seed, num_examples)

  def batch(step: int) -> dict:
    epoch, position = divmod(step, steps_per_epoch)
    indices = order(epoch)[position * batch_size:(position + 1) * batch_size][_rows(batch_size, shard)]
    return normalize(gather(split, indices))

  return grain.MapDataset.range(sys.maxsize).map(batch)


# A chunk of consecutive train batches is moved to the device in one transfer of about this size.
_CHUNK_BYTES = 4 << 20
_MAX_CHUNK_STEPS = 16


def chunk_steps(batch: dict) -> int:
  """How many steps' batches to move per transfer: one `device_put` costs ~80 us on a CPU host whatever
  its size, more than the copy of a small batch, so small batches travel in chunks; large ones alone."""
  size = sum(value.nbytes for value in batch.values())
  return int(np.clip(_CHUNK_BYTES // max(size, 1), 1, _MAX_CHUNK_STEPS))


def stream_state(step: int) -> dict:
  """The state of the train stream when `step` steps are done (checkpointed with the state), in the form of
  Grain's own iterator state.

  The stream is step-indexed, so the state is a pure function of the step, the same with any number of
  worker processes (whose own states would tie a checkpoint to that number); it is still saved, so a
  checkpoint says where its data stands without knowing how the loop counts.
  """
  return {'next_index': step}


def train_iterator(batches: grain.MapDataset, state: dict, workers: int = 0) -> Iterator[dict]:
  """Iterates the train stream from a Grain iterator state (`stream_state`, or one read from a checkpoint),
  with `workers` processes making the batches."""
  return iterate(batches, state['next_index'], workers)


def chunks(batches: Iterator[dict], steps: int) -> Iterator[dict]:
  """Stacks each `steps` consecutive batches along a new leading axis, to move them in one transfer."""
  try:
    while True:
      items = [next(batches) for _ in range(steps)]
      yield {key: np.stack([item[key] for item in items]) for key in items[0]}
  finally:
    _close(batches)


def _close(iterator: Iterator) -> None:
  """Closes a generator (or a Grain iterator with worker processes); other iterators need nothing."""
  if hasattr(iterator, 'close'):
    iterator.close()


def eval_batches(split: dict, stats: dict, batch_size: int,
                 shard: tuple[int, int] = (0, 1)) -> grain.MapDataset:
  """Every example once, in order, in batches of exactly `batch_size` with a `mask` of real examples (this
  process's rows of them with `shard`, as in `train_batches`)."""
  num_examples = length(split)
  normalize = _normalizer(stats)

  def batch(index: int) -> dict:
    chunk = normalize(gather(split, np.arange(index * batch_size, min((index + 1) * batch_size,
                                                                       num_examples))))
    size = length(chunk)
    padded = {k: np.pad(v, [(0, batch_size - size)] + [(0, 0)] * (v.ndim - 1)) for k, v in chunk.items()}
    padded['mask'] = np.arange(batch_size) < size
    return {k: v[_rows(batch_size, shard)] for k, v in padded.items()}

  return grain.MapDataset.range(-(-num_examples // batch_size)).map(batch)


def workers(split, requested: int) -> int:
  """Worker processes for a split's batches (`data.workers`): only a streamed split uses them; gathering
  from memory costs less than sending the arrays to other processes."""
  return requested if isinstance(split, records.Stream) else 0


# Batches each worker makes ahead of the one being consumed: bounded, so memory does not grow with the data.
_WORKER_BUFFER = 2
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _end_with_parent(worker_index: int, worker_count: int) -> None:
  """Runs first in each worker: the worker is killed when the process that started it ends, even by
  kill -9 (which gives no chance to stop it), instead of living on as an orphan holding its memory."""
  del worker_index, worker_count
  if sys.platform.startswith('linux'):
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:  # The parent died before prctl took effect.
      os._exit(0)


def iterate(dataset: grain.MapDataset, start: int = 0, workers: int = 0) -> Iterator[dict]:
  """Iterates from item `start`, in this process or in `workers` Grain worker processes (for decoding that
  costs more than a gather from memory: JPEGs, resizing). Close the generator to stop the workers."""
  items = dataset[start:].to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
  if workers:
    if not flags.FLAGS.is_parsed():  # Grain's workers read absl flags; a notebook or test never parses them.
      flags.FLAGS.mark_as_parsed()
    items = items.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers,
                                                           per_worker_buffer_size=_WORKER_BUFFER),
                              worker_init_fn=_end_with_parent)
  iterator = iter(items)
  try:
    yield from iterator
  finally:
    _close(iterator)


def prefetch(batches: Iterator[dict], place: Callable[[dict], dict], size: int) -> Iterator:
  """Places the next `size` batches on the devices from a background thread while the step runs.

  `size=0` places batches in the caller's thread. An exception in the producer is re-raised here. Close
  the returned generator when done: that stops and joins the producer, which must not be inside a JAX
  call when the interpreter exits (daemon threads are killed mid-call, and XLA aborts the process).
  """
  if size == 0:
    try:
      yield from map(place, batches)
    finally:
      _close(batches)
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
    finally:
      _close(batches)  # Stops the data workers, from the thread that iterated them.

  producer = threading.Thread(target=produce, daemon=True)
  producer.start()
  try:
    while (item := buffer.get()) is not done:
      if isinstance(item, BaseException):
        raise item
      yield item
  finally:
    stop.set()
    while producer.is_alive():  # Free queue slots until the producer sees `stop` and returns.
      try:
        buffer.get(timeout=0.1)
      except queue.Empty:
        pass

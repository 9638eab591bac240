"""How much of training time the loop waits for its input, on a replica of fit's input path.

Called by benchmarks/run.py (figures `input_wait_*`); benchmarks/README.md explains the method. fit is not
instrumented: the replica builds the stream exactly as `engine.Trainer` does (`data.train_iterator` from a
stream state, `data.chunks` of `data.chunk_steps` batches, `data.prefetch` placing them from a background
thread) and feeds fit's own compiled step; the clock runs around each `next(chunks)`, the only place where
the loop can wait for data.

Dispatch is asynchronous, so the loop is usually several steps ahead of the computation and a wait does
not necessarily leave the device idle. Each wait is therefore also classified by whether the last step
dispatched had finished: already before the wait (the device was idle for all of it), only during it (idle
for part of it), or not even after it (the device was busy throughout: the wait cost nothing).
"""

import time

import jax
import numpy as np

from jaxtrain import data

WARMUP_STEPS = 50


def input_wait(bench, workers: int = 0) -> dict:
  """Over `bench.num_steps` steps (after compilation and a warm-up), as shares of the wall time: the time
  blocked in `next(chunks)`, and the part of it the device was idle for (lower and upper bound).
  `bench` is a benchmarks/run.py `Bench` (or anything with its `config`, `num_steps`, `train_data` and
  `jaxtrain_program()`); `workers` Grain processes make the batches, as data.workers does in fit."""
  strategy, new_state, train_step = bench.jaxtrain_program()
  per_chunk = data.chunk_steps(bench.train_data[0])
  stream = data.train_iterator(bench.train_data, data.stream_state(0), workers)
  chunks = data.prefetch(data.chunks(stream, per_chunk), strategy.place_chunk, bench.config.data.prefetch)
  state, metrics, chunk, in_chunk = new_state(), None, None, per_chunk
  waited = idle_all = idle_part = 0.0
  try:
    for step in range(WARMUP_STEPS + bench.num_steps):
      if step == WARMUP_STEPS:
        jax.block_until_ready(state)
        started, waited, idle_all, idle_part = time.perf_counter(), 0.0, 0.0, 0.0
      if in_chunk == per_chunk:
        last = None if metrics is None else jax.tree.leaves(metrics)[0]  # Outputs of a step finish together.
        done_before = last is None or last.is_ready()
        asked = time.perf_counter()
        chunk, in_chunk = next(chunks), 0
        wait = time.perf_counter() - asked
        waited += wait
        if done_before:
          idle_all += wait
        elif last.is_ready():
          idle_part += wait
      state, metrics = train_step(state, chunk, np.int32(in_chunk))
      in_chunk += 1
    jax.block_until_ready((state, metrics))
    wall = time.perf_counter() - started
  finally:
    chunks.close()
  return {'input_wait_share': waited / wall, 'input_wait_us_per_step': 1e6 * waited / bench.num_steps,
          'input_idle_share_min': idle_all / wall, 'input_idle_share_max': (idle_all + idle_part) / wall}

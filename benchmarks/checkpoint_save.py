"""How long an async checkpoint save blocks the loop, against a blocking save of the same state.

  python benchmarks/checkpoint_save.py           # also part of `python benchmarks/run.py`

Prints one JSON object. Target: checkpoint_async_over_blocking <= 0.2.
"""

import functools
import json
import pathlib
import statistics
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import numpy as np  # noqa: E402

import jaxtrain  # noqa: E402
from jaxtrain import checkpoint, data, models, optim  # noqa: E402
from jaxtrain import model as model_lib  # noqa: E402
from jaxtrain import state as state_lib  # noqa: E402


def progress(message: str, *args) -> None:
  print(message % args, file=sys.stderr)


def checkpoint_benchmark(tmp: pathlib.Path, quick: bool) -> dict:
  """How long an async save blocks the loop ÷ how long a blocking save of the same state takes.

  The state is an MLP's (about 8.5M parameters, with Adam's two moments about 100 MB), big enough for the
  write to dominate. The async figure is what `fit` waits for: `save` returning (the arrays copied off the
  devices); the blocking one is `save` plus waiting for the commit.
  """
  config = jaxtrain.load_config(ROOT / 'configs' / 'digits_mlp.py',
                                {'model.features': (2048, 2048, 2048), 'checkpoint.keep': 2})
  model = model_lib.wrap(models.build(config.model, 10))
  tx = optim.build(config.optim, 100).tx
  example = {'image': np.zeros((1, 8, 8, 1), np.float32)}
  state = jax.jit(functools.partial(state_lib.create, model, tx, example))(0)
  ckpt = checkpoint.Checkpointer(tmp / 'checkpoint-bench', config.checkpoint)
  async_s, blocking_s = [], []
  for round_ in range(2 if quick else 4):
    for timings, wait_inside in ((async_s, False), (blocking_s, True)):
      state = state.replace(step=state.step + 1)
      started = time.perf_counter()
      step = int(state.step)
      ckpt.save(step, state, data.stream_state(step), {})
      if wait_inside:
        ckpt.wait()
      timings.append(time.perf_counter() - started)
      ckpt.wait()
    progress('checkpoint round %d: async save blocked %.3fs, blocking save %.3fs', round_,
             async_s[-1], blocking_s[-1])
  ckpt.close()
  return {'checkpoint_state_mb': sum(x.nbytes for x in jax.tree.leaves(state)) / 2**20,
          'checkpoint_async_blocked_s': statistics.median(async_s),
          'checkpoint_blocking_save_s': statistics.median(blocking_s),
          'checkpoint_async_over_blocking': statistics.median(async_s) / statistics.median(blocking_s)}


if __name__ == '__main__':
  with tempfile.TemporaryDirectory() as tmp:
    print(json.dumps(checkpoint_benchmark(pathlib.Path(tmp), '--quick' in sys.argv), indent=2))

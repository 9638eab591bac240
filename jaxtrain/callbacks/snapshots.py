"""Snapshot ensembles (note 003): with the `sgdr` schedule, the state at the end of each cosine cycle (a
low-LR point of a different basin) is kept in workdir/snapshots/ and averaged at eval
(experiments/ensemble.py).

Snapshots have their own checkpoint folder whose retention keeps every cycle, so the run's `checkpoint.keep`
and best-k retention never delete one.
"""

import math
import pathlib

import ml_collections

from jaxtrain import checkpoint, data
from jaxtrain.engine import Callback

SNAPSHOT_DIR = 'snapshots'


def cycle_ends(optim_config, total_steps: int) -> set[int]:
  """The steps at which the sgdr cycles end (as optim._sgdr splits the steps after warmup)."""
  warmup = min(optim_config.warmup_steps, total_steps)
  length = max(1, math.ceil((total_steps - warmup) / optim_config.cycles))
  return {min(total_steps, warmup + k * length) for k in range(1, optim_config.cycles + 1)}


class Snapshots(Callback):
  """Saves the train state at each cycle end to workdir/snapshots/<step>/, keeping all of them."""

  def __init__(self, workdir: pathlib.Path, config, total_steps: int):
    self.ends = cycle_ends(config.optim, total_steps)
    keep_all = ml_collections.ConfigDict({'keep': len(self.ends) + 1, 'keep_best': 0,
                                          'monitor': config.checkpoint.monitor,
                                          'mode': config.checkpoint.mode})
    self._ckpt = checkpoint.Checkpointer(pathlib.Path(workdir) / SNAPSHOT_DIR, keep_all)

  def on_step(self, trainer, step: int) -> None:
    if step in self.ends:
      self._ckpt.save(step, trainer.state, data.stream_state(step), trainer.meta)

  def close(self) -> None:
    self._ckpt.close()

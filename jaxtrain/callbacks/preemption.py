"""Preemption: SIGTERM or SIGINT (a cluster's notice, Ctrl-C) finishes the current step, saves, waits for
the commit and raises `checkpoint.Preempted`, which the CLI turns into exit 128 + the signal number."""

import signal

from jaxtrain import checkpoint
from jaxtrain.engine import Callback


class Preemption(Callback):
  def __init__(self):
    self._requests = checkpoint.StopRequests()
    self.signum: int | None = None

  def on_fit_start(self, trainer) -> None:
    self._requests.__enter__()

  def on_step(self, trainer, step: int) -> None:
    if self.signum is None and self._requests.signum is not None:
      self.signum = self._requests.signum  # Read once: a signal may arrive at any line.
      trainer.stop(f'preempted by {signal.Signals(self.signum).name}')

  def on_checkpoint(self, trainer, step: int) -> None:
    if self.signum is not None:
      trainer.ckpt.wait()
      raise checkpoint.Preempted(step, trainer.workdir, self.signum)

  def close(self) -> None:
    self._requests.__exit__()

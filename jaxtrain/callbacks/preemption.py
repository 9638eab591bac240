"""Preemption: SIGTERM or SIGINT (a cluster's notice, Ctrl-C) finishes the current step, saves, waits for
the commit and raises `checkpoint.Preempted`, which the CLI turns into exit 128 + the signal number.

With several processes the signal may reach only one of them, or each at a different step; a process that
stopped alone would leave the others waiting in the next collective. So the processes agree, through one
collective at each log step (`parallel.agreed_signal`), whether any of them was signalled, and all stop at
that step and save one checkpoint together. The check costs one tiny all-gather per log step.
"""

import signal

import jax

from jaxtrain import checkpoint, parallel
from jaxtrain import config as config_lib
from jaxtrain.engine import Callback


class Preemption(Callback):
  def __init__(self):
    self._requests = checkpoint.StopRequests()
    self.signum: int | None = None

  def on_fit_start(self, trainer) -> None:
    self._requests.__enter__()

  def on_step(self, trainer, step: int) -> None:
    if self.signum is not None:
      return
    received = self._requests.signum  # Read once: a signal may arrive at any line.
    if jax.process_count() > 1:
      if not config_lib.every(trainer.config.train.log_every_steps, step, trainer.exp.total_steps):
        return
      received = parallel.agreed_signal(received)
    if received is not None:
      self.signum = received
      trainer.stop(f'preempted by {signal.Signals(self.signum).name}')

  def on_checkpoint(self, trainer, step: int) -> None:
    if self.signum is not None:
      trainer.ckpt.wait()
      raise checkpoint.Preempted(step, trainer.workdir, self.signum)

  def close(self) -> None:
    self._requests.__exit__()

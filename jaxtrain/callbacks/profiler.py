"""`profile.start_step` / `profile.num_steps`: a jax.profiler trace of those steps in workdir/profile/.

The trace opens before the first traced step is dispatched and closes once the last one has finished on
the device (the host runs ahead of it), so the steps in it are whole. Each step is a `StepTraceAnnotation`
(the engine's), which TensorBoard's profile plugin and Perfetto show as one step each.
"""

import logging

import jax

from jaxtrain.engine import Callback

PROFILE_DIR = 'profile'
log = logging.getLogger('jaxtrain')


class Profiler(Callback):
  def __init__(self, start_step: int, num_steps: int):
    self.first, self.last, self.tracing = start_step, start_step + num_steps - 1, False

  def _open(self, trainer) -> None:
    jax.profiler.start_trace(str(trainer.workdir / PROFILE_DIR))
    self.tracing = True

  def on_fit_start(self, trainer) -> None:
    if trainer.start + 1 == self.first:
      self._open(trainer)

  def on_step(self, trainer, step: int) -> None:
    if step + 1 == self.first:
      self._open(trainer)
    elif self.tracing and step >= self.last:
      jax.block_until_ready(trainer.state)
      self.close()
      log.info('Profiled steps %d-%d: %s', self.first, step, trainer.workdir / PROFILE_DIR)

  def close(self) -> None:
    if self.tracing:
      jax.profiler.stop_trace()
      self.tracing = False

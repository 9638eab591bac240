"""The one place that talks to orbax: save the train state, find and restore the newest checkpoint.

Saves are asynchronous (training goes on while the files are written); `close` waits for them to commit.
"""

import logging
import pathlib

import jax
import orbax.checkpoint as ocp

log = logging.getLogger('jaxtrain')

CHECKPOINT_DIR = 'checkpoints'


class Checkpointer:
  """Train-state checkpoints under `workdir/checkpoints`, keeping the newest `keep`."""

  def __init__(self, workdir: pathlib.Path, keep: int, read_only: bool = False):
    self.directory = (workdir / CHECKPOINT_DIR).absolute()
    options = (ocp.CheckpointManagerOptions(read_only=True) if read_only
               else ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, state) -> None:
    step = int(jax.device_get(state.step))
    if self._manager.latest_step() != step:
      self._manager.save(step, args=ocp.args.StandardSave(state))

  def restore(self, target):
    """The newest checkpoint in the structure, shapes and shardings of `target` (a state or its shape)."""
    step = self._manager.latest_step()
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    log.info('Restoring step %d from %s', step, self.directory)
    return self._manager.restore(step, args=ocp.args.StandardRestore(abstract))

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()

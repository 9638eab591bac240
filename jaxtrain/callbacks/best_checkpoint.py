"""Best-k checkpoints: every evaluation that improves `checkpoint.monitor` is saved, so the best state
survives `checkpoint.keep` retention (orbax's BestN keeps `checkpoint.keep_best` of them) and can be
returned; the best is rebuilt from metrics.jsonl on resume."""

from jaxtrain import monitor
from jaxtrain.engine import Callback


class BestCheckpoint(Callback):
  def __init__(self, checkpoint_config):
    self.best = monitor.Best(checkpoint_config.monitor, checkpoint_config.mode)
    self._keep_best = checkpoint_config.keep_best

  def on_fit_start(self, trainer) -> None:
    self.best.replay(trainer.history, trainer.start)

  def on_eval(self, trainer, step: int, record: dict) -> None:
    if self.best.update(step, record) and self._keep_best > 0:
      trainer.save()

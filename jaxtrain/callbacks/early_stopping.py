"""Early stopping: the run stops once `early_stopping.monitor` has not improved by more than `min_delta`
for `patience` evaluations (any metric the task reports); the patience count is rebuilt on resume."""

from jaxtrain import monitor
from jaxtrain.engine import Callback


class EarlyStopping(Callback):
  def __init__(self, early_stopping_config):
    self.patience = early_stopping_config.patience
    self.monitor = monitor.Best(early_stopping_config.monitor, early_stopping_config.mode,
                                early_stopping_config.min_delta)
    self.stopped = False

  def on_fit_start(self, trainer) -> None:
    self.monitor.replay(trainer.history, trainer.start)

  def on_eval(self, trainer, step: int, record: dict) -> None:
    self.monitor.update(step, record)
    if self.monitor.since >= self.patience:
      self.stopped = True
      trainer.stop(f'early stopping: {self.monitor.metric} has not improved by more than '
                   f'{self.monitor.min_delta:g} for {self.patience} evaluations')

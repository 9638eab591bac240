"""Early stopping: the run stops once `early_stopping.monitor` has not improved by more than `min_delta`
for `patience` evaluations (any metric the task reports); the patience count is rebuilt on resume. Or it
stops at a quality target (`early_stopping.target`, MLPerf's time to quality)."""

import operator
import time

from jaxtrain import monitor
from jaxtrain.config import parse_target
from jaxtrain.engine import Callback

_OPERATORS = {'>=': operator.ge, '>': operator.gt, '<=': operator.le, '<': operator.lt}


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


class Target(Callback):
  """Stops at the first evaluation where `early_stopping.target` holds ('eval/accuracy>=0.98'); `reached`
  is then {'target_reached_step', 'target_reached_s'} (seconds since this fit started, for summary.json)."""

  def __init__(self, target: str):
    self.target = target
    self.metric, op, self.value = parse_target(target)
    self.holds = _OPERATORS[op]
    self.reached: dict = {}

  def on_fit_start(self, trainer) -> None:
    self.started = time.time()

  def on_eval(self, trainer, step: int, record: dict) -> None:
    if not self.reached and self.holds(record[self.metric], self.value):
      self.reached = {'target_reached_step': step, 'target_reached_s': time.time() - self.started}
      trainer.stop(f'target {self.target} reached')

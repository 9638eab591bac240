"""In-graph per-layer diagnostics: every `diagnostics.every_steps` the engine runs the diagnostic variant of
the step; its statistics stay on the device until the next log step, where they are written as diag/...
records (one transfer) and alerts are raised once per layer."""

from jaxtrain.diagnostics import training
from jaxtrain.engine import Callback


class LayerStats(Callback):
  def __init__(self, writer):
    self.writer = writer
    self.diagnostics = training.TrainingDiagnostics()

  def on_fit_start(self, trainer) -> None:
    if trainer.config.diagnostics.every_steps:
      order = trainer.exp.program.model.forward_order(trainer.exp.example)
      self.diagnostics = training.TrainingDiagnostics(order)

  def on_step(self, trainer, step: int) -> None:
    if trainer.diag is not None:
      self.diagnostics.add(step, trainer.epoch, trainer.diag)

  def on_log(self, trainer, step: int, record: dict) -> None:
    for diag_record in self.diagnostics.records():
      self.writer.write(diag_record)

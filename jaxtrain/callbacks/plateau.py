"""The plateau schedule: each evaluation's loss is fed to optax's reduce_on_plateau, whose state lives in
the optimizer state (so it is checkpointed and resumes exactly)."""

from jaxtrain.engine import Callback


class Plateau(Callback):
  def __init__(self, optimizer):
    self.optimizer = optimizer

  def on_eval(self, trainer, step: int, record: dict) -> None:
    trainer.state = trainer.state.replace(
        opt_state=self.optimizer.observe(trainer.state.opt_state, record['eval/loss']))

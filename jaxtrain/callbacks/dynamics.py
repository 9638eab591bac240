"""`diagnostics.fixed_batch=N`: the model's predictions on the first N eval examples at every evaluation
(note 002: prediction dynamics), in dynamics.jsonl and plots/dynamics.png.

For classification each line is the probability the model gives the true class of one example, so an
example learned early, one learned late and one never learned read apart at a glance; for other tasks,
each example's loss. The fixed batch is placed on the devices once; its predictions are computed right
after each evaluation and fetched with it.
"""

import json

import jax
import numpy as np

from jaxtrain import data
from jaxtrain.diagnostics import plots, predictions
from jaxtrain.engine import Callback

DYNAMICS_FILE = 'dynamics.jsonl'
PLOT_FILE = 'plots/dynamics.png'


class PredictionDynamics(Callback):
  def __init__(self, count: int, primary: bool):
    self.count, self.primary, self.records = count, primary, []

  def on_fit_start(self, trainer) -> None:
    exp = trainer.exp
    self.count = min(self.count, data.length(exp.splits.eval))
    fixed = data.gather(exp.splits.eval, np.arange(self.count))
    batch = data.eval_batches(fixed, trainer.stats, exp.config.data.eval_batch_size,
                              exp.strategy.process_shard)[0]
    self.batch, self.predict = exp.strategy.place_batch(batch), predictions.jitted(exp)
    self.value = 'label_probability' if predictions.classifies(exp.program.task) else 'loss'
    self.path = trainer.workdir / DYNAMICS_FILE
    if self.path.exists():  # A resumed run: the records up to its checkpoint, as for metrics.jsonl.
      kept = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
      self.records = [r for r in kept if r['step'] <= trainer.start]
    if self.primary:
      self.path.write_text(''.join(json.dumps(r) + '\n' for r in self.records))

  def on_eval(self, trainer, step: int, record: dict) -> None:
    values = jax.device_get(self.predict(trainer.state, self.batch)[self.value])[:self.count]
    self.records.append({'step': step, self.value: [float(v) for v in values]})
    if self.primary:
      with self.path.open('a') as f:
        f.write(json.dumps(self.records[-1]) + '\n')

  def on_fit_end(self, trainer, run) -> None:
    if self.primary and self.records:
      plots.dynamics([r['step'] for r in self.records], np.array([r[self.value] for r in self.records]),
                     'probability of the true class' if self.value == 'label_probability' else 'loss',
                     trainer.workdir / PLOT_FILE)

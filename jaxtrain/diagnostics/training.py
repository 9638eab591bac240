"""Per-layer statistics during training: collected on the device, written at log steps, alerts once.

The diagnostic train step (`steps.make_train_step(..., diagnose=...)`) returns `metrics['diag']`, a
`stats.Statistics` vector; the loop hands it here and goes on without waiting. At the next log step
everything collected is fetched (a vector per step) and written as `diag/<statistic>/<layer>` records; a
layer crossing a threshold is reported once per run (not at every step), with the note's advice.
"""

import logging

import jax
import numpy as np

from jaxtrain.diagnostics import stats

log = logging.getLogger('jaxtrain')

VANISHING_ADVICE = 'vanishing gradient: use ReLU with He init, BatchNorm or residuals'
# (statistic, is the value alarming?, what it means and what to do); thresholds follow notes 002-004.
# Vanishing gradients are judged across layers, by the doctor's rule (`stats.vanishing`), not by one value.
ALERTS = (
    ('grad_norm', lambda v: v > 1e3, 'exploding gradient: set optim.clip_norm=1.0 or lower optim.lr'),
    ('update_ratio', lambda v: v > 0.1, 'updates above 10% of the weights per step: lower optim.lr or clip'),
    ('dead', lambda v: v > 0.5, 'over half the ReLU units are dead: lower optim.lr, check model.bias_init '
                                'or use leaky_relu'),
    ('saturated', lambda v: v > 0.5, 'over half the units are saturated: normalize the inputs, use '
                                     'BatchNorm or ReLU'),
)


class TrainingDiagnostics:
  """Collects the diagnostic steps' statistics and turns them into metrics.jsonl records. `order` is the
  model's modules in forward order (input first), which the vanishing-gradient rule compares along."""

  def __init__(self, order: list[str] = ()):
    self._order = list(order)
    self._pending: list[tuple[int, float, stats.Statistics]] = []
    self._alerted: set[tuple[str, str]] = set()

  def add(self, step: int, epoch: float, diag: stats.Statistics) -> None:
    self._pending.append((step, epoch, diag))

  def records(self) -> list[dict]:
    """The records of every statistic collected since the last call."""
    if not self._pending:
      return []
    names = self._pending[0][2].names
    # float64, as the Python floats of the records: thresholds such as 0.1 compare as written.
    values = np.stack(jax.device_get([diag.values for _, _, diag in self._pending])).astype(np.float64)
    steps = [step for step, _, _ in self._pending]
    self._alert(steps, names, values)
    keys = [f'diag/{name}' for name in names]
    records = [{'step': step, 'epoch': epoch, **dict(zip(keys, row, strict=True))}
               for (step, epoch, _), row in zip(self._pending, values.tolist(), strict=True)]
    self._pending = []
    return records

  def _alert(self, steps: list[int], names: tuple[str, ...], values: np.ndarray) -> None:
    """Reports each alarming statistic and vanishing gradient at its first step in `values[step, name]`,
    judged a column at a time (per step and statistic in Python, it cost 2.7 ms per 100 diagnostic steps of
    the digits CNN: 1.2% of their time)."""
    statistic = [name.split('/', 1) for name in names]
    for name, alarming, advice in ALERTS:
      columns = [i for i, (kind, _) in enumerate(statistic) if kind == name]
      hits = alarming(values[:, columns]) if columns else np.zeros((len(steps), 0), bool)
      for column in np.flatnonzero(hits.any(axis=0)):
        row, (kind, layer) = int(np.argmax(hits[:, column])), statistic[columns[column]]
        self._once(steps[row], advice, layer, f'{kind} of {layer} is {values[row, columns[column]]:.3g}')
    column = {(kind, layer): i for i, (kind, layer) in enumerate(statistic)}
    order = {layer: i for i, layer in enumerate(self._order)}
    layers = sorted({layer for kind, layer in statistic if kind == 'grad_norm'},
                    key=lambda layer: (order.get(layer, len(order)), layer))
    grads, weights = (values[:, [column[kind, layer] for layer in layers]]
                      for kind in ('grad_norm', 'param_norm'))
    worst, where = stats.vanishing_rows(grads / np.maximum(weights, 1e-12))
    for row in np.flatnonzero(worst < stats.VANISHING_WARN):
      layer = layers[where[row]]
      self._once(steps[row], VANISHING_ADVICE, layer,
                 f'the gradient/weight ratio of {layer} is {worst[row]:.2g} of a later layer\'s '
                 '(the doctor\'s vanishing_gradients rule)')

  def _once(self, step: int, advice: str, layer: str, finding: str) -> None:
    if (advice, layer) not in self._alerted:
      self._alerted.add((advice, layer))
      log.warning('diagnostics at step %d: %s; %s', step, finding, advice)

"""Learning-curve diagnosis: note 003's "look at the learning curves", as a pure function of a run's history.

`diagnose(history)` takes the records of metrics.jsonl (dicts with `step` and some of `train/loss`,
`eval/loss`, `eval/accuracy`, `train/lr`) and names what the curves show, most serious first: divergence,
overfitting, underfitting, an LR decayed too early, a plateau, a slow start, or a run still improving. Each
finding is {'name', 'evidence' (the numbers that show it), 'advice' (note 003's remedy)}; [] when nothing
stands out. The thresholds are deliberately loose: a finding should be visible by eye on the plotted curves.
"""

import math

# A curve "rose" or "fell" when it moved by more than this fraction; smaller moves are noise.
_CHANGE = 0.1
# Fewer train records than this say nothing about a trend.
_MIN_RECORDS = 4

ADVICE = {
    'divergence': 'The loss blew up: lower optim.lr (try --mode lr_find), add optim.warmup_steps, clip '
                  'gradients with optim.clip_norm=1.0, and check the initialization (--mode doctor).',
    'overfitting': 'The model memorizes the training data: add regularization (optim.weight_decay, '
                   'model.dropout, data augmentation), get more data or use a smaller model; the best '
                   'evaluation is kept (checkpoint.keep_best) and early_stopping.patience stops there.',
    'underfitting': 'The model fits the training data no better than held-out data and barely learned: '
                    'train longer, use a bigger model (model.features) or a higher optim.lr.',
    'decay_too_early': 'The learning rate was cut while the loss was still falling fast, and it fell '
                       'slower after: decay later (later optim.decay_boundaries, a larger '
                       'optim.plateau_patience) or train longer.',
    'plateau': 'The loss stopped falling at a constant learning rate: decay it (optim.schedule=cosine, '
               'step, or plateau to cut it when eval/loss stalls).',
    'slow_start': 'The loss hardly moved at first and then dropped: a sign of a poor initialization; use '
                  "model.kernel_init='auto' (He for ReLU, Glorot for tanh/sigmoid) and check the initial "
                  'loss with --mode doctor.',
    'still_improving': 'The held-out metrics were still improving at the end: train longer '
                       '(train.num_epochs or train.num_steps).',
}


def _series(history: list[dict], key: str) -> list[tuple[int, float]]:
  """(step, value) of every record that has `key`, in step order; non-finite values are kept."""
  return sorted((r['step'], float(r[key])) for r in history
                if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool))


def _finding(name: str, evidence: str) -> dict:
  return {'name': name, 'evidence': evidence, 'advice': ADVICE[name]}


def _divergence(train: list, evals: list) -> dict | None:
  for key, series in (('train/loss', train), ('eval/loss', evals)):
    bad = [step for step, value in series if not math.isfinite(value)]
    if bad:
      return _finding('divergence', f'{key} is not finite from step {bad[0]}')
  if len(train) >= _MIN_RECORDS:
    first, last = train[0][1], train[-1][1]
    low_step, low = min(train, key=lambda p: p[1])
    if last > first and last > 2 * low:
      return _finding('divergence', f'train/loss fell to {low:.3g} at step {low_step}, then rose to '
                                    f'{last:.3g} at step {train[-1][0]}, above its start {first:.3g}')
  return None


def _overfitting(train: list, evals: list) -> dict | None:
  if len(evals) < 3:
    return None
  best_step, best = min(evals, key=lambda p: p[1])
  last_step, last = evals[-1]
  train_then = [v for s, v in train if s <= best_step]
  train_after = [v for s, v in train if s > best_step]
  if last > best * (1 + _CHANGE) and train_then and train_after and train_after[-1] < train_then[-1]:
    return _finding('overfitting', f'eval/loss rose from {best:.3g} at step {best_step} to {last:.3g} at '
                                   f'step {last_step} while train/loss fell from {train_then[-1]:.3g} to '
                                   f'{train_after[-1]:.3g}')
  return None


def _underfitting(train: list, evals: list) -> dict | None:
  if len(train) < _MIN_RECORDS:
    return None
  first, last = train[0][1], train[-1][1]
  close = not evals or evals[-1][1] <= last * (1 + _CHANGE)
  if last >= 0.5 * first and close:
    held_out = f', eval/loss {evals[-1][1]:.3g} is no higher' if evals else ''
    return _finding('underfitting', f'train/loss ended at {last:.3g}, {last / first:.0%} of its start '
                                    f'{first:.3g}{held_out}')
  return None


def _lr_cuts(lrs: list) -> list[int]:
  """Indices into `lrs` where the learning rate fell to half or less from one record to the next."""
  return [i for i in range(1, len(lrs)) if 0 < lrs[i][1] <= 0.5 * lrs[i - 1][1]]


def _fall(train: list, start: int, end: int) -> float:
  """Relative fall of the train loss between the records at steps `start` and `end` (nearest records)."""
  before = [v for s, v in train if s <= start]
  after = [v for s, v in train if s <= end]
  return (before[-1] - after[-1]) / before[-1] if before and after and before[-1] > 0 else 0.0


def _decay_too_early(train: list, lrs: list) -> dict | None:
  for i in _lr_cuts(lrs):
    cut = lrs[i - 1][0]  # The last step at the old rate.
    span = min(cut - train[0][0], train[-1][0] - cut)
    if span <= 0:
      continue
    before, after = _fall(train, cut - span, cut), _fall(train, cut, cut + span)
    if before >= _CHANGE and after < 0.5 * before:
      return _finding('decay_too_early', f'the learning rate fell from {lrs[i - 1][1]:.3g} to '
                                         f'{lrs[i][1]:.3g} after step {cut}; train/loss fell {before:.0%} '
                                         f'in the {span} steps before and {after:.0%} in the {span} after')
  return None


def _lr_constant(lrs: list, start: int) -> bool:
  window = [v for s, v in lrs if s >= start]
  return not window or min(window) >= 0.9 * max(window)


def _plateau(train: list, lrs: list) -> dict | None:
  if len(train) < 2 * _MIN_RECORDS:
    return None
  start = train[len(train) * 2 // 3][0]
  earlier = min(v for s, v in train if s < start)
  recent = min(v for s, v in train if s >= start)
  learned_all = earlier < 0.01 * train[0][1]  # Nothing left to gain on the training data.
  if recent >= earlier * (1 - 0.01) and _lr_constant(lrs, start) and not learned_all:
    return _finding('plateau', f'train/loss reached {earlier:.3g} before step {start} and no lower '
                               f'({recent:.3g}) in the last third of the run, at a constant learning rate')
  return None


def _slow_start(train: list, lrs: list) -> dict | None:
  if len(train) < 2 * _MIN_RECORDS:
    return None
  end_of_start = train[len(train) // 4][0]
  peak = max((v for _, v in lrs), default=0.0)
  warming = any(v < 0.5 * peak for s, v in lrs if s <= end_of_start)
  first, last = train[0][1], train[-1][1]
  early = _fall(train, train[0][0], end_of_start)
  if not warming and early < 0.02 and (first - last) / first > 0.3:
    return _finding('slow_start', f'train/loss fell {early:.0%} in the first quarter (to step '
                                  f'{end_of_start}), then {(first - last) / first:.0%} in all')
  return None


def _still_improving(evals: list, accuracy: list) -> dict | None:
  if len(evals) < 3:
    return None
  quarter = evals[-max(2, len(evals) // 4) - 1:]
  (start_step, start), (last_step, last) = quarter[0], quarter[-1]
  best = min(v for _, v in evals)
  if last <= best and last < start * (1 - 0.02):
    gain = f'; eval/accuracy {accuracy[-1][1]:.3g}' if accuracy else ''
    return _finding('still_improving', f'eval/loss fell from {start:.3g} at step {start_step} to its best '
                                       f'{last:.3g} at the last evaluation, step {last_step}{gain}')
  return None


def diagnose(history: list[dict]) -> list[dict]:
  """Findings about a run's learning curves, most serious first (see the module docstring)."""
  train, evals = _series(history, 'train/loss'), _series(history, 'eval/loss')
  lrs, accuracy = _series(history, 'train/lr'), _series(history, 'eval/accuracy')
  diverged = _divergence(train, evals)
  if diverged:
    return [diverged]  # The other shapes mean nothing on a curve that blew up.
  findings = [_overfitting(train, evals), _underfitting(train, evals), _decay_too_early(train, lrs),
              _plateau(train, lrs), _slow_start(train, lrs), _still_improving(evals, accuracy)]
  return [f for f in findings if f]

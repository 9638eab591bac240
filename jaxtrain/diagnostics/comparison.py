"""`doctor.compare`: train the configured model briefly two ways and measure the difference (notes 001, 002).

* `regularization`: with the configured regularization (dropout, weight decay, L1/L2, augmentation) and
  without any. Each run is then evaluated on the eval split and on as many training examples, without
  dropout: the train/validation gap of each shows whether the regularization narrows it on this data.
* `norm`: with and without BatchNorm (`model.norm`, the zoo's models). Reported as steps to a loss both
  runs reach: halfway, on a log scale, from the initial loss to the higher of the two runs' lowest
  (smoothed) losses, so it measures how fast each gets going, not where noise puts the end.

Both runs start from the same initial parameters where the architectures agree, see the same batches, and
train `doctor.compare_steps` at the configured peak learning rate held constant (the doctor's compiled
step, diagnostics/lr_find.py's `trainer`).
"""

import jax
import ml_collections
import numpy as np

from jaxtrain import build, data, evaluation, steps
from jaxtrain.diagnostics import experiment, lr_find

_SMOOTHING = 0.9  # Of the training loss's moving average (bias-corrected), for steps to a loss.


def _without_regularization(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict(config.to_dict())
  config.optim.update(weight_decay=0.0, l1=0.0, l2=0.0)
  config.data.augment = 'none'
  return config


def _train(exp, normalization: dict, model, config) -> tuple:
  """(final state, smoothed training losses): `doctor.compare_steps` steps of `model` under `config`."""
  step, state = lr_find.trainer(exp, model, config)
  state, losses = lr_find.with_lr(state, config.optim.lr), []
  batches = experiment.batches(exp, normalization, config.data.batch_size)
  for _, batch in zip(range(config.doctor.compare_steps), batches, strict=False):
    state, metrics = step(state, exp.strategy.place_batch(batch))
    losses.append(metrics['loss'])
  raw = np.asarray(jax.device_get(losses), np.float64)
  smoothed, average = [], 0.0
  for i, loss in enumerate(raw):
    average = _SMOOTHING * average + (1 - _SMOOTHING) * loss
    smoothed.append(average / (1 - _SMOOTHING ** (i + 1)))
  return state, np.asarray(smoothed)


def _gap(exp, normalization: dict, model, state) -> dict:
  """Eval-split and train-split losses of `state` (as many training examples as the eval split has)."""
  eval_step = jax.jit(steps.make_eval_step(model, exp.program.task))
  train_part = data.gather(exp.splits.train, np.arange(min(data.length(exp.splits.train),
                                                           data.length(exp.splits.eval))))
  train = evaluation.metrics_of(exp, state, normalization, train_part, 'train', eval_step)['train/loss']
  held_out = evaluation.split_metrics(exp, state, normalization, 'eval', eval_step)['eval/loss']
  return {'train_loss': train, 'eval_loss': held_out, 'gap': held_out - train}


def regularization(exp, normalization: dict) -> dict:
  """{'with': {train_loss, eval_loss, gap}, 'without': {...}}."""
  results = {}
  for name, model, config in (
      ('with', exp.program.model, exp.config),
      ('without', exp.program.model.without_dropout(), _without_regularization(exp.config))):
    state, _ = _train(exp, normalization, model, config)
    results[name] = _gap(exp, normalization, model, state)
  return results


def norm(exp, normalization: dict) -> dict | None:
  """{'batch': {steps, final_loss}, 'none': {...}, 'target_loss'}; None for a model without `model.norm`
  (not the zoo's)."""
  if exp.user_model:
    return None
  runs = {}
  for choice in ('batch', 'none'):
    config = _without_regularization(exp.config)
    config.model.norm = choice
    other = exp if exp.config.model.norm == choice else build.prepare(config, None)
    runs[choice] = _train(other, normalization, other.program.model.without_dropout(), config)[1]
  reached = max(float(losses.min()) for losses in runs.values())
  target = float(np.sqrt(max(float(losses[0]) for losses in runs.values()) * reached))
  return {'target_loss': target, **{
      choice: {'steps_to_target': int(np.argmax(losses <= target)) + 1, 'final_loss': float(losses[-1])}
      for choice, losses in runs.items()}}

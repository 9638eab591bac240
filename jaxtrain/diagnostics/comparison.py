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
from jaxtrain.diagnostics.checks import Check, skipped, status

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


def check_regularization(results: dict) -> Check:
  """The train/validation gap with and without the configured regularization (doctor.compare)."""
  regularized, plain = results['with'], results['without']
  narrows = regularized['gap'] < plain['gap']
  hurts = regularized['eval_loss'] > 1.2 * plain['eval_loss']  # Beyond a short run's noise.
  return Check('regularization', status(False, hurts),
               f'gap {regularized["gap"]:.3g} with (eval/loss {regularized["eval_loss"]:.3g}), '
               f'{plain["gap"]:.3g} without (eval/loss {plain["eval_loss"]:.3g})',
               'regularization narrows the train/validation gap without raising the eval loss',
               'The configured regularization makes the eval loss worse on this data in a short run: '
               'lower model.dropout or optim.weight_decay, or check data.augment (it may distort the '
               'inputs; see plots/batch.png).' if hurts else
               '' if narrows else 'The regularization does not narrow the gap here; it may only matter '
               'later in training, or this model does not overfit this data yet.')


def check_norm(results: dict | None, configured: str) -> Check:
  """Steps to a common training loss with and without BatchNorm (doctor.compare=norm)."""
  if results is None:
    return skipped('batch_norm', 'needs the zoo\'s model.norm to build the model with and without '
                                 'BatchNorm; a user\'s model decides its normalization itself')
  with_norm, without = results['batch']['steps_to_target'], results['none']['steps_to_target']
  chosen, other = (with_norm, without) if configured == 'batch' else (without, with_norm)
  slower, switch = chosen > 1.5 * other, 'none' if configured == 'batch' else 'batch'
  return Check('batch_norm', status(False, slower),
               f'{with_norm} steps with BatchNorm, {without} without, to loss {results["target_loss"]:.3g}',
               f'the configured model.norm={configured!r} reaches the loss no slower',
               f'Training reaches the loss faster with model.norm={switch!r} on this model and data; '
               'consider switching.' if slower else '')


def compare(exp, normalization: dict) -> tuple[Check, dict | None]:
  """doctor.compare's check and figures."""
  if exp.config.doctor.compare == 'regularization':
    results = regularization(exp, normalization)
    return check_regularization(results), results
  results = norm(exp, normalization)
  return check_norm(results, exp.config.model.norm), results

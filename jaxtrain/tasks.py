"""Tasks: what the model's outputs mean, the loss that trains them and the metrics that judge them.

Note 004: the loss must fit the task (softmax cross-entropy for one class per example, a sigmoid per label
when several can be true, squared error for numbers). Every function is pure and works on a batch:
`loss(logits, batch)` gives one loss per example; `metrics(logits, batch, mask)` gives sums over the real
examples (mask=True), so sums of padded eval batches add up exactly and `summarize` divides once at the end;
mean IoU is summed as per-class intersections and unions for the same reason (a mean of per-batch IoUs is
not the IoU of the split). `check` rejects a model head that cannot fit the task before anything compiles.
"""

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxtrain.config import ConfigError, lookup


@dataclasses.dataclass(frozen=True)
class Task:
  """A task's pure functions; `outputs(num_classes)` is the head width the model is built with."""

  name: str
  loss: Callable  # (logits, batch) -> (batch,) losses.
  metrics: Callable  # (logits, batch, mask) -> {'loss', 'count', ...} summed over mask.
  check: Callable  # (output_shape without the batch axis, num_classes) -> None or ConfigError.
  outputs: Callable  # num_classes -> width of the model's last layer.


def _smooth(targets, label_smoothing: float, num_values: int):
  """Moves one-hot (or 0/1) targets `label_smoothing` of the way towards the uniform distribution."""
  return targets * (1 - label_smoothing) + label_smoothing / num_values


def _sum(values, mask):
  """Sum over the examples where `mask` is True; `values` has one entry per example."""
  return jnp.sum(jnp.where(mask, values, 0))


def _per_example(values):
  """Mean over every axis but the batch axis."""
  return values.reshape(values.shape[0], -1).mean(axis=1)


def _softmax_loss(logits, batch, label_smoothing: float = 0.0):
  """Softmax cross-entropy per example (per pixel for dense outputs, averaged over the pixels)."""
  num_classes = logits.shape[-1]
  targets = _smooth(jax.nn.one_hot(batch['label'], num_classes), label_smoothing, num_classes)
  return _per_example(optax.softmax_cross_entropy(logits.astype(jnp.float32), targets))


def _sigmoid_targets(logits, batch):
  """Binary labels (batch,) meet logits (batch, 1); multi-label (batch, C) meet (batch, C)."""
  return batch['label'].reshape(logits.shape).astype(jnp.float32)


def _sigmoid_loss(logits, batch, label_smoothing: float = 0.0):
  """Independent sigmoid cross-entropy per label, averaged over the labels (log 2 at chance)."""
  targets = _smooth(_sigmoid_targets(logits, batch), label_smoothing, 2)
  return _per_example(optax.sigmoid_binary_cross_entropy(logits.astype(jnp.float32), targets))


def _squared_error(logits, batch, label_smoothing: float = 0.0):
  del label_smoothing  # Targets are numbers, not distributions.
  targets = batch['label'].reshape(logits.shape).astype(jnp.float32)
  return _per_example((logits.astype(jnp.float32) - targets) ** 2)


def _classification_metrics(logits, batch, mask, loss):
  correct = jnp.argmax(logits, -1) == batch['label']
  return {'loss': _sum(loss(logits, batch), mask), 'accuracy': _sum(correct, mask),
          'count': jnp.sum(mask)}


def _sigmoid_metrics(logits, batch, mask, loss):
  """accuracy: the fraction of labels right per example; exact_match: all of an example's labels right."""
  correct = (logits > 0) == (_sigmoid_targets(logits, batch) > 0.5)
  return {'loss': _sum(loss(logits, batch), mask), 'accuracy': _sum(_per_example(correct), mask),
          'exact_match': _sum(correct.reshape(correct.shape[0], -1).all(axis=1), mask),
          'count': jnp.sum(mask)}


def _regression_metrics(logits, batch, mask, loss):
  error = logits.astype(jnp.float32) - batch['label'].reshape(logits.shape)
  return {'loss': _sum(loss(logits, batch), mask), 'mae': _sum(_per_example(jnp.abs(error)), mask),
          'count': jnp.sum(mask)}


def _segmentation_metrics(logits, batch, mask, loss):
  """Pixel accuracy per example, and per-class intersection and union pixel counts for mean IoU."""
  num_classes = logits.shape[-1]
  predicted = jax.nn.one_hot(jnp.argmax(logits, -1), num_classes, dtype=jnp.int32)
  actual = jax.nn.one_hot(batch['label'], num_classes, dtype=jnp.int32)
  real = mask.reshape(-1, 1, 1, 1).astype(jnp.int32)
  correct = jnp.argmax(logits, -1) == batch['label']
  return {'loss': _sum(loss(logits, batch), mask), 'accuracy': _sum(_per_example(correct), mask),
          'count': jnp.sum(mask),
          'intersection': jnp.sum(predicted * actual * real, axis=(0, 1, 2)),
          'union': jnp.sum(jnp.maximum(predicted, actual) * real, axis=(0, 1, 2))}


def _same(num_classes: int) -> int:
  return num_classes


def _one(num_classes: int) -> int:
  del num_classes  # One logit: the probability of the positive class.
  return 1


def _check_vector(task: str, outputs: Callable):
  """A check that the model gives `outputs(num_classes)` numbers per example."""
  def check(output_shape: tuple[int, ...], num_classes: int) -> None:
    expected = (outputs(num_classes),)
    if tuple(output_shape) != expected:
      raise ConfigError(
          f'task.name={task!r} needs {expected[0]} output(s) per example, shape {expected}, but the model '
          f'gives {tuple(output_shape)}; use a model with a dense head (not unet) built for '
          f'{expected[0]} output(s)')
  return check


def _check_binary(output_shape: tuple[int, ...], num_classes: int) -> None:
  if num_classes != 2:
    raise ConfigError(f"task.name='binary' needs a data set with 2 classes, this one has {num_classes}; "
                      "use task.name='classification' (one class per example) or 'multilabel'")
  _check_vector('binary', _one)(output_shape, num_classes)


def _check_segmentation(output_shape: tuple[int, ...], num_classes: int) -> None:
  if len(output_shape) != 3 or output_shape[-1] != num_classes:
    raise ConfigError(
        f"task.name='segmentation' needs per-pixel logits of shape (H, W, {num_classes}), but the model "
        f"gives {tuple(output_shape)}; use model.name='unet' and a data set with per-pixel labels")


# name -> (loss, metrics, check, head width from the number of classes).
TASKS = {
    'classification': (_softmax_loss, _classification_metrics, _check_vector('classification', _same),
                       _same),
    'binary': (_sigmoid_loss, _sigmoid_metrics, _check_binary, _one),
    'multilabel': (_sigmoid_loss, _sigmoid_metrics, _check_vector('multilabel', _same), _same),
    # For regression, "classes" are the targets per example.
    'regression': (_squared_error, _regression_metrics, _check_vector('regression', _same), _same),
    'segmentation': (_softmax_loss, _segmentation_metrics, _check_segmentation, _same),
}


def build(task_config) -> Task:
  """The configured task (`task.name`, `task.label_smoothing`); ConfigError for an unknown name."""
  loss_fn, metrics_fn, check, outputs = lookup(TASKS, 'task.name', task_config.name)
  loss = functools.partial(loss_fn, label_smoothing=task_config.label_smoothing)
  return Task(name=task_config.name, loss=loss, metrics=functools.partial(metrics_fn, loss=loss),
              check=check, outputs=outputs)


def summarize(totals: dict) -> dict:
  """Summed metrics (fetched to the host) -> means per example, plus mean IoU over the classes present."""
  count = float(totals['count'])
  means = {key: float(value) / count for key, value in totals.items()
           if key not in ('count', 'intersection', 'union')}
  if 'union' in totals:
    union = np.asarray(totals['union'], np.float64)
    present = union > 0  # A class in neither labels nor predictions says nothing about the model.
    means['mean_iou'] = float(np.mean(np.asarray(totals['intersection'])[present] / union[present]))
  return means

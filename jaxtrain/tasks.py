"""Tasks: what the model's outputs mean, the loss that trains them and the metrics that judge them.

Note 004: the loss must fit the task (softmax cross-entropy for one class per example, a sigmoid per label
when several can be true, squared error for numbers). Every function is pure and works on a batch:
`loss(outputs, batch)` gives one loss per example, `metrics(outputs, batch)` one value per example and
metric; `Task.sums` adds them over the real examples (mask=True), so sums of padded eval batches add up
exactly and `summarize` divides once at the end. Mean IoU is summed as per-class intersections and unions for
the same reason (a mean of per-batch IoUs is not the IoU of the split). The zoo's tasks are `Task`s like a
user's; `check` rejects a zoo head that cannot fit the task before anything compiles.
"""

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxtrain.config import ConfigError, lookup


@dataclasses.dataclass(frozen=True, eq=False)
class Task:
  """What a model's outputs mean: `loss(outputs, batch)` gives one loss per example; `metrics(outputs,
  batch)` (optional) gives `{name: one value per example}`, reported as means over a split next to the loss.

  `label` names the batch key that holds the targets. The rest is for the zoo's tasks: `head(num_classes)`
  is the width a zoo model's last layer is built with, `check(output shape, num_classes)` rejects a head
  that cannot fit the task, and `totals(outputs, batch, mask)` adds sums that are not per-example means
  (per-class intersections and unions for mean IoU). Compared by identity: the compiled-program cache
  never reuses a program built for another task object.
  """

  loss: Callable
  metrics: Callable | None = None
  label: str = 'label'
  name: str = 'custom'
  head: Callable | None = None
  check: Callable | None = None
  totals: Callable | None = None

  def sums(self, outputs, batch: dict, mask) -> dict:
    """{'loss', every metric, 'count'} summed over the real examples (mask=True), plus `totals`."""
    per_example = {'loss': self.loss(outputs, batch),
                   **(self.metrics(outputs, batch) if self.metrics else {})}
    sums = {key: _sum(value, mask) for key, value in per_example.items()}
    sums['count'] = jnp.sum(mask)
    if self.totals:
      sums.update(self.totals(outputs, batch, mask))
    return sums

  def check_outputs(self, outputs, batch: dict) -> None:
    """A ConfigError unless the loss and every metric give one value per example (checked abstractly)."""
    size = jax.tree.leaves(batch)[0].shape[0]
    def per_example(o, b):
      return {'loss': self.loss(o, b), **(self.metrics(o, b) if self.metrics else {})}
    values = jax.eval_shape(per_example, outputs, batch)
    for name, value in values.items():
      if getattr(value, 'shape', None) != (size,):
        raise ConfigError(
            f'the task\'s {name} gives shape {getattr(value, "shape", type(value).__name__)} for a batch of '
            f'{size}; return one value per example, shape ({size},) (average other axes yourself)')

  def metric_names(self, outputs, batch: dict) -> list[str]:
    """The names `summarize` reports for this task (loss, the metrics, mean_iou from totals)."""
    sums = jax.eval_shape(lambda o, b: self.sums(o, b, jnp.ones(jax.tree.leaves(b)[0].shape[0], bool)),
                          outputs, batch)
    return sorted(summarize_keys(sums))


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


def _classification_metrics(logits, batch):
  return {'accuracy': (jnp.argmax(logits, -1) == batch['label']).astype(jnp.float32)}


def _sigmoid_metrics(logits, batch):
  """accuracy: the fraction of labels right per example; exact_match: all of an example's labels right."""
  correct = (logits > 0) == (_sigmoid_targets(logits, batch) > 0.5)
  return {'accuracy': _per_example(correct),
          'exact_match': correct.reshape(correct.shape[0], -1).all(axis=1).astype(jnp.float32)}


def _regression_metrics(logits, batch):
  error = logits.astype(jnp.float32) - batch['label'].reshape(logits.shape)
  return {'mae': _per_example(jnp.abs(error))}


def _segmentation_metrics(logits, batch):
  return {'accuracy': _per_example(jnp.argmax(logits, -1) == batch['label'])}


def _iou_totals(logits, batch, mask):
  """Per-class intersection and union pixel counts over the real examples, for mean IoU."""
  num_classes = logits.shape[-1]
  predicted = jax.nn.one_hot(jnp.argmax(logits, -1), num_classes, dtype=jnp.int32)
  actual = jax.nn.one_hot(batch['label'], num_classes, dtype=jnp.int32)
  real = mask.reshape(-1, 1, 1, 1).astype(jnp.int32)
  return {'intersection': jnp.sum(predicted * actual * real, axis=(0, 1, 2)),
          'union': jnp.sum(jnp.maximum(predicted, actual) * real, axis=(0, 1, 2))}


def _token_losses(logits, batch):
  """Next-token cross-entropy of every position and which positions count: a target of -1 is padding or
  the first token of another document in a packed sequence (data/text.py), which no context predicts."""
  targets = batch['targets']
  real = targets >= 0
  losses = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32),
                                                           jnp.where(real, targets, 0))
  return jnp.where(real, losses, 0.0), real


def _mean_over_tokens(values, real):
  return jnp.sum(values, axis=-1) / jnp.maximum(jnp.sum(real, axis=-1), 1)


def _lm_loss(logits, batch, label_smoothing: float = 0.0):
  """Per sequence: the mean next-token cross-entropy of its real targets (smoothed towards uniform)."""
  losses, real = _token_losses(logits, batch)
  if label_smoothing:  # The uniform part: the mean of -log p over the vocabulary.
    uniform = -jnp.mean(jax.nn.log_softmax(logits.astype(jnp.float32)), axis=-1)
    losses = (1 - label_smoothing) * losses + label_smoothing * jnp.where(real, uniform, 0.0)
  return _mean_over_tokens(losses, real)


def _lm_metrics(logits, batch):
  real = batch['targets'] >= 0
  return {'accuracy': _mean_over_tokens(jnp.argmax(logits, -1) == batch['targets'], real)}


def _lm_totals(logits, batch, mask):
  """The cross-entropy and the number of real targets summed over the split's tokens, so perplexity and
  bits per token weigh every token once (a mean of per-sequence means would not)."""
  losses, real = _token_losses(logits, batch)
  real = real & mask[:, None]
  return {'token_loss': jnp.sum(jnp.where(real, losses, 0.0)), 'tokens': jnp.sum(real)}


def _check_language_model(output_shape: tuple[int, ...], num_classes: int) -> None:
  if len(output_shape) != 2 or output_shape[-1] != num_classes:
    raise ConfigError(
        f"task.name='language_modeling' needs logits of shape (tokens, {num_classes}) per sequence, but the "
        f"model gives {tuple(output_shape)}; use model.name='gpt' on text data (data.name='python_docs', "
        "'text:<glob>')")


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


# name -> (loss, per-example metrics, check, head width from the number of classes, extra totals).
TASKS = {
    'classification': (_softmax_loss, _classification_metrics, _check_vector('classification', _same),
                       _same, None),
    'binary': (_sigmoid_loss, _sigmoid_metrics, _check_binary, _one, None),
    'multilabel': (_sigmoid_loss, _sigmoid_metrics, _check_vector('multilabel', _same), _same, None),
    # For regression, "classes" are the targets per example.
    'regression': (_squared_error, _regression_metrics, _check_vector('regression', _same), _same, None),
    'segmentation': (_softmax_loss, _segmentation_metrics, _check_segmentation, _same, _iou_totals),
    # "Classes" are the tokens of the vocabulary; the labels are the batch's 'targets'.
    'language_modeling': (_lm_loss, _lm_metrics, _check_language_model, _same, _lm_totals),
}

# The batch key each task reads its targets from.
LABELS = {'language_modeling': 'targets'}


def build(task_config) -> Task:
  """The configured zoo task (`task.name`, `task.label_smoothing`); ConfigError for an unknown name."""
  loss_fn, metrics, check, head, totals = lookup(TASKS, 'task.name', task_config.name)
  return Task(loss=functools.partial(loss_fn, label_smoothing=task_config.label_smoothing),
              metrics=metrics, label=LABELS.get(task_config.name, 'label'), name=task_config.name, head=head,
              check=check, totals=totals)


# Sums that are not per-example means: `summarize` turns them into other figures.
TOTALS = ('count', 'intersection', 'union', 'token_loss', 'tokens')


def summarize_keys(totals: dict) -> list[str]:
  """The names `summarize` gives for these sums."""
  return ([key for key in totals if key not in TOTALS] + (['mean_iou'] if 'union' in totals else [])
          + (['perplexity', 'bits_per_token'] if 'tokens' in totals else []))


def summarize(totals: dict) -> dict:
  """Summed metrics (fetched to the host) -> means per example, plus mean IoU over the classes present."""
  count = float(totals['count'])
  means = {key: float(value) / count for key, value in totals.items() if key not in TOTALS}
  if 'union' in totals:
    union = np.asarray(totals['union'], np.float64)
    present = union > 0  # A class in neither labels nor predictions says nothing about the model.
    means['mean_iou'] = float(np.mean(np.asarray(totals['intersection'])[present] / union[present]))
  if 'tokens' in totals:
    per_token = float(totals['token_loss']) / max(float(totals['tokens']), 1.0)
    means['perplexity'], means['bits_per_token'] = float(np.exp(per_token)), per_token / float(np.log(2))
  return means

"""The baselines a model must beat (note 002): "dumb" constant predictions, and the same model trained on
zeroed inputs.

A constant baseline is the best constant output for the task's own loss, fitted to the training labels:
the log class frequencies for a softmax (classes, pixels' classes or a vocabulary's tokens: the majority
class and the unigram model), each label's log-odds for sigmoid tasks, the label mean for regression. It is
scored by the task itself, so it reports the same metrics as the run (eval/loss, eval/accuracy, ...) and
the two can be read side by side in summary.json.

The input-independent baseline (the doctor's) trains the configured model for the same steps on the same
batches with every model input zeroed: what it learns is what the labels alone give away. A model that does
no better with its inputs than without ignores them.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxtrain import data, evaluation, tasks
from jaxtrain.state import variables

# Softmax tasks: the outputs' last axis is a distribution over classes (or tokens).
_SOFTMAX = ('classification', 'segmentation', 'language_modeling')
_SIGMOID = ('binary', 'multilabel')
# A run whose final eval loss is not below this fraction of a baseline's did not beat it by a margin.
MARGIN = 0.9


def name(task: tasks.Task) -> str:
  """What the constant baseline of this task is called in summary.json and the doctor's table."""
  return 'mean' if task.name == 'regression' else 'majority'


def output_shape(exp) -> tuple[int, ...]:
  """The model's output shape for one example, traced without computing."""
  abstract = exp.abstract_state()
  model = exp.program.model
  outputs = jax.eval_shape(lambda s: model.apply(variables(s), exp.example, train=False), abstract)
  return tuple(outputs.shape[1:])


def constant_outputs(task: tasks.Task, train: dict, shape: tuple[int, ...], max_examples: int):
  """The best constant output (one example's, of `shape`) for the task's loss on the first `max_examples`
  training labels; None for a task that is not the zoo's (its loss may read its outputs any way)."""
  if task.name not in (*_SOFTMAX, *_SIGMOID, 'regression'):
    return None
  count = min(data.length(train), max_examples)
  labels = np.asarray(data.gather(train, np.arange(count))[task.label])
  if task.name in _SOFTMAX:
    num_classes = shape[-1]
    known = labels[(labels >= 0) & (labels < num_classes)]  # -1: no target (after a document's end).
    # Add-one smoothing: a class that the sample lacks would otherwise cost an infinite loss.
    counts = np.bincount(known.ravel(), minlength=num_classes) + 1.0
    return np.broadcast_to(np.log(counts / counts.sum()), shape).astype(np.float32)
  mean = labels.reshape(count, -1).astype(np.float64).mean(axis=0)  # Per output (or one for all of them).
  mean = mean.reshape(shape) if mean.size == int(np.prod(shape)) else np.broadcast_to(mean.mean(), shape)
  if task.name in _SIGMOID:
    rate = mean.clip(1e-4, 1 - 1e-4)
    return np.log(rate / (1 - rate)).astype(np.float32)
  return mean.astype(np.float32)


def constant(exp, stats: dict) -> dict | None:
  """The eval split's metrics of the best constant output ({'eval/loss': ..., ...}), or None when the task
  has none (see `constant_outputs`)."""
  task = exp.program.task
  outputs = constant_outputs(task, exp.splits.train, output_shape(exp), exp.config.data.stats_max_examples)
  if outputs is None:
    return None

  # NumPy outputs: replicated on every device and process.
  return evaluation.split_metrics(exp, outputs, stats, 'eval', _constant_eval_step(task))


@functools.lru_cache(maxsize=8)
def _constant_eval_step(task: tasks.Task):
  """The task's sums for one constant output (an argument: XLA need not fold a large constant), jitted once
  per task, so a second run in one process compiles nothing."""

  @jax.jit
  def eval_step(outputs, batch):
    mask = batch['mask']
    return task.sums(jnp.broadcast_to(outputs, (mask.shape[0], *outputs.shape)), batch, mask)

  return eval_step


def zeroed(batch: dict, keys) -> dict:
  """The batch with the arrays the model reads (`keys`) replaced by zeros, on the host for a host batch;
  labels and masks unchanged."""
  def zeros(value):
    return np.zeros_like(value) if isinstance(value, np.ndarray) else jnp.zeros_like(value)
  return {key: zeros(value) if key in keys else value for key, value in batch.items()}


def beaten(run_loss: float, baseline_loss: float) -> bool:
  """Whether a run's loss beats a baseline's by the margin (note 002: a model that learns from its inputs
  does clearly better than a constant or an input-blind model)."""
  return run_loss < MARGIN * baseline_loss


def finding(final: dict, baselines: dict) -> dict | None:
  """A learning-curve-style finding when the final eval loss does not beat every baseline by the margin."""
  loss = final.get('eval/loss')
  missed = [f'{key} {value["eval/loss"]:.4g}' for key, value in baselines.items()
            if loss is not None and not beaten(loss, value['eval/loss'])]
  if not missed:
    return None
  return {'name': 'no_better_than_baseline',
          'evidence': f'eval/loss {loss:.4g} against the baseline{"s" if len(missed) > 1 else ""} '
                      f'{", ".join(missed)} (a run should be below {MARGIN:g}x)',
          'advice': 'The model does hardly better than a prediction that ignores its inputs: check that the '
                    'inputs reach the model (model.inputs) and carry the signal, then train longer or with '
                    'a better learning rate (--mode doctor, --mode lr_find).'}

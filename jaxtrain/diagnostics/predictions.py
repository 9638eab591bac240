"""What a model predicts for each example: per-example loss, prediction and confidence over a split, the
confusion between classes, the examples it gets most wrong, and a fixed batch followed through training.

Note 002 asks to look at the predictions, not only at a mean: which classes are confused, which examples
cost the most, and how the predictions on a few fixed examples move as training goes. One jitted function
gives every per-example figure; the arrays stay on the device, replicated (readable by every process), and
are fetched once per split.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxtrain import data
from jaxtrain.state import variables

# A confusion matrix of more classes is neither readable as a figure nor small in summary.json.
MAX_CONFUSION_CLASSES = 100


def classifies(task) -> bool:
  """Whether the task picks one class per example from logits over the classes (the outputs' last axis)."""
  return task.name == 'classification'


def per_example_fn(model, task, use_ema: bool = False):
  """(state, batch) -> {'loss', 'mask' (the batch's real examples), and for classification 'label',
  'prediction', 'confidence' (its probability) and 'label_probability'}, one value per example."""

  def per_example(state, batch):
    params = state.ema if use_ema else state.params
    outputs = model.apply(variables(state.replace(params=params)), batch, train=False)
    result = {'loss': task.loss(outputs, batch), 'mask': batch.get('mask', jnp.ones(len(outputs), bool))}
    if classifies(task):
      probabilities = jax.nn.softmax(outputs.astype(jnp.float32), axis=-1)
      labels = batch[task.label].astype(jnp.int32)
      result.update(label=labels, prediction=jnp.argmax(probabilities, -1),
                    confidence=jnp.max(probabilities, -1),
                    label_probability=jnp.take_along_axis(probabilities, labels[:, None], axis=-1)[:, 0])
    return result

  return per_example


def jitted(exp):
  """`per_example_fn` for the run's model and task (its EMA when the run evaluates that), jitted with
  replicated outputs."""
  use_ema = exp.config.optim.ema_decay > 0 and exp.config.optim.ema_eval
  return _jitted(exp.program.model, exp.program.task, use_ema, exp.strategy.replicated)


@functools.lru_cache(maxsize=8)
def _jitted(model, task, use_ema: bool, replicated):
  """Cached by model and task (compared by identity) like the run's own steps: a second fit of the same
  program in one process compiles nothing."""
  return jax.jit(per_example_fn(model, task, use_ema), out_shardings=replicated)


def split_predictions(exp, state, stats: dict, split: str = 'eval') -> dict:
  """Per-example figures (`per_example_fn`) over every example of a split, in order: host arrays."""
  examples = getattr(exp.splits, split)
  step = jitted(exp)
  batches = data.eval_batches(examples, stats, exp.config.data.eval_batch_size, exp.strategy.process_shard)
  outputs = [step(state, exp.strategy.place_batch(batch))
             for batch in data.iterate(batches, workers=data.workers(examples, exp.config.data.workers))]
  fetched = jax.device_get(jax.tree.map(lambda *xs: jnp.concatenate(xs), *outputs))
  mask = fetched.pop('mask')
  return {key: np.asarray(value)[mask] for key, value in fetched.items()}


def confusion(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
  """counts[true class, predicted class]."""
  flat = labels.astype(np.int64) * num_classes + predicted.astype(np.int64)
  return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def worst(losses: np.ndarray, count: int) -> np.ndarray:
  """The indices of the `count` examples with the highest loss, highest first."""
  return np.argsort(-losses, kind='stable')[:count]

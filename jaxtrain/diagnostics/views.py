"""The data as the model sees it (note 002: "visualize just before the net"), and the examples it gets
most wrong.

plots/batch.png is the first training batch after decoding, normalization and the step's own on-device
augmentation (drawn from the same key as step 1), mapped back to the input's scale for display; for data
that is not images, a table of statistics per key. plots/examples.png is the eval examples with the
highest loss, as stored, with label, prediction and its probability where the task has them.
"""

import pathlib
from collections.abc import Callable

import jax
import numpy as np

from jaxtrain import data, steps
from jaxtrain.diagnostics import figure_process, plots, predictions

BATCH_PLOT = 'plots/batch.png'
EXAMPLES_PLOT = 'plots/examples.png'
CONFUSION_PLOT = 'plots/confusion.png'
SHOWN = 32  # Examples in batch.png; examples.png shows half as many.


def first_batch(exp, state, stats: dict) -> dict:
  """Step 1's training batch as the model receives it (this process's rows), on the host."""
  batch = data.train_batches(exp.splits.train, stats, exp.config.data.batch_size, exp.config.seed,
                             exp.strategy.process_shard)[0]
  return jax.device_get(steps.augmented(exp.program.augment, state, batch))


def _scalar_labels(batch: dict, label: str) -> list[str] | None:
  values = batch.get(label)
  if values is None or np.ndim(values) != 1:
    return None
  return [f'{v:.3g}' if np.issubdtype(np.asarray(values).dtype, np.floating) else str(v) for v in values]


def feature_lines(batch: dict) -> list[str]:
  """A fixed-width table: shape, dtype and value statistics of every key of a batch."""
  lines = [f'{"key":12} {"shape":16} {"dtype":8} {"min":>9} {"max":>9} {"mean":>9} {"std":>9} {"zeros":>6}']
  for key, values in sorted(batch.items()):
    values = np.asarray(values)
    numbers = values.astype(np.float64)
    lines.append(f'{key:12} {str(values.shape):16} {str(values.dtype):8} {numbers.min():9.3g} '
                 f'{numbers.max():9.3g} {numbers.mean():9.3g} {numbers.std():9.3g} '
                 f'{np.mean(values == 0):6.0%}')
  return lines


def write_batch(exp, state, stats: dict, workdir: pathlib.Path, draw: Callable = figure_process.now) -> dict:
  """Writes plots/batch.png (by `draw`: `figure_process.Figures.draw` draws it in the background); returns
  the batch's per-key statistics (for the doctor's report)."""
  batch = first_batch(exp, state, stats)
  shown = {key: value[:SHOWN] for key, value in batch.items()}
  key = exp.config.model.inputs[0]
  labels = _scalar_labels(shown, exp.program.task.label)
  if key in shown and plots.is_image(shown[key]):
    images = shown[key].astype(np.float32)
    if isinstance(stats.get(key), dict):  # Back to the stored scale: what a person recognizes.
      moments = stats[key]
      images = images * np.asarray(moments['std'], np.float32) + np.asarray(moments['mean'], np.float32)
    title = f'step 1\'s batch ({len(batch[key])} examples, {len(images)} shown) as the model sees it'
    draw(plots.image_grid, images, labels or [''] * len(images), title, workdir / BATCH_PLOT)
  else:
    draw(plots.text_table, feature_lines(batch), f'step 1\'s batch of {data.length(batch)}, per key',
         workdir / BATCH_PLOT)
  return {key: {'mean': float(np.mean(value)), 'std': float(np.std(value))} for key, value in batch.items()
          if np.issubdtype(np.asarray(value).dtype, np.number)}


def write_examples(exp, predicted: dict, workdir: pathlib.Path, draw: Callable) -> None:
  """Writes plots/examples.png (by `draw`): the eval examples with the highest loss (`predicted` from
  predictions.split_predictions)."""
  worst = predictions.worst(predicted['loss'], SHOWN // 2)
  examples = data.gather(exp.splits.eval, worst)
  key = exp.config.model.inputs[0]
  if 'prediction' in predicted:
    captions = [f'{predicted["label"][i]} as {predicted["prediction"][i]} ({predicted["confidence"][i]:.0%})'
                for i in worst]
  else:
    captions = [f'loss {predicted["loss"][i]:.3g}' for i in worst]
  title = 'the eval examples with the highest loss: label as prediction (its probability)'
  if key in examples and plots.is_image(np.asarray(examples[key])):
    draw(plots.image_grid, np.asarray(examples[key], np.float32), captions, title, workdir / EXAMPLES_PLOT)
  else:
    draw(plots.text_table, [f'{"example":>8}  caption'] + [f'{i:8d}  {c}' for i, c in zip(worst, captions,
                                                                                         strict=True)],
         title, workdir / EXAMPLES_PLOT)

"""Tasks: losses and masked metric sums on small arrays, against values worked out by hand."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxtrain
from jaxtrain import config as config_lib
from jaxtrain import tasks

LN2, LN3, LN4 = math.log(2), math.log(3), math.log(4)


def task(name: str, label_smoothing: float = 0.0) -> tasks.Task:
  config = config_lib.defaults()
  config_lib.override(config, {'task.name': name, 'task.label_smoothing': label_smoothing})
  return tasks.build(config.task)


# Softmax probabilities (1/2, 1/4, 1/4) and (1/3, 1/3, 1/3); the third example is padding.
LOGITS = jnp.array([[LN2, 0.0, 0.0], [0.0, 0.0, 0.0], [9.0, 0.0, 0.0]])
BATCH = {'label': jnp.array([0, 2, 1])}
MASK = jnp.array([True, True, False])


def test_classification_loss_and_accuracy():
  plain = task('classification')
  np.testing.assert_allclose(plain.loss(LOGITS, BATCH)[:2], [LN2, LN3], rtol=1e-6)
  sums = plain.sums(LOGITS, BATCH, MASK)
  # argmax of the uniform row is class 0, not its label 2; the padded example would be wrong too.
  assert float(sums['count']) == 2 and float(sums['accuracy']) == 1
  assert float(sums['loss']) == pytest.approx(LN2 + LN3, rel=1e-6)
  assert tasks.summarize(jax.device_get(sums)) == pytest.approx({'loss': (LN2 + LN3) / 2, 'accuracy': 0.5})


def test_label_smoothing_moves_the_targets_towards_uniform():
  # Targets (0.9 + 0.1/3, 0.1/3, 0.1/3): -sum t log p with p = (1/2, 1/4, 1/4).
  smoothed = task('classification', label_smoothing=0.1).loss(LOGITS, BATCH)
  t_true, t_other = 0.9 + 0.1 / 3, 0.1 / 3
  assert float(smoothed[0]) == pytest.approx(t_true * LN2 + 2 * t_other * LN4, rel=1e-6)
  assert float(smoothed[1]) == pytest.approx(LN3, rel=1e-6)  # Uniform predictions: every target costs ln 3.


def test_binary_sigmoid_cross_entropy():
  binary = task('binary')
  logits = jnp.array([[0.0], [2.0], [-1.0]])
  batch = {'label': jnp.array([1, 0, 0])}
  # -log sigmoid(0) = ln 2; label 0 costs softplus(logit): ln(1 + e^2), ln(1 + e^-1).
  expected = [LN2, math.log(1 + math.e ** 2), math.log(1 + math.e ** -1)]
  np.testing.assert_allclose(binary.loss(logits, batch), expected, rtol=1e-6)
  sums = binary.sums(logits, batch, jnp.array([True, True, True]))
  assert float(sums['accuracy']) == 1  # Predictions (0, 1, 0) for labels (1, 0, 0): logit 0 is not > 0.
  assert float(sums['loss']) == pytest.approx(sum(expected), rel=1e-6)
  smoothed = task('binary', 0.2).loss(logits[:1], batch | {'label': jnp.array([1])})
  assert float(smoothed[0]) == pytest.approx(LN2, rel=1e-6)  # At logit 0 every target costs ln 2.
  assert binary.head(2) == 1


def test_multilabel_averages_one_sigmoid_per_label():
  multilabel = task('multilabel')
  logits = jnp.array([[0.0, 3.0, -3.0], [1.0, -1.0, 0.5]])
  batch = {'label': jnp.array([[1, 1, 0], [0, 0, 1]])}
  softplus = lambda x: math.log(1 + math.exp(x))  # noqa: E731
  first = (LN2 + softplus(-3.0) + softplus(-3.0)) / 3
  second = (softplus(1.0) + softplus(-1.0) + softplus(-0.5)) / 3
  np.testing.assert_allclose(multilabel.loss(logits, batch), [first, second], rtol=1e-6)
  sums = multilabel.sums(logits, batch, jnp.array([True, True]))
  # Predictions (0, 1, 0) and (1, 0, 1): 2 of 3 and 2 of 3 labels right, no example all right.
  assert float(sums['accuracy']) == pytest.approx(4 / 3) and float(sums['exact_match']) == 0
  assert multilabel.head(3) == 3


def test_regression_mean_squared_error():
  regression = task('regression', label_smoothing=0.3)  # Smoothing does not apply to numbers.
  logits = jnp.array([[1.0], [2.0], [3.0]])
  batch = {'label': jnp.array([1.5, 2.0, 1.0])}
  np.testing.assert_allclose(regression.loss(logits, batch), [0.25, 0.0, 4.0])
  sums = regression.sums(logits, batch, jnp.array([True, False, True]))
  assert float(sums['loss']) == pytest.approx(4.25) and float(sums['mae']) == pytest.approx(2.5)
  assert 'accuracy' not in sums
  two_targets = regression.loss(jnp.array([[1.0, 2.0]]), {'label': jnp.array([[0.0, 0.0]])})
  assert float(two_targets[0]) == pytest.approx(2.5)  # Mean over the targets: (1 + 4) / 2.


def segmentation_batch(predicted, labels):
  """Logits with probability 1/2 on the predicted class and 1/4 on each of the other two."""
  logits = jnp.where(jax.nn.one_hot(jnp.array(predicted), 3) > 0, LN2, 0.0)
  return logits, {'label': jnp.array(labels)}


def test_segmentation_pixel_loss_accuracy_and_mean_iou():
  segmentation = task('segmentation')
  # Example 0 predicts [[0, 1], [2, 2]] for labels [[0, 1], [1, 2]]; example 1 is padding.
  logits, batch = segmentation_batch([[[0, 1], [2, 2]], [[1, 1], [1, 1]]],
                                     [[[0, 1], [1, 2]], [[0, 0], [0, 0]]])
  mask = jnp.array([True, False])
  assert float(segmentation.loss(logits, batch)[0]) == pytest.approx((3 * LN2 + LN4) / 4, rel=1e-6)
  sums = jax.device_get(segmentation.sums(logits, batch, mask))
  np.testing.assert_array_equal(sums['intersection'], [1, 1, 1])
  np.testing.assert_array_equal(sums['union'], [1, 2, 2])  # Class 1: label at 2 pixels, one predicted.
  summary = tasks.summarize(sums)
  assert summary['accuracy'] == pytest.approx(0.75)
  assert summary['mean_iou'] == pytest.approx((1 + 0.5 + 0.5) / 3)


def test_segmentation_sums_add_up_across_batches_and_skip_absent_classes():
  segmentation = task('segmentation')
  # Two batches of one image each; class 2 occurs in neither labels nor predictions.
  first = segmentation_batch([[[0, 1], [1, 1]]], [[[0, 1], [1, 0]]])
  second = segmentation_batch([[[0, 0], [0, 1]]], [[[0, 0], [1, 1]]])
  one = jnp.array([True])
  totals = jax.tree.map(jnp.add, segmentation.sums(*first, one), segmentation.sums(*second, one))
  both = segmentation_batch([[[0, 1], [1, 1]], [[0, 0], [0, 1]]], [[[0, 1], [1, 0]], [[0, 0], [1, 1]]])
  together = segmentation.sums(*both, jnp.array([True, True]))
  summary = tasks.summarize(jax.device_get(totals))
  assert summary == pytest.approx(tasks.summarize(jax.device_get(together)))
  # Class 0 is labelled at 4 pixels and predicted at 4, both at 3: IoU 3 / (4 + 4 - 3); class 1 the same.
  # Class 2 is left out of the mean (with it, IoU 0 would pull the mean to 2/5).
  assert summary['mean_iou'] == pytest.approx(3 / 5)
  assert summary['accuracy'] == pytest.approx(6 / 8)


@pytest.mark.parametrize('name,shape,num_classes,message', [
    ('classification', (8, 8, 10), 10, r"task.name='classification' needs 10 output.*\(10,\).*not unet"),
    ('segmentation', (10,), 10, r"task.name='segmentation' needs per-pixel logits of shape \(H, W, 10\)"),
    ('segmentation', (8, 8, 4), 11, r'\(H, W, 11\).*\(8, 8, 4\)'),
    ('binary', (1,), 10, r"task.name='binary' needs a data set with 2 classes, this one has 10"),
    ('binary', (2,), 2, r"task.name='binary' needs 1 output"),
    ('multilabel', (5,), 6, r"task.name='multilabel' needs 6 output"),
    ('regression', (2,), 1, r"task.name='regression' needs 1 output"),
])
def test_a_head_that_does_not_fit_the_task_is_a_config_error(name, shape, num_classes, message):
  with pytest.raises(jaxtrain.ConfigError, match=message):
    task(name).check(shape, num_classes)


@pytest.mark.parametrize('name,shape,num_classes', [
    ('classification', (10,), 10), ('segmentation', (8, 8, 11), 11), ('binary', (1,), 2),
    ('multilabel', (6,), 6), ('regression', (1,), 1)])
def test_a_head_that_fits_passes_the_check(name, shape, num_classes):
  checked = task(name)
  checked.check(shape, num_classes)
  assert checked.head(num_classes) == shape[-1]


def test_unknown_task_and_bad_smoothing_are_config_errors():
  with pytest.raises(jaxtrain.ConfigError, match=r"task.name='detection'.*multilabel, regression"):
    task('detection')
  config = config_lib.defaults()
  config_lib.override(config, {'task.label_smoothing': 1.0, 'train.num_steps': 1})
  with pytest.raises(jaxtrain.ConfigError, match=r'task.label_smoothing=1.0 is out of range'):
    config_lib.validate(config)

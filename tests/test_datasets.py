"""Data sets beyond digits/MNIST: CIFAR and ImageNet through TFDS (offline, on mock data) and the digits
segmentation masks."""

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

import jaxtrain
from jaxtrain import data
from jaxtrain.data import sources


@pytest.mark.parametrize('name,num_classes', [('cifar10', 10), ('cifar100', 100)])
def test_cifar_loads_offline_from_mock_data(make_config, name, num_classes):
  config = make_config(**{'data.name': name, 'data.validation_fraction': 0.0})
  with tfds.testing.mock_data(num_examples=12):  # Every split, sliced or not, has 12 examples.
    splits = data.load(config)
  assert [len(s['label']) for s in (splits.train, splits.eval, splits.test)] == [12, 12, 12]
  assert splits.train['image'].shape == (12, 32, 32, 3) and splits.train['image'].dtype == np.uint8
  assert splits.num_classes == num_classes and splits.train['image'].shape[1:] == (32, 32, 3)
  assert splits.test['label'].dtype == np.int32 and splits.test['label'].max() < num_classes


def test_imagenet_streams_resized_to_data_image_size_and_is_tested_on_validation(make_config):
  config = make_config('imagenet_resnet50', **{'data.image_size': 24})
  with tfds.testing.mock_data(num_examples=5):  # Mock images have random sizes.
    splits = data.load(config)
    assert isinstance(splits.train, data.records.Stream)  # configs/imagenet_resnet50.py never decodes ahead.
    assert data.gather(splits.train, [4, 0])['image'].shape == (2, 24, 24, 3)
  assert splits.train['image'].shape == (5, 24, 24, 3)
  assert splits.num_classes == 1000 and splits.eval_name == 'test'
  assert data.DATASETS['imagenet2012'].test_split == 'validation'  # ImageNet's test labels are private.


def test_imagenet_not_prepared_is_a_config_error_about_the_manual_download(tmp_path):
  config = jaxtrain.load_config('configs/digits_cnn.py', {'data.name': 'imagenet2012',
                                                          'data.data_dir': str(tmp_path)})
  with pytest.raises(jaxtrain.ConfigError, match=r"'imagenet2012' is not prepared.*downloads/manual"):
    data.load(config)


def test_resize_keeps_the_central_square_of_the_shorter_side():
  wide = np.zeros((20, 60, 3), np.uint8)
  wide[:, 16:44] = 255  # White around the middle third, with a margin for the resampling filter.
  config = jaxtrain.load_config('configs/digits_cnn.py', {'data.image_size': 10})
  example = sources._resized({'image': wide, 'label': 3}, config.data)
  assert example['image'].shape == (10, 10, 3) and example['label'] == 3
  assert example['image'].min() == 255  # Scaled by 1/2: the centre 10 of 30 columns, all white.
  tall = np.asarray(Image.fromarray(wide).transpose(Image.Transpose.ROTATE_90))
  assert sources._resized({'image': tall, 'label': 0}, config.data)['image'].min() == 255


def test_cifar10_config_trains_a_few_steps_on_mock_data(make_config, tmp_path):
  config = make_config('mnist_cnn', **{'data.name': 'cifar10', 'train.num_steps': 2, 'data.batch_size': 8,
                                       'data.eval_batch_size': 16, 'train.log_every_steps': 1,
                                       'model.features': (4, 8), 'model.head_features': (16,)})
  with tfds.testing.mock_data(num_examples=24):
    run = jaxtrain.fit(config, tmp_path)
  assert run.summary['steps'] == 2
  assert 0.0 <= run.summary['final']['test/accuracy'] <= 1.0


@pytest.mark.parametrize('name,num_classes', [('digits_segmentation', 11), ('digits_foreground', 2)])
def test_digits_segmentation_labels_each_pixel(make_config, name, num_classes):
  splits = data.load(make_config(**{'data.name': name, 'data.validation_fraction': 0.0}))
  digits = data.load(make_config(**{'data.validation_fraction': 0.0}))
  labels, images = splits.test['label'], splits.test['image'][..., 0]
  assert labels.shape == (360, 8, 8) and labels.dtype == np.int32
  assert splits.num_classes == num_classes and splits.train['image'].shape[1:] == (8, 8, 1)
  np.testing.assert_array_equal(splits.test['image'], digits.test['image'])
  ink = images > sources.DIGIT_INK
  assert 0.2 < ink.mean() < 0.6
  np.testing.assert_array_equal(labels == 0, ~ink)  # Background is class 0 ...
  foreground = 1 if num_classes == 2 else digits.test['label'][:, None, None] + 1  # ... ink the digit + 1.
  np.testing.assert_array_equal(labels, np.where(ink, foreground, 0))
  # Per-pixel labels go through the batching pipeline unchanged.
  stats = data.compute_stats(splits.train, 10_000)
  batch = next(data.iterate(data.eval_batches(splits.test, stats, batch_size=256), start=1))
  assert batch['label'].shape == (256, 8, 8) and batch['label'].dtype == np.int32
  np.testing.assert_array_equal(batch['label'][:104], labels[256:])

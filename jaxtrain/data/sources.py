"""Data sets by name, read from TFDS into memory: {'image': uint8 (n, H, W, C), 'label': int32 (n,)}.

The only module that talks to TFDS. Adding a data set means adding one entry to `DATASETS`; the validation
split is carved here, deterministically, from the end of the train split. Splits are decoded once, which
suits data sets up to a few GB (digits, MNIST, CIFAR); larger ones need a streaming pipeline.
"""

import dataclasses
import logging
import os

import numpy as np
import tensorflow_datasets as tfds

from jaxtrain.config import ConfigError, lookup
from jaxtrain.data.digits import Digits

log = logging.getLogger('jaxtrain')


@dataclasses.dataclass(frozen=True)
class Splits:
  """The splits one run reads, as arrays. `eval` is validation when carved, else test."""

  train: dict
  eval: dict
  test: dict
  eval_name: str  # 'validation' or 'test'.
  num_classes: int
  image_shape: tuple[int, ...]


def _digits(data_dir: str):
  builder = Digits(data_dir=data_dir, file_format='array_record')
  if not builder.is_prepared():
    log.info('Preparing the digits data set in %s', data_dir)
    tfds.disable_progress_bar()
    builder.download_and_prepare()
  return builder


def _tfds(name: str):
  def builder(data_dir: str):
    return tfds.builder(name, data_dir=data_dir, file_format='array_record')
  return builder


DATASETS = {
    'digits': _digits,
    'mnist': _tfds('mnist'),
    'fashion_mnist': _tfds('fashion_mnist'),
}


def data_dir(config) -> str:
  return os.path.expanduser(config.data.data_dir) if config.data.data_dir else tfds.core.constants.DATA_DIR


def read(source) -> dict:
  """Decodes a TFDS data source into arrays."""
  records = [source[i] for i in range(len(source))]
  return {'image': np.stack([r['image'] for r in records]),
          'label': np.asarray([r['label'] for r in records], np.int32)}


def load(config) -> Splits:
  """Opens (preparing if needed) the configured data set and returns its splits as data sources."""
  make_builder = lookup(DATASETS, 'data.name', config.data.name)
  directory = data_dir(config)
  try:
    builder = make_builder(directory)
    train = builder.as_data_source(split='train')
    test = builder.as_data_source(split='test')
  except (FileNotFoundError, KeyError, tfds.core.registered.DatasetNotFoundError) as e:
    raise ConfigError(
        f'data set {config.data.name!r} is not prepared in {directory!r}; prepare it once with '
        f'tfds.builder({config.data.name!r}, data_dir={directory!r}, file_format="array_record")'
        '.download_and_prepare() or point data.data_dir at a folder that has it') from e
  fraction = config.data.validation_fraction
  num_val = max(1, round(fraction * len(train))) if fraction > 0 else 0
  if num_val > 0:
    num_train = len(train) - num_val
    train, evaluation = (builder.as_data_source(split=f'train[:{num_train}]'),
                         builder.as_data_source(split=f'train[{num_train}:]'))
  else:
    evaluation = test
  features = builder.info.features
  return Splits(train=read(train), eval=read(evaluation), test=read(test),
                eval_name='validation' if num_val > 0 else 'test',
                num_classes=features['label'].num_classes,
                image_shape=tuple(features['image'].shape))

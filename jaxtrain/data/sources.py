"""Data sets by name: each gives random-access TFDS data sources for its splits.

The only module besides the pipeline that talks to TFDS. Adding a data set means adding one entry to
`DATASETS`; the validation split is carved here, deterministically, from the end of the train split.
"""

import dataclasses
import logging
import os

import tensorflow_datasets as tfds

from jaxtrain.config import ConfigError, lookup
from jaxtrain.data.digits import Digits

log = logging.getLogger('jaxtrain')


@dataclasses.dataclass(frozen=True)
class Splits:
  """The sources one run reads. `eval` is validation when carved, else test."""

  train: object
  eval: object
  test: object
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
  num_val = round(config.data.validation_fraction * len(train))
  if num_val > 0:
    num_train = len(train) - num_val
    train, evaluation = (builder.as_data_source(split=f'train[:{num_train}]'),
                         builder.as_data_source(split=f'train[{num_train}:]'))
  else:
    evaluation = test
  features = builder.info.features
  return Splits(train=train, eval=evaluation, test=test,
                eval_name='validation' if num_val > 0 else 'test',
                num_classes=features['label'].num_classes,
                image_shape=tuple(features['image'].shape))

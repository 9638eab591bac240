"""Data sets read into memory as splits of arrays with any keys: the zoo's names, any TFDS data set as
'tfds:<name>', or a user's `Arrays` (data/arrays.py).

The only module that talks to TFDS. Adding a named data set means adding one `Source` to `DATASETS`; the
validation split is carved here, deterministically, from the end of the train split. Splits are decoded
once, which suits data sets up to a few GB (digits, MNIST, CIFAR); ImageNet (~190 GB decoded at 224x224)
needs a streaming pipeline before it can train at full size.
"""

import dataclasses
import functools
import logging
import os
from collections.abc import Callable

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

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
  num_classes: int  # Of integer labels (the zoo's heads are built with it); 0 when there are none.

  @property
  def keys(self) -> tuple[str, ...]:
    return tuple(self.train)


def _plain(record: dict, data_config=None) -> dict:
  del data_config  # Images of a fixed size are used as stored.
  return {'image': record['image'], 'label': np.asarray(record['label'], np.int32)}


def _numeric(record: dict, data_config=None) -> dict:
  """Every numeric feature of a record as stored ('tfds:<name>'); strings (file names, ids) are left out."""
  del data_config
  return {key: value for key, value in record.items()
          if np.asarray(value).dtype.kind in 'biuf'}


def _resized(record: dict, data_config) -> dict:
  """Shorter side scaled to `data.image_size`, then the central square: one shape for a whole split.

  This is the usual evaluation crop; training diversity comes from the on-device augmentation
  (`data.augment='random_resized_crop'`), which works on the stored squares.
  """
  size = data_config.image_size
  image = Image.fromarray(record['image'])
  scale = size / min(image.size)
  width, height = max(size, round(image.width * scale)), max(size, round(image.height * scale))
  image = image.resize((width, height), Image.Resampling.BILINEAR)
  left, top = (width - size) // 2, (height - size) // 2
  return {'image': np.asarray(image.crop((left, top, left + size, top + size))),
          'label': np.asarray(record['label'], np.int32)}


# Digits' pixels run 0..16; strokes are the pixels above a quarter of full ink.
DIGIT_INK = 4


def _digit_masks(record: dict, data_config=None, binary: bool = False) -> dict:
  """Per-pixel labels from a digit: background 0; ink 1 (binary) or the digit + 1 (11 classes)."""
  del data_config
  ink = record['image'][..., 0] > DIGIT_INK
  label = ink if binary else np.where(ink, int(record['label']) + 1, 0)
  return {'image': record['image'], 'label': label.astype(np.int32)}


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


@dataclasses.dataclass(frozen=True)
class Source:
  """How one data set is read: its TFDS builder, the split that tests it, and how a record becomes an
  example. Calling it with a data folder gives the builder."""

  builder: Callable[[str], tfds.core.DatasetBuilder]
  test_split: str = 'test'
  example: Callable = _plain  # (record, data config) -> {'image': (H, W, C) uint8, 'label': ...}.
  num_classes: int = 0  # 0: the label feature's number of classes.
  hint: str = ''  # Added to the error when the data set is not prepared.

  def __call__(self, data_dir: str) -> tfds.core.DatasetBuilder:
    return self.builder(data_dir)


DATASETS = {
    'digits': Source(_digits),
    'digits_segmentation': Source(_digits, example=_digit_masks, num_classes=11),
    'digits_foreground': Source(_digits, example=functools.partial(_digit_masks, binary=True),
                                num_classes=2),
    'mnist': Source(_tfds('mnist')),
    'fashion_mnist': Source(_tfds('fashion_mnist')),
    'cifar10': Source(_tfds('cifar10')),
    'cifar100': Source(_tfds('cifar100')),  # The 100 fine labels.
    # The test split has no public labels, so the 50,000 validation images test.
    'imagenet2012': Source(_tfds('imagenet2012'), test_split='validation', example=_resized,
                           hint='; imagenet2012 cannot be downloaded: put ILSVRC2012_img_train.tar and '
                                'ILSVRC2012_img_val.tar in <data_dir>/downloads/manual first'),
}


def data_dir(config) -> str:
  return os.path.expanduser(config.data.data_dir) if config.data.data_dir else tfds.core.constants.DATA_DIR


def read(source, example: Callable[[dict], dict] = _plain) -> dict:
  """Decodes a random-access source (a TFDS or Grain data source, a `grain.MapDataset`, a list of dicts)
  into arrays, each record through `example`."""
  examples = [example(source[i]) for i in range(len(source))]
  return {key: np.stack([np.asarray(e[key]) for e in examples]) for key in examples[0]}


def subset(split: dict, data_config, name: str, label: str = 'label') -> dict:
  """The examples of `data.classes` (labels kept as they are); for the train split, a fixed random
  `data.train_fraction` of them (transfer learning with little data)."""
  keep = np.ones(len(next(iter(split.values()))), bool)
  if data_config.classes:
    keep = np.isin(split[label], data_config.classes)
  indices = np.flatnonzero(keep)
  if name == 'train' and data_config.train_fraction < 1:
    indices = np.sort(np.random.default_rng(0).permutation(indices)[:round(data_config.train_fraction
                                                                            * len(indices))])
  if len(indices) == 0:
    raise ConfigError(f'data.classes={tuple(data_config.classes)} and data.train_fraction='
                      f'{data_config.train_fraction} leave no {name} example; check the labels')
  return split if len(indices) == len(keep) else {k: v[indices] for k, v in split.items()}


def source(name: str) -> Source:
  """The Source of a zoo name, or of any TFDS data set named 'tfds:<name>' (every numeric feature)."""
  if name.startswith('tfds:'):
    return Source(_tfds(name[len('tfds:'):]), example=_numeric)
  return lookup(DATASETS, 'data.name', name)


def load(config, data=None, label: str = 'label') -> Splits:
  """The splits of `data` (an object with `.splits(config, label)`, such as `Arrays`), or else of the
  configured data set, opened (prepared if needed) and decoded into arrays."""
  if data is not None:
    return data.splits(config, label)
  source_ = source(config.data.name)
  directory = data_dir(config)
  try:
    builder = source_(directory)
    train = builder.as_data_source(split='train')
    test = builder.as_data_source(split=source_.test_split)
  except (FileNotFoundError, KeyError, tfds.core.registered.DatasetNotFoundError) as e:
    tfds_name = config.data.name.removeprefix('tfds:')
    raise ConfigError(
        f'data set {config.data.name!r} is not prepared in {directory!r} (or has no {source_.test_split!r} '
        f'split); prepare it once with '
        f'tfds.builder({tfds_name!r}, data_dir={directory!r}, file_format="array_record")'
        '.download_and_prepare() or point data.data_dir at a folder that has it' + source_.hint) from e
  fraction = config.data.validation_fraction
  num_val = max(1, round(fraction * len(train))) if fraction > 0 else 0
  if num_val > 0:
    num_train = len(train) - num_val
    train, evaluation = (builder.as_data_source(split=f'train[:{num_train}]'),
                         builder.as_data_source(split=f'train[{num_train}:]'))
  else:
    evaluation = test
  example = functools.partial(source_.example, data_config=config.data)
  try:
    train, evaluation, test = (read(split, example) for split in (train, evaluation, test))
  except ValueError as e:  # np.stack of features whose shape varies between records.
    raise ConfigError(f'data.name={config.data.name!r} has features whose shape varies between examples '
                      f'({str(e).splitlines()[0][:120]}); give the data as jaxtrain.data.Arrays of '
                      'fixed-shape arrays (resize or pad them first)') from None
  train, evaluation, test = (subset(split, config.data, name, label)
                             for split, name in ((train, 'train'), (evaluation, 'eval'), (test, 'test')))
  features = builder.info.features
  label_feature = features['label'] if 'label' in features.keys() else None
  return Splits(train=train, eval=evaluation, test=test,
                eval_name='validation' if num_val > 0 else 'test',
                num_classes=source_.num_classes or getattr(label_feature, 'num_classes', 0) or 0)

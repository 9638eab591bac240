"""Data sets by name as splits with any keys: the zoo's names, any TFDS data set as 'tfds:<name>', the
user's own ArrayRecord files ('array_record:<folder>', `RecordFiles`), text ('python_docs', 'text:<glob>',
TFDS text sets; data/text.py), or a user's `Arrays` (data/arrays.py).

The only module that talks to TFDS (with data/text.py for its text sets), and only when a data set is
opened by name: TFDS takes 0.2 s to import, which a run on a user's `Arrays` or record files never pays.
Adding a named data set means adding one `Source` to `DATASETS`; the validation split is carved here,
deterministically, from the end of the train split. Every split starts as a `records.Stream` over its
records; `data.in_memory` then decodes it once into arrays (fast gathers, for data up to a few GB: digits,
MNIST, CIFAR) or leaves it on disk, read batch by batch (ImageNet is about 190 GB decoded at 224x224).
"""

import dataclasses
import functools
import glob
import logging
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
  import tensorflow_datasets as tfds

from jaxtrain.config import ConfigError, lookup
from jaxtrain.data import records, text

log = logging.getLogger('jaxtrain')


@dataclasses.dataclass(frozen=True)
class Splits:
  """The splits one run reads, as arrays. `eval` is validation when carved, else test."""

  train: dict | records.Stream
  eval: dict | records.Stream
  test: dict | records.Stream
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
  import tensorflow_datasets as tfds  # noqa: PLC0415 - see the module docstring.

  from jaxtrain.data.digits import Digits  # noqa: PLC0415 - a TFDS builder: imports TFDS.

  builder = Digits(data_dir=data_dir, file_format='array_record')
  if not builder.is_prepared():
    log.info('Preparing the digits data set in %s', data_dir)
    tfds.disable_progress_bar()
    builder.download_and_prepare()
  return builder


def _tfds(name: str):
  def builder(data_dir: str):
    import tensorflow_datasets as tfds  # noqa: PLC0415 - see the module docstring.

    return tfds.builder(name, data_dir=data_dir, file_format='array_record')
  return builder


@dataclasses.dataclass(frozen=True)
class Source:
  """How one data set is read: its TFDS builder, the split that tests it, and how a record becomes an
  example. Calling it with a data folder gives the builder."""

  builder: Callable[[str], 'tfds.core.DatasetBuilder']
  test_split: str = 'test'
  example: Callable = _plain  # (record, data config) -> {'image': (H, W, C) uint8, 'label': ...}.
  num_classes: int = 0  # 0: the label feature's number of classes.
  hint: str = ''  # Added to the error when the data set is not prepared.

  def __call__(self, data_dir: str) -> 'tfds.core.DatasetBuilder':
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
  """`data.data_dir`, else TFDS's default folder (~/tensorflow_datasets or $TFDS_DATA_DIR)."""
  if config.data.data_dir:
    return os.path.expanduser(config.data.data_dir)
  import tensorflow_datasets as tfds  # noqa: PLC0415 - see the module docstring.

  return tfds.core.constants.DATA_DIR


def read(source, example: Callable[[dict], dict] = _plain) -> dict:
  """Decodes a random-access source (a TFDS or Grain data source, a `grain.MapDataset`, a list of dicts)
  into arrays, each record through `example`."""
  examples = [example(source[i]) for i in range(len(source))]
  return {key: np.stack([np.asarray(e[key]) for e in examples]) for key in examples[0]}


def subset(split: dict, data_config, name: str, label: str = 'label') -> dict:
  """The examples of `data.classes` (labels kept as they are); for the train split, a fixed random
  `data.train_fraction` of them (transfer learning with little data)."""
  keep = np.ones(len(next(iter(split.values()))), bool)
  if data_config.classes and isinstance(split, records.Stream):
    raise ConfigError(f'data.classes={tuple(data_config.classes)} needs every label, which streamed data '
                      'does not read ahead; set --config.data.in_memory=true, or write records of those '
                      'classes only')
  if data_config.classes:
    keep = np.isin(split[label], data_config.classes)
  indices = np.flatnonzero(keep)
  if name == 'train' and data_config.train_fraction < 1:
    indices = np.sort(np.random.default_rng(0).permutation(indices)[:round(data_config.train_fraction
                                                                            * len(indices))])
  if len(indices) == 0:
    raise ConfigError(f'data.classes={tuple(data_config.classes)} and data.train_fraction='
                      f'{data_config.train_fraction} leave no {name} example; check the labels')
  if len(indices) == len(keep):
    return split
  if isinstance(split, records.Stream):
    return split.take(indices)
  return {key: value[indices] for key, value in split.items()}


def source(name: str) -> Source:
  """The Source of a zoo name, or of any TFDS data set named 'tfds:<name>' (every numeric feature)."""
  if name.startswith('tfds:'):
    return Source(_tfds(name[len('tfds:'):]), example=_numeric)
  return lookup(DATASETS, 'data.name', name)


# data.in_memory='auto' decodes the splits into memory when they take at most this much together.
IN_MEMORY_BYTES = 1 << 30


def place(splits: Splits, data_config, label: str = 'label') -> Splits:
  """Decodes streamed splits into memory, or leaves them on disk (`data.in_memory`), then keeps the
  examples `subset` keeps. The eval split may be the test split (one object): it is read once."""
  streams = {name: getattr(splits, name) for name in ('train', 'eval', 'test')}
  size = sum(split.nbytes for split in {id(s): s for s in streams.values()}.values()
             if isinstance(split, records.Stream))
  in_memory = data_config.in_memory == 'true' or (data_config.in_memory == 'auto'
                                                  and size <= IN_MEMORY_BYTES)
  if size and not in_memory:
    log.info('Streaming %s (%.1f GB decoded) from disk with %d worker process(es)', data_config.name,
             size / 1e9, data_config.workers)
  read = {}
  for name, split in streams.items():
    if in_memory and isinstance(split, records.Stream):
      split = read.setdefault(id(split), split.read())
    streams[name] = subset(split, data_config, name, label)
  return dataclasses.replace(splits, **streams)


@dataclasses.dataclass(frozen=True, eq=False)
class RecordFiles:
  """A user's own ArrayRecord files per split (paths or glob patterns), written with
  `jaxtrain.data.records.write`: records are read lazily, so the data may be larger than memory. Without
  `eval`, `data.validation_fraction` carves one from the end of `train`, else `test` is used."""

  train: str | Sequence[str]
  eval: str | Sequence[str] | None = None
  test: str | Sequence[str] | None = None
  num_classes: int = 0  # 0: max integer label + 1, read once from the train records.

  def describe(self) -> str:
    return f'<object jaxtrain.data.RecordFiles train={self.train!r}; eval={self.eval!r}; test={self.test!r}>'

  def splits(self, config, label: str = 'label') -> Splits:
    train = records.Stream.of_files(_paths('train', self.train), 'train')
    evaluation = self.eval and records.Stream.of_files(_paths('eval', self.eval), 'eval')
    test = self.test and records.Stream.of_files(_paths('test', self.test), 'test')
    fraction, eval_name = config.data.validation_fraction, 'validation'
    if not evaluation and fraction > 0:
      num_val = max(1, round(fraction * len(train)))
      train, evaluation = train.take(np.arange(len(train) - num_val)), train.take(
          np.arange(len(train) - num_val, len(train)))
    elif not evaluation and test:
      evaluation, eval_name = test, 'test'
    elif not evaluation:
      raise ConfigError('RecordFiles has neither eval= nor test= files; pass one, or set '
                        '--config.data.validation_fraction=0.1 to carve a validation split from train')
    splits = place(Splits(train=train, eval=evaluation, test=test or evaluation, eval_name=eval_name,
                          num_classes=self.num_classes), config.data, label)
    labels = splits.train.get(label)
    if self.num_classes or labels is None or not np.issubdtype(labels.dtype, np.integer):
      return splits
    if isinstance(splits.train, records.Stream):
      log.info('Reading the %r of %d train records to count the classes (pass RecordFiles(num_classes=) to '
               'skip this)', label, len(splits.train))
    return dataclasses.replace(splits, num_classes=int(np.max(np.asarray(labels))) + 1)


def _paths(split: str, pattern: str | Sequence[str]) -> list[str]:
  """Files of a split: a list of paths, or a glob pattern; a ConfigError when there are none."""
  paths = sorted(glob.glob(os.path.expanduser(pattern))) if isinstance(pattern, str) else list(pattern)
  if not paths:
    raise ConfigError(f'the {split} records {pattern!r} match no file; give ArrayRecord files written with '
                      'jaxtrain.data.records.write')
  return paths


def _record_folder(folder: str) -> RecordFiles:
  """'array_record:<folder>': train*.array_record, and validation* (else test*) files as the eval split."""
  def files(prefix: str) -> list[str]:
    return sorted(glob.glob(os.path.join(os.path.expanduser(folder), f'{prefix}*.array_record')))
  if not files('train'):
    raise ConfigError(f"data.name='array_record:{folder}' has no train*.array_record file; write the splits "
                      'there with jaxtrain.data.records.write (train, validation, test)')
  return RecordFiles(train=files('train'), eval=files('validation') or None, test=files('test') or None)


def _text(config, name: str) -> Splits:
  """A text corpus tokenized once into packed sequences of `data.seq_len` tokens (data/text.py)."""
  prepared = text.prepare(name, data_dir(config), config.data.tokenizer, config.data.seq_len,
                          config.data.validation_fraction)
  train, evaluation = (records.Stream.of_files(prepared.train, 'train'),
                       records.Stream.of_files(prepared.eval, prepared.eval_name))
  test = evaluation if prepared.test == prepared.eval else records.Stream.of_files(prepared.test, 'test')
  return place(Splits(train=train, eval=evaluation, test=test, eval_name=prepared.eval_name,
                      num_classes=prepared.vocab_size), config.data, label='targets')


def is_text(name: str) -> bool:
  """Whether `data.name` names text, read by data/text.py (a TFDS name is text when its features are)."""
  return name == 'python_docs' or name.startswith('text:')


def load(config, data=None, label: str = 'label') -> Splits:
  """The splits of `data` (an object with `.splits(config, label)`, such as `Arrays`), or else of the
  configured data set, opened (prepared if needed), in memory or streamed (`data.in_memory`)."""
  if data is not None:
    return data.splits(config, label)
  name = config.data.name
  if is_text(name):
    return _text(config, name)
  if name.startswith('array_record:'):
    return _record_folder(name[len('array_record:'):]).splits(config, label)
  import tensorflow_datasets as tfds  # noqa: PLC0415 - see the module docstring.

  source_ = source(name)
  directory = data_dir(config)
  try:
    builder = source_(directory)
    if name.startswith('tfds:') and text.is_text(builder):
      return _text(config, name)
    train = builder.as_data_source(split='train')
    test = builder.as_data_source(split=source_.test_split)
  except (FileNotFoundError, KeyError, tfds.core.registered.DatasetNotFoundError) as e:
    tfds_name = name.removeprefix('tfds:')
    raise ConfigError(
        f'data set {name!r} is not prepared in {directory!r} (or has no {source_.test_split!r} '
        f'split); prepare it once with '
        f'tfds.builder({tfds_name!r}, data_dir={directory!r}, file_format="array_record")'
        '.download_and_prepare() or point data.data_dir at a folder that has it' + source_.hint) from e
  fraction = config.data.validation_fraction
  num_val = max(1, round(fraction * len(train))) if fraction > 0 else 0
  if num_val > 0:
    num_train = len(train) - num_val
    train, evaluation = (builder.as_data_source(split=f'train[:{num_train}]'),
                         builder.as_data_source(split=f'train[{num_train}:]'))
  example = functools.partial(source_.example, data_config=config.data)
  test = records.Stream(test, example, name='test')
  evaluation = records.Stream(evaluation, example, name='eval') if num_val else test
  train = records.Stream(train, example, name='train')
  features = builder.info.features
  label_feature = features['label'] if 'label' in features.keys() else None
  num_classes = source_.num_classes or getattr(label_feature, 'num_classes', 0) or 0
  return place(Splits(train=train, eval=evaluation, test=test, eval_name='validation' if num_val else 'test',
                      num_classes=num_classes), config.data, label)

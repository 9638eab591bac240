"""A user's own data: NumPy arrays (or random-access sources) per split, with any keys and dtypes.

`Arrays(train={'tokens': int32 (n, T), 'label': int32 (n,)}, eval=..., test=...)` is what Keras's
`fit(x, y, validation_data=)` takes, as one object: every array of a split has one row per example; integer
arrays stay integers (token ids reach `nn.Embed` as ids), and only the keys in `data.normalize` are
normalized with training-split statistics. A split may also be anything with `len()` and `[i] -> dict`
(a `grain.MapDataset`, a Grain or TFDS data source), decoded into arrays once.
"""

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from jaxtrain.config import ConfigError
from jaxtrain.data import pipeline, sources


def _split(name: str, split) -> dict:
  """A split as a dict of arrays with one row per example; a ConfigError names what is wrong."""
  if not isinstance(split, Mapping):
    if not (hasattr(split, '__len__') and hasattr(split, '__getitem__')):
      raise ConfigError(f'data {name}= is a {type(split).__name__}; give a dict of arrays or a '
                        'random-access source (len() and [i] -> dict), e.g. a grain.MapDataset')
    if len(split) == 0:
      raise ConfigError(f'data {name}= has no examples')
    try:
      split = sources.read(split, example=dict)
    except (TypeError, ValueError, KeyError) as e:
      raise ConfigError(f'data {name}= records cannot be stacked into arrays ({type(e).__name__}: '
                        f'{str(e).splitlines()[0][:150]}); every record must be a dict with the same keys '
                        'and shapes') from None
  try:
    arrays = {str(key): np.asarray(value) for key, value in split.items()}
  except ValueError as e:
    raise ConfigError(f'data {name}= holds an array that is ragged ({str(e).splitlines()[0][:150]}); give '
                      'rectangular arrays (pad sequences to one length)') from None
  ragged = [key for key, value in arrays.items() if value.dtype == object]
  if ragged:
    raise ConfigError(f'data {name}= arrays {ragged} are not numeric (dtype object: ragged or mixed); give '
                      'rectangular numeric arrays')
  if not arrays:
    raise ConfigError(f'data {name}= has no arrays; give e.g. {{"image": x, "label": y}}')
  lengths = {key: len(value) if value.ndim else 0 for key, value in arrays.items()}
  if len(set(lengths.values())) != 1 or 0 in lengths.values():
    raise ConfigError(f'data {name}= arrays have different numbers of rows {lengths}; '
                      'every array needs one row per example')
  return arrays


def _num_classes(splits: list[dict], label: str) -> int:
  """max label + 1 over the splits for integer labels, else 0 (regression targets, no labels)."""
  values = [split[label] for split in splits if label in split]
  if not values or not all(np.issubdtype(v.dtype, np.integer) for v in values):
    return 0
  return int(max(v.max() for v in values)) + 1


@dataclasses.dataclass(frozen=True, eq=False)
class Arrays:
  """Splits of a user's data. `eval` is the split evaluated during training (validation); `test` is
  evaluated at the end. Without `eval`, `data.validation_fraction` carves one from the end of `train`, or
  `test` is used; without `test`, the eval split is reported as test too. `num_classes=0` reads it from
  integer labels (max + 1)."""

  train: Any
  eval: Any = None
  test: Any = None
  num_classes: int = 0

  def describe(self) -> str:
    """What config.json records as data.name: the splits' sizes, keys, dtypes and shapes (not their
    values: cheap for any size), so a workdir refuses to resume on other arrays."""
    def split(value) -> str:
      if value is None or not isinstance(value, Mapping):
        return 'none' if value is None else f'{len(value)} records'
      arrays = {key: np.asarray(array) for key, array in sorted(value.items())}
      rows = len(next(iter(arrays.values()))) if arrays else 0
      return f'{rows} x ' + ', '.join(f'{k}:{a.dtype}{list(a.shape[1:])}' for k, a in arrays.items())
    return (f'<object jaxtrain.data.Arrays train={split(self.train)}; eval={split(self.eval)}; '
            f'test={split(self.test)}>')

  def splits(self, config, label: str = 'label') -> sources.Splits:
    train = _split('train', self.train)
    evaluation = None if self.eval is None else _split('eval', self.eval)
    test = None if self.test is None else _split('test', self.test)
    fraction = config.data.validation_fraction
    if evaluation is None and fraction > 0:
      num_val = max(1, round(fraction * pipeline.length(train)))
      train, evaluation = ({k: v[:-num_val] for k, v in train.items()},
                           {k: v[-num_val:] for k, v in train.items()})
      eval_name = 'validation'
    elif evaluation is None and test is not None:
      evaluation, eval_name = test, 'test'
    elif evaluation is None:
      raise ConfigError('Arrays has neither eval= nor test= arrays; pass one, or set '
                        '--config.data.validation_fraction=0.1 to carve a validation split from train')
    else:
      eval_name = 'validation'
    test = evaluation if test is None else test  # The same arrays: evaluation.final_metrics reuses them.
    for name, split in (('eval', evaluation), ('test', test)):
      if set(split) != set(train):
        raise ConfigError(f'data {name}= has keys {sorted(split)} but train= has {sorted(train)}; '
                          'give every split the same keys')
    train, evaluation, test = (sources.subset(split, config.data, name, label)
                               for split, name in ((train, 'train'), (evaluation, 'eval'), (test, 'test')))
    return sources.Splits(train=train, eval=evaluation, test=test, eval_name=eval_name,
                          num_classes=self.num_classes or _num_classes([train, evaluation, test], label))


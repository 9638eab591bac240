"""Weights in and out of jaxtrain: torchvision's pretrained models as the zoo's variables, and any run's
variables as safetensors.

- `from_torchvision(name, path)`: the zoo model's {'params', 'batch_stats'} from a torchvision state_dict
  (`.pth` or `.safetensors`), for ResNet-18/34/50 and ViT-B/16; `torchvision_model(name)` is the zoo
  config that builds that model.
- `init_from='torchvision:<name>:<path>'` fine-tunes from them, and `init_from='<file>.safetensors'` from
  variables `save` wrote (--mode export writes export/variables.safetensors). The config is checked
  against the file's shapes before anything is written (`check_init_from`), reading no weights.
"""

import math
import pathlib
from collections.abc import Mapping

import numpy as np
from flax import traverse_util

from jaxtrain.config import ConfigError, lookup
from jaxtrain.weights import files, torchvision

TORCHVISION_PREFIX = 'torchvision:'
HEAD = 'params/head/'  # The classifier, which fine-tuning on other classes re-initializes.
POSITIONS = 'params/pos_embedding'  # ViT's, resampled to another image size (`_resample_positions`).


def _flat(variables: Mapping) -> dict:
  return traverse_util.flatten_dict(dict(variables), sep='/')


def _architecture(name: str) -> torchvision.Architecture:
  return lookup(torchvision.ARCHITECTURES, 'the torchvision model', name)


def torchvision_model(name: str) -> dict:
  """The `model.*` config keys that build the zoo's copy of torchvision's `name`."""
  return dict(_architecture(name).model)


def _convert(name: str, weights: Mapping) -> dict:
  take = torchvision.StateDict(dict(weights), name)
  flat = _architecture(name).convert(take)
  take.check_all_used()
  return {path: value.astype(np.float32) for path, value in flat.items()}


def from_torchvision(name: str, weights) -> dict:
  """{'params': ..., 'batch_stats': ...} of the zoo model `torchvision_model(name)` builds, from torchvision's
  `name` state_dict: a `.pth` or `.safetensors` path, or a mapping of names to arrays (or CPU tensors)."""
  if isinstance(weights, Mapping):
    weights = {key: np.asarray(value) for key, value in weights.items()}
  else:
    weights = files.read(weights)
  return traverse_util.unflatten_dict(_convert(name, weights), sep='/')


def save(variables: Mapping, path, metadata: Mapping[str, str] | None = None) -> None:
  """`variables` ({'params': ..., 'batch_stats': ...}) as a safetensors file, keyed 'params/head/kernel'."""
  files.write({key: np.asarray(value) for key, value in _flat(variables).items()}, path, metadata)


def load(path) -> dict:
  """The nested variables of a safetensors file `save` wrote."""
  return traverse_util.unflatten_dict(files.read(path), sep='/')


def is_weight_file(init_from: str) -> bool:
  """init_from names a weight file (torchvision's, or safetensors) rather than a jaxtrain workdir."""
  return init_from.startswith(TORCHVISION_PREFIX) or init_from.endswith(files.SAFETENSORS_SUFFIXES)


def _source(init_from: str) -> tuple[str | None, pathlib.Path]:
  """(torchvision model name or None, weight file) of an init_from value."""
  if not init_from.startswith(TORCHVISION_PREFIX):
    return None, pathlib.Path(init_from)
  name, _, path = init_from[len(TORCHVISION_PREFIX):].partition(':')
  if not name or not path:
    raise ConfigError(f'init_from={init_from!r} should read torchvision:<model>:<file>, e.g. '
                      f"'torchvision:resnet50:resnet50.pth'; models: {', '.join(torchvision.ARCHITECTURES)}")
  _architecture(name)
  return name, pathlib.Path(path)


def _read(init_from: str, shapes_only: bool) -> dict:
  """The flat variables init_from's file holds (converted from torchvision's names when it is theirs)."""
  name, path = _source(init_from)
  weights = files.read(path, shapes_only)
  if not name:
    return dict(weights)
  try:
    return _convert(name, weights)
  except ConfigError as e:
    raise ConfigError(f'init_from={init_from!r}: {e}') from e


def _resample_positions(positions: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
  """ViT position embeddings (1, 1 + g*g, width) -> (1, 1 + G*G, width) for another image size: the class
  token's entry is kept and the g x g grid is resized bilinearly (as big_vision's resample_posemb)."""
  import jax  # Imported where used (start-up time).
  old, new = math.isqrt(positions.shape[1] - 1), math.isqrt(shape[1] - 1)
  grid = positions[:, 1:].reshape(1, old, old, -1)
  grid = np.asarray(jax.image.resize(grid, (1, new, new, grid.shape[-1]), 'bilinear'))
  return np.concatenate([positions[:, :1], grid.reshape(1, new * new, -1)], axis=1)


def _resamplable(have: tuple, want: tuple) -> bool:
  grid = lambda tokens: math.isqrt(tokens - 1) ** 2 == tokens - 1  # noqa: E731
  return len(have) == len(want) == 3 and have[2] == want[2] and grid(have[1]) and grid(want[1])


def _check_shapes(flat: dict, wanted: dict, init_from: str) -> None:
  """A ConfigError naming the first parameter the file lacks or holds in another shape, other than the
  head (fine-tuning replaces it) and resamplable position embeddings."""
  for path, leaf in wanted.items():
    if path not in flat:
      raise ConfigError(f'init_from={init_from!r} has no {path} {tuple(leaf.shape)}, which the model has: '
                        'the file is for another model; check model.name and its options')
    have, want = tuple(flat[path].shape), tuple(leaf.shape)
    if have != want and not path.startswith(HEAD) and not (path == POSITIONS and _resamplable(have, want)):
      raise ConfigError(f'init_from={init_from!r}: {path} is {have} in the file but {want} in the model; '
                        'the file is for another model; check model.name and its options')
  extra = [path for path in flat if path not in wanted]
  if extra:
    raise ConfigError(f'init_from={init_from!r} holds {extra[0]} {tuple(flat[extra[0]].shape)}, which the '
                      'model has not: the file is for another model; check model.name and its options')


def check_init_from(config, abstract_variables: Mapping) -> None:
  """Before anything is written: init_from's weights fit the configured model (`abstract_variables`:
  {'params', 'batch_stats'} of shapes). Reads the file's header, not its weights."""
  name, _ = _source(config.init_from)
  for key, value in (torchvision_model(name) if name else {}).items():
    if config.model[key] != value:
      raise ConfigError(f"init_from={config.init_from!r} loads torchvision's {name}, which the zoo builds "
                        f'with model.{key}={value!r}, not {config.model[key]!r}: set '
                        f'--config.model.{key}={value}')
  _check_shapes(_read(config.init_from, shapes_only=True), _flat(abstract_variables), config.init_from)


def initial_variables(init_from: str, variables: Mapping) -> dict:
  """init_from's weights as variables shaped like `variables` (a fresh model's), ViT positions resampled
  to its image size; `experiments.transfer.merge` then keeps the fresh head when the classes differ."""
  flat, wanted = _read(init_from, shapes_only=False), _flat(variables)
  _check_shapes(flat, wanted, init_from)
  if POSITIONS in flat and flat[POSITIONS].shape != wanted[POSITIONS].shape:
    flat[POSITIONS] = _resample_positions(flat[POSITIONS], tuple(wanted[POSITIONS].shape))
  return traverse_util.unflatten_dict(flat, sep='/')

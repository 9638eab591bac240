"""Transfer learning: start from another run's weights, and keep frozen layers' BatchNorm statistics.

`optim.freeze` stops the optimizer from touching frozen parameters (optim.with_rules), but a BatchNorm
layer's running statistics are not parameters: the train step takes them from the model's mutable
collection. `FrozenBatchStats` wraps the model so that, for every layer whose parameters are frozen, the
statistics that come out of a training forward pass are the ones that went in; the step itself is unchanged.
"""

import dataclasses
import json
import logging
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from jaxtrain import checkpoint, optim
from jaxtrain import config as config_lib

log = logging.getLogger('jaxtrain')


def _module(path: str) -> str:
  """'params/Block_0/BatchNorm_0/scale' -> 'Block_0/BatchNorm_0'."""
  return path.split('/', 1)[1].rsplit('/', 1)[0]


@dataclasses.dataclass(frozen=True, eq=False)
class FrozenBatchStats:
  """A Flax model whose training pass returns the old BatchNorm statistics for layers with frozen params.
  Compared by identity, like the `Model` it wraps (compiled functions are cached by it)."""

  model: Any
  optim_config: Any

  def init(self, *args, **kwargs):
    return self.model.init(*args, **kwargs)

  def initial_variables(self):
    return self.model.initial_variables()

  def forward_order(self, batch: dict) -> list[str]:
    return self.model.forward_order(batch)

  @property
  def module(self):
    return self.model.module

  def without_dropout(self) -> 'FrozenBatchStats':
    return dataclasses.replace(self, model=self.model.without_dropout())

  def apply(self, variables, *args, mutable=False, **kwargs):
    out = self.model.apply(variables, *args, mutable=mutable, **kwargs)
    if not mutable or not variables.get('batch_stats'):
      return out
    result, updated = out
    rules = optim.parameter_rules(self.optim_config, variables['params'])
    frozen = {_module(path) for path, (_, factor) in rules.items() if factor == 0.0}
    keep = lambda path, old, new: old if _module(optim.parameter_path(path)) in frozen else new  # noqa: E731
    stats = jax.tree_util.tree_map_with_path(keep, variables['batch_stats'], updated['batch_stats'])
    return result, {**updated, 'batch_stats': stats}


def source_config(path: str, key: str = 'init_from') -> ml_collections.ConfigDict:
  """The config of the run that `key` (init_from, ensemble.members, ...) names (a workdir or its checkpoints
  folder), from its config.json; a ConfigError naming `key` when there is no trained run there."""
  folder = checkpoint.checkpoint_dir(pathlib.Path(path))
  config_file = next((p / 'config.json' for p in (folder.parent, folder) if (p / 'config.json').exists()),
                     None)
  if not folder.is_dir() or config_file is None:
    raise config_lib.ConfigError(f'{key} names {str(path)!r}, which holds no trained run (a workdir with '
                                 'config.json and checkpoints/, or its checkpoints folder); train it first')
  source = config_lib.defaults()
  config_lib.override(source, config_lib.flatten(json.loads(config_file.read_text())))
  return source


def _key(path) -> str:
  return jax.tree_util.keystr(tuple(path), simple=True, separator='/')


def _flat(tree) -> dict:
  return {_key(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def merge(target: dict, source: dict) -> tuple[dict, list[tuple[str, str, str]]]:
  """`target` ({'params': ..., 'batch_stats': ...}) with every array of `source` whose path and shape match;
  the rest keeps its initialization. Returns (merged, [(path, 'loaded'|'skipped'|'new'|'unused', why)])."""
  wanted, given = _flat(target), _flat(source)
  report = []
  for path, leaf in wanted.items():
    if path not in given:
      report.append((path, 'new', f'not in the source; initialized {tuple(leaf.shape)}'))
    elif given[path].shape != leaf.shape:
      report.append((path, 'skipped',
                     f'source {tuple(given[path].shape)} != {tuple(leaf.shape)}; initialized'))
    else:
      report.append((path, 'loaded', str(tuple(leaf.shape))))
  report += [(path, 'unused', 'in the source only') for path in given if path not in wanted]
  loaded = {path for path, what, _ in report if what == 'loaded'}
  merged = jax.tree_util.tree_map_with_path(
      lambda p, leaf: given[_key(p)] if _key(p) in loaded else leaf, target)
  return merged, report


def initialize(state, source: dict, path: str):
  """`state` (fresh) with the matching parameters and BatchNorm statistics of `source` ({'params',
  'batch_stats'}); logs the table of what was loaded and skipped. The moving average, when kept, restarts
  from the loaded weights."""
  merged, report = merge({'params': state.params, 'batch_stats': state.batch_stats}, source)
  width = max(len(p) for p, _, _ in report)
  counts = {what: sum(w == what for _, w, _ in report) for what in ('loaded', 'skipped', 'new', 'unused')}
  log.info('init_from %s: %s\n%s', path, ', '.join(f'{n} {what}' for what, n in counts.items()),
           '\n'.join(f'{p:<{width}}  {what:<7}  {why}' for p, what, why in report))
  params = merged['params']
  return state.replace(params=params, batch_stats=merged['batch_stats'],
                       ema=jax.tree.map(jnp.copy, params) if state.ema else state.ema)

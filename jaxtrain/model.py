"""The adapter every model goes through: a Flax Linen or NNX module as pure functions of variables.

The steps are written once against Linen's calling convention, `init(rng, batch) -> variables` and
`apply(variables, batch, train=, rngs=, mutable=, capture_intermediates=)`, where `variables` is
`{'params': ..., 'batch_stats': ...}` of plain nested dicts. `Model` gives that convention to any module:

* the batch keys named by `model.inputs` (default `('image',)`) are passed positionally;
* `train=` (or `deterministic=not train`) is passed when the module's `__call__` takes it; an NNX module
  without either is switched with its own `.train()` / `.eval()`;
* `without_dropout()` gives the same model in training mode (BatchNorm updating its statistics) with every
  dropout layer passing its input through: Linen's `nn.Dropout` and the zoo's `layers.Dropout` are
  intercepted, NNX's `nnx.Dropout` made deterministic. The doctor's overfit-one-batch check needs exactly
  that, on any model; regularization written by hand (a `make_rng('dropout')` of a module's own) is out of
  its reach, so write it as a dropout layer or take `train`/`deterministic`;
* an NNX module is split into its `nnx.Param`s ('params') and its other variables, e.g. `BatchStat`
  ('batch_stats'), and merged again inside the pure step (`nnx.split` / `nnx.merge`), so its state is one
  pytree that jit, shardings and orbax handle like Linen's. Its `nnx.Rngs` streams are re-keyed from the
  step's key, so dropout is a function of (seed, step) as for Linen and a resumed run draws the same masks.

An NNX module arrives initialized: its own `nnx.Rngs` seed decides its initial weights (there is no generic
way to re-run its constructor), while `seed` still decides dropout and the data order.
"""

import contextlib
import dataclasses
import inspect
import sys
from typing import Any

import flax.linen as nn
import jax

from jaxtrain import models
from jaxtrain.config import ConfigError
from jaxtrain.models import layers

DEFAULT_INPUTS = ('image',)


def _nnx():
  """flax.nnx where the program has imported it, else None. Only a program that imported flax.nnx can hold
  an NNX module, so a Linen run never imports it (0.13 s of each command's start on a 2-core CPU)."""
  return sys.modules.get('flax.nnx')


def is_nnx_module(obj) -> bool:
  nnx = _nnx()
  return nnx is not None and isinstance(obj, nnx.Module)


def is_nnx_class(obj) -> bool:
  nnx = _nnx()
  return nnx is not None and isinstance(obj, type) and issubclass(obj, nnx.Module)


def is_module(obj) -> bool:
  """A Flax module of either API."""
  return isinstance(obj, nn.Module) or is_nnx_module(obj)


def _mode_keyword(call) -> str | None:
  """'train' or 'deterministic' when the module's __call__ takes that keyword, else None."""
  try:
    parameters = inspect.signature(call).parameters
  except (TypeError, ValueError):
    return None
  return next((name for name in ('train', 'deterministic') if name in parameters), None)


def _mode(keyword: str | None, train: bool) -> dict:
  if keyword == 'train':
    return {'train': train}
  if keyword == 'deterministic':
    return {'deterministic': not train}
  return {}


def _key(entry) -> str:
  return str(getattr(entry, 'key', getattr(entry, 'idx', entry)))


def _plain(state) -> dict:
  """An nnx.State as nested dicts with string keys (list indices become '0', '1', ...) and array leaves."""
  tree = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
    keys = [_key(entry) for entry in path if not isinstance(entry, jax.tree_util.GetAttrKey)]
    node = tree
    for key in keys[:-1]:
      node = node.setdefault(key, {})
    node[keys[-1]] = leaf
  return tree


def _state(template, tree: dict):
  """The inverse of `_plain`: `tree`'s leaves placed into the structure of `template`."""
  paths, treedef = jax.tree_util.tree_flatten_with_path(template)
  leaves = []
  for path, _ in paths:
    node = tree
    for entry in path:
      if not isinstance(entry, jax.tree_util.GetAttrKey):
        node = node[_key(entry)]
    leaves.append(node)
  return jax.tree_util.tree_unflatten(treedef, leaves)


@dataclasses.dataclass(frozen=True, eq=False)
class Model:
  """A module with the calling convention of the steps. Compared by identity: two adapters of equal-looking
  modules from a re-run notebook cell are different programs (the compiled-program cache relies on it)."""

  module: Any
  inputs: tuple[str, ...] = DEFAULT_INPUTS
  dropout: bool = True  # False: dropout layers pass their input through, in training mode too.

  @property
  def is_nnx(self) -> bool:
    return is_nnx_module(self.module)

  @property
  def name(self) -> str:
    return type(self.module).__name__

  def _args(self, batch: dict) -> list:
    return [batch[key] for key in self.inputs]

  def without_dropout(self) -> 'Model':
    return dataclasses.replace(self, dropout=False)

  # Linen ---------------------------------------------------------------------------------------------

  def initial_variables(self) -> dict | None:
    """An NNX module's variables as they are now ({'params', 'batch_stats'}); None for Linen, which is
    initialized from the seed. Passed to the compiled `init` as an argument (`state.create`), so the
    weights are never constants baked into a program."""
    if not self.is_nnx:
      return None
    nnx = _nnx()
    _, params, _, rest = nnx.split(self.module, nnx.Param, nnx.RngState, ...)
    return {'params': _plain(params), 'batch_stats': _plain(rest)}

  def init(self, rng, batch: dict, initial: dict | None = None) -> dict:
    """{'params', 'batch_stats'}: Linen's from `rng` on `batch`; an NNX module's `initial` variables."""
    if not self.is_nnx:
      keyword = _mode_keyword(type(self.module).__call__)
      variables = self.module.init({'params': rng, 'dropout': rng}, *self._args(batch),
                                   **_mode(keyword, False))
      return {key: value for key, value in variables.items() if key in ('params', 'batch_stats')}
    del rng  # The module is already initialized (see the module docstring).
    return initial if initial is not None else self.initial_variables()

  def apply(self, variables: dict, batch: dict, *, train: bool, rngs: dict | None = None,
            mutable=False, capture_intermediates=False):
    """The outputs, and with `mutable` also the updated {'batch_stats', 'intermediates'} as Linen gives.

    `capture_intermediates` is Linen's: an NNX module captures none (diagnostics that need activations
    report themselves skipped). Under pmap semantics a user's module gets a dropout key per device (the
    zoo's layers draw partition-invariant masks from the shared key themselves).
    """
    axis = layers.current_data_axis()
    if rngs and axis and not models.is_zoo(self.module):
      rngs = {name: jax.random.fold_in(key, jax.lax.axis_index(axis)) for name, key in rngs.items()}
    if not self.is_nnx:
      keyword = _mode_keyword(type(self.module).__call__)
      variables = {key: value for key, value in variables.items() if value or key == 'params'}
      with nn.intercept_methods(_dropout_off) if not self.dropout else contextlib.nullcontext():
        return self.module.apply(variables, *self._args(batch), **_mode(keyword, train), rngs=rngs,
                                 mutable=mutable, capture_intermediates=capture_intermediates)
    nnx = _nnx()
    graphdef, params, rng_state, rest = nnx.split(self.module, nnx.Param, nnx.RngState, ...)
    # Always fresh RNG variables: the split ones belong to the module outside this trace, which NNX (rightly)
    # refuses to mutate from inside it. Without a dropout key (eval, probes), a fixed one.
    key = rngs['dropout'] if rngs and 'dropout' in rngs else jax.random.PRNGKey(0)
    module = nnx.merge(graphdef, _state(params, variables['params']), _rekeyed(rng_state, key),
                       _state(rest, variables.get('batch_stats') or {}))
    keyword = _mode_keyword(type(module).__call__)
    if keyword is None:
      module.train() if train else module.eval()
    if not self.dropout:
      for _, layer in nnx.iter_modules(module):
        if isinstance(layer, nnx.Dropout):
          layer.deterministic = True
    outputs = module(*self._args(batch), **_mode(keyword, train))
    if not mutable:
      return outputs
    _, _, _, updated = nnx.split(module, nnx.Param, nnx.RngState, ...)
    return outputs, {'batch_stats': _plain(updated), 'intermediates': {}}

  def with_variables(self, variables: dict):
    """The module holding `variables` ({'params', 'batch_stats'}, as a TrainState has them): a new NNX
    module (the one passed in is unchanged), or the Linen module bound to them, ready to call."""
    if not self.is_nnx:
      return self.module.bind({key: value for key, value in variables.items() if value or key == 'params'})
    nnx = _nnx()
    graphdef, params, rng_state, rest = nnx.split(self.module, nnx.Param, nnx.RngState, ...)
    return nnx.merge(graphdef, _state(params, variables['params']), rng_state,
                     _state(rest, variables.get('batch_stats') or {}))

  def forward_order(self, batch: dict) -> list[str]:
    """Module paths in the order the forward pass calls them (input first), traced without computing.

    Pytrees sort dict keys ('Block_10' < 'Block_2'), so "early vs late layers" needs the call order. For
    NNX, the order in which the submodules were assigned in `__init__`, which is usually the forward order.
    """
    if self.is_nnx:
      return list(_definition_order(self.module))
    order = []

    def record(call, args, kwargs, context):
      path = '/'.join(context.module.path)
      if context.method_name == '__call__' and path not in order:
        order.append(path)
      return call(*args, **kwargs)

    with nn.intercept_methods(record):
      jax.eval_shape(lambda: self.init(jax.random.PRNGKey(0), batch))
    return order


def _dropout_off(call, args, kwargs, context):
  """A Linen method interceptor: a dropout layer's call returns its input; every other call runs."""
  if context.method_name == '__call__' and isinstance(context.module, (nn.Dropout, layers.Dropout)):
    return args[0] if args else kwargs['inputs']
  return call(*args, **kwargs)


def _definition_order(module, prefix: str = ''):
  """Paths of an NNX module's submodules ('hidden', 'blocks/0/linear'), in the order they were assigned."""
  nnx = _nnx()
  for name, value in vars(module).items():
    if name.startswith('_'):
      continue
    children = enumerate(value) if isinstance(value, (list, tuple, nnx.List)) else [(None, value)]
    for index, child in children:
      if isinstance(child, nnx.Module):
        path = f'{prefix}{name}' if index is None else f'{prefix}{name}/{index}'
        yield path
        yield from _definition_order(child, path + '/')


def _rekeyed(rng_state, key):
  """Every RNG stream's key replaced by one drawn from `key` (its counter reset), in a fixed order."""
  paths, treedef = jax.tree_util.tree_flatten_with_path(rng_state)
  leaves = []
  for index, (path, leaf) in enumerate(paths):
    names = [_key(entry) for entry in path if not isinstance(entry, jax.tree_util.GetAttrKey)]
    if names[-1] == 'key':
      new = jax.random.fold_in(key, index)
      typed = jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)
      leaves.append(jax.random.wrap_key_data(new) if typed else new)
    else:
      leaves.append(jax.numpy.zeros_like(leaf))
  return jax.tree_util.tree_unflatten(treedef, leaves)


def wrap(module, inputs=DEFAULT_INPUTS, key: str = 'model') -> Model:
  """A Model for `module` (a Model is returned as it is); a ConfigError for anything else."""
  if isinstance(module, Model):
    return module
  if not is_module(module):
    raise ConfigError(f'{key} is of type {type(module).__name__}, not a flax.linen.Module or '
                      'flax.nnx.Module; pass a Flax module')
  return Model(module, tuple(inputs))

"""Names -> objects: the one place a config's `model.name`, `task.name` or `data.name` becomes an object.

A name is a zoo entry ('cnn', 'classification', 'digits', 'tfds:mnist') or an import path
'package.module:attribute' to a user's object:

* `model.name='my_pkg.nets:TinyNet'`: a Flax Linen or NNX Module class (or a function returning a module),
  called with `model.kwargs`; an NNX class that takes `rngs` also gets `nnx.Rngs(seed)`. A module instance
  is used as it is.
* `task.name='my_pkg.losses:focal'`: a `jaxtrain.Task`, or a loss function `(outputs, batch) -> per-example`.
* `data.name='my_pkg.data:load'`: a function returning a data object (`jaxtrain.data.Arrays`), or one.

An object passed to `fit(model=, data=, task=)` replaces the name. Every mistake is a ConfigError naming the
key (module not found, attribute missing, not a Module, a call that fails), so nothing is written.
"""

import importlib
import inspect

from jaxtrain import models, tasks
from jaxtrain.config import ConfigError
from jaxtrain.model import Model, is_module, is_nnx_class, wrap

OBJECT = '<object '  # How config.json records an object passed to fit(): '<object my_module.TinyNet>'.


# Names with a colon that are not import paths: data sets read by jaxtrain/data/sources.py.
SOURCE_PREFIXES = ('tfds:', 'text:', 'array_record:')


def is_import_path(name: str) -> bool:
  return ':' in name and not name.startswith((*SOURCE_PREFIXES, OBJECT))


def _passed_again(key: str, name: str, given) -> None:
  """A config that records a passed object can be used again only with the object."""
  if given is None and name.startswith(OBJECT):
    kind = key.split('.')[0]
    raise ConfigError(f'{key}={name!r} records an object passed to jaxtrain.fit; pass it again '
                      f'({kind}=...) to use this run')


def first_line(error: Exception) -> str:
  """'TypeError: <the first line of its message>': a user's exception, as part of one error line."""
  text = str(error).strip().splitlines()
  return f'{type(error).__name__}: {text[0][:200].rstrip(".")}' if text else type(error).__name__


def import_object(key: str, path: str):
  """The attribute named by 'package.module:attribute' (dots inside the attribute walk into it)."""
  module_name, _, attribute = path.partition(':')
  try:
    obj = importlib.import_module(module_name)
  except ImportError as e:
    raise ConfigError(f'{key}={path!r}: cannot import module {module_name!r} ({first_line(e)}); check the '
                      'name and that its folder is on PYTHONPATH') from None
  except Exception as e:  # noqa: BLE001 - the user's module failed while importing.
    raise ConfigError(f'{key}={path!r}: importing {module_name!r} failed ({first_line(e)})') from None
  for part in attribute.split('.'):
    if not hasattr(obj, part):
      public = sorted(name for name in dir(obj) if not name.startswith('_'))[:12]
      raise ConfigError(f'{key}={path!r}: {module_name!r} has no attribute {attribute!r}; it has: '
                        f'{", ".join(public)}') from None
    obj = getattr(obj, part)
  return obj


def _call(key: str, path: str, fn, kwargs: dict):
  try:
    return fn(**kwargs)
  except Exception as e:  # noqa: BLE001 - a user's constructor may raise anything.
    shown = {k: v for k, v in kwargs.items() if k != 'rngs'}
    raise ConfigError(f'{key}={path!r}: calling it with {shown} failed ({first_line(e)}); check '
                      f'{key.rsplit(".", 1)[0]}.kwargs and its signature') from None


def _takes(fn, name: str) -> bool:
  try:
    return name in inspect.signature(fn).parameters
  except (TypeError, ValueError):
    return False


def user_module(config, path: str):
  """The module an import path names, built with `model.kwargs` (+ `rngs` for NNX classes)."""
  obj = import_object('model.name', path)
  if is_module(obj):
    return obj
  if not callable(obj):
    raise ConfigError(f'model.name={path!r} is of type {type(obj).__name__}, not a Flax Module class or a '
                      'function that returns one')
  kwargs = dict(config.model.kwargs)
  if is_nnx_class(obj) and _takes(obj.__init__, 'rngs'):
    from flax import nnx  # noqa: PLC0415 - imported already by the module that defines `obj`.

    kwargs.setdefault('rngs', nnx.Rngs(config.seed))
  module = _call('model.name', path, obj, kwargs)
  if not is_module(module):
    raise ConfigError(f'model.name={path!r} gave an object of type {type(module).__name__}, not a '
                      'flax.linen.Module or flax.nnx.Module')
  return module


def model(config, head_width: int, given=None) -> Model:
  """The run's model: `given`, else the import path's module, else the zoo's (built with `head_width`)."""
  inputs = tuple(config.model.inputs)
  _passed_again('model.name', config.model.name, given)
  if given is not None:
    return wrap(given, inputs)
  if is_import_path(config.model.name):
    return wrap(user_module(config, config.model.name), inputs)
  return wrap(models.build(config.model, head_width), inputs)


def task(config, given=None) -> tasks.Task:
  """The run's task: `given`, else the import path's Task (or loss function), else the zoo's."""
  _passed_again('task.name', config.task.name, given)
  if given is None and not is_import_path(config.task.name):
    return tasks.build(config.task)
  key = 'task'
  obj = given
  if obj is None:
    key, obj = 'task.name', import_object('task.name', config.task.name)
  if isinstance(obj, tasks.Task):
    return obj
  if callable(obj):
    return tasks.Task(loss=obj, name=getattr(obj, '__name__', 'custom'))
  raise ConfigError(f'{key} is of type {type(obj).__name__}; give a jaxtrain.Task or a loss function '
                    '(outputs, batch) -> one loss per example')


def data(config, given=None):
  """The run's data object (`given`, or what the import path's function returns); None for zoo names."""
  _passed_again('data.name', config.data.name, given)
  if given is None and not is_import_path(config.data.name):
    return None
  key, obj = 'data', given
  if obj is None:
    key, obj = 'data.name', import_object('data.name', config.data.name)
    if callable(obj) and (isinstance(obj, type) or not hasattr(obj, 'splits')):
      obj = _call(key, config.data.name, obj, {})
  if isinstance(obj, type) or not hasattr(obj, 'splits'):
    raise ConfigError(f'{key} is of type {type(obj).__name__}; give jaxtrain.data.Arrays(train={{...}}, '
                      'eval={...}) or a function that returns one')
  return obj


def entries(config, model_given: bool, task_given: bool) -> tuple:
  """What the config's model and task names resolve to now (a zoo builder, an imported object; None for
  a name an object replaces): part of the compiled-program cache's key, so a name registered again, or a
  module reloaded, is compiled anew."""
  return tuple(None if given else import_object(key, name) if is_import_path(name) else zoo.get(name)
               for key, name, zoo, given in (('model.name', config.model.name, models.MODELS, model_given),
                                             ('task.name', config.task.name, tasks.TASKS, task_given)))


def describe(obj) -> str:
  """What config.json records for an object passed to fit(): '<object module.QualName>' of its class (or
  function): enough to refuse another model class on resume, and never mistaken for an import path."""
  if hasattr(obj, 'describe') and not isinstance(obj, type):  # E.g. Arrays: its sizes and shapes too.
    return obj.describe()
  kind = obj if isinstance(obj, type) or callable(obj) and hasattr(obj, '__qualname__') else type(obj)
  return f'{OBJECT}{kind.__module__}.{kind.__qualname__}>'

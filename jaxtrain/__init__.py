"""jaxtrain: a functional training framework on JAX and Flax.

The names below are imported on first use (PEP 562), so `import jaxtrain` costs almost nothing and a
command or a Grain worker process pays only for what it touches.
"""

import importlib

__version__ = '0.1.0'

# name -> the module that defines it ('data' and 'weights' are the subpackages themselves).
_EXPORTS = {
    'Callback': 'jaxtrain.engine',
    'ConfigError': 'jaxtrain.config',
    'NonFiniteError': 'jaxtrain.callbacks.nonfinite',
    'Preempted': 'jaxtrain.checkpoint',
    'Run': 'jaxtrain.history',
    'Task': 'jaxtrain.tasks',
    'Trainer': 'jaxtrain.engine',
    'data': 'jaxtrain.data',
    'doctor': 'jaxtrain.diagnostics.doctor',
    'evaluate': 'jaxtrain.api',
    'export': 'jaxtrain.serving',
    'fit': 'jaxtrain.api',
    'generate': 'jaxtrain.generation',
    'load_config': 'jaxtrain.config',
    'lr_find': 'jaxtrain.diagnostics.lr_find',
    'predict': 'jaxtrain.serving',
    'sweep': 'jaxtrain.experiments.sweep',
    'weights': 'jaxtrain.weights',
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
  if name not in _EXPORTS:
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
  module = importlib.import_module(_EXPORTS[name])
  value = module if name in ('data', 'weights') else getattr(module, name)
  globals()[name] = value
  return value


def __dir__() -> list[str]:
  return sorted([*globals(), *_EXPORTS])

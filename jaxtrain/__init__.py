"""jaxtrain: a functional training framework on JAX and Flax."""

from jaxtrain.config import ConfigError, load_config
from jaxtrain.loop import Run, evaluate, fit

__version__ = '0.1.0'
__all__ = ['ConfigError', 'Run', 'evaluate', 'fit', 'load_config']

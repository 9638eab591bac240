"""jaxtrain: a functional training framework on JAX and Flax."""

from jaxtrain.checkpoint import Preempted
from jaxtrain.config import ConfigError, load_config
from jaxtrain.diagnostics.doctor import doctor
from jaxtrain.diagnostics.lr_find import lr_find
from jaxtrain.diagnostics.nan import NonFiniteError
from jaxtrain.experiments.sweep import sweep
from jaxtrain.loop import Run, evaluate, fit

__version__ = '0.1.0'
__all__ = ['ConfigError', 'NonFiniteError', 'Preempted', 'Run', 'doctor', 'evaluate', 'fit', 'load_config',
           'lr_find', 'sweep']

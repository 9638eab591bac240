"""jaxtrain: a functional training framework on JAX and Flax."""

from jaxtrain import data
from jaxtrain.api import evaluate, fit
from jaxtrain.callbacks.nonfinite import NonFiniteError
from jaxtrain.checkpoint import Preempted
from jaxtrain.config import ConfigError, load_config
from jaxtrain.diagnostics.doctor import doctor
from jaxtrain.diagnostics.lr_find import lr_find
from jaxtrain.engine import Callback, Trainer
from jaxtrain.experiments.sweep import sweep
from jaxtrain.generation import generate
from jaxtrain.history import Run
from jaxtrain.tasks import Task

__version__ = '0.1.0'
__all__ = ['Callback', 'ConfigError', 'NonFiniteError', 'Preempted', 'Run', 'Task', 'Trainer', 'data',
           'doctor', 'evaluate', 'fit', 'generate', 'load_config', 'lr_find', 'sweep']

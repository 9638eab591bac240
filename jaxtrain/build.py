"""Builds and checks every piece of a run from its config and the objects passed in; touches no file.

Everything that can reject a run (config values, names, a user's model, data and task, device counts, a
workdir holding another run) is checked here, before the workdir is touched, so a bad command never damages
an existing run. `prepare` is what `fit`, `evaluate`, the doctor, the LR finder and the experiments build on.
"""

import dataclasses
import functools
import json
import logging
import pathlib
from collections.abc import Callable

import jax
import ml_collections
import numpy as np

from jaxtrain import checkpoint, compile_cache, data, models, optim, parallel, registry, steps, tasks
from jaxtrain import config as config_lib
from jaxtrain import model as model_lib
from jaxtrain import state as state_lib
from jaxtrain.data import augment
from jaxtrain.experiments import transfer

log = logging.getLogger('jaxtrain')

CONFIG_FILE = 'config.json'


@dataclasses.dataclass(frozen=True)
class Program:
  """What a run compiles: the model, its optimizer and the jitted functions."""

  model: model_lib.Model
  optimizer: optim.Optimizer
  task: tasks.Task
  augment: Callable  # (rng, images) -> images, inside the train step.
  create_state: Callable  # seed -> a fresh state, born on the devices.
  train_step: Callable  # (state, chunk, k) -> (state, metrics), trained on chunk[k].
  diag_step: Callable | None  # The same, with per-layer statistics in metrics['diag'].
  eval_step: Callable  # (state, padded batch) -> sums.


class _Same:
  """A cache key that is equal only to itself: holds a user's object (keeping it alive, so its id is never
  reused) and compares by identity, so a model redefined in a notebook never meets an old program."""

  def __init__(self, obj):
    self.obj = obj

  def __eq__(self, other):
    return isinstance(other, _Same) and other.obj is self.obj

  def __hash__(self):
    return id(self.obj)


def _program_config(config: ml_collections.ConfigDict) -> ml_collections.FrozenConfigDict:
  """The parts of a config that the compiled functions depend on (not the seed, paths or durations)."""
  return ml_collections.FrozenConfigDict({
      'seed': config.seed if registry.is_import_path(config.model.name) else 0,  # nnx.Rngs(seed).
      'model': config.model, 'optim': config.optim, 'task': config.task,
      'data': {key: config.data[key] for key in augment.CONFIG_KEYS},
      'train': {'nonfinite': config.train.nonfinite}, 'diagnose': config.diagnostics.every_steps > 0})


def _spec(example: dict) -> tuple:
  return tuple((key, value.shape[1:], str(value.dtype)) for key, value in sorted(example.items()))


@functools.lru_cache(maxsize=8)
def _program(config: ml_collections.FrozenConfigDict, given_model: _Same | None, given_task: _Same | None,
             entries: tuple[_Same, ...], num_classes: int, spec: tuple, total_steps: int,
             strategy: parallel.Strategy) -> Program:
  """Cached by its inputs (`config` from `_program_config`; objects, and what the names resolve to
  (`entries`), by identity), so fitting the same model again in one process (a re-run notebook cell,
  another seed) reuses the jitted functions, and a redefined one never meets an old program."""
  del entries  # A key only: `registry` resolves the names again below.
  config = ml_collections.ConfigDict(config.to_dict())
  task = registry.task(config, given_task and given_task.obj)
  model = registry.model(config, _head_width(task, num_classes), given_model and given_model.obj)
  if config.optim.freeze:
    model = transfer.FrozenBatchStats(model, config.optim)
  optimizer = optim.build(config.optim, total_steps)
  ema = config.optim.ema_decay > 0
  augment_fn = augment.build(config.data)
  make_step = functools.partial(steps.make_train_step, model, optimizer, config.optim, config.train.nonfinite,
                                task, augment_fn)
  example = {key: np.zeros((1, *shape), dtype) for key, shape, dtype in spec}
  create = functools.partial(state_lib.create, model, optimizer.tx, example, ema=ema)
  abstract_state = jax.eval_shape(create, 0)
  return Program(
      model=model, optimizer=optimizer, task=task, augment=augment_fn,
      create_state=strategy.jit_create_state(create),
      train_step=strategy.jit_chunk_train_step(make_step(), abstract_state),
      diag_step=strategy.jit_chunk_train_step(make_step(diagnose=config.model.activation), abstract_state)
      if config.diagnose else None,
      eval_step=strategy.jit_eval_step(
          steps.make_eval_step(model, task, use_ema=ema and config.optim.ema_eval), abstract_state))


def _head_width(task: tasks.Task, num_classes: int) -> int:
  """The width a zoo model's last layer is built with (a user's model ignores it)."""
  return task.head(num_classes) if task.head else num_classes


@dataclasses.dataclass(frozen=True)
class Experiment:
  """The pieces of a run, built and validated from its config and objects."""

  config: ml_collections.ConfigDict
  splits: data.Splits
  program: Program
  strategy: parallel.Strategy
  steps_per_epoch: int
  total_steps: int
  example: dict  # One example batch of zeros, shaped and typed like the data after normalization.
  metrics: tuple[str, ...]  # What an evaluation reports: 'eval/loss', 'eval/accuracy', ...

  def new_state(self):
    return self.program.create_state(self.config.seed)

  @property
  def user_model(self) -> bool:
    """A model from outside the zoo (an object or an import path): zoo-only diagnostics do not apply."""
    return self.config.model.name not in models.MODELS


# Keys that define what a workdir's checkpoints and normalization.json are: a run resumes only with the same.
_RUN_DEFINING = ('seed', 'model.', 'data.name', 'data.batch_size', 'data.validation_fraction',
                 'data.stats_max_examples', 'data.normalize')


def _check_resumable(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> None:
  """A workdir holding another run (other model, data or seed) is an error, not something to overwrite."""
  path = workdir / CONFIG_FILE
  if not path.exists() or not (workdir / checkpoint.CHECKPOINT_DIR).is_dir():
    return
  before = config_lib.flatten(json.loads(path.read_text()))
  now = config_lib.flatten(json.loads(json.dumps(config.to_dict())))
  for key in sorted(now):
    if key.startswith(_RUN_DEFINING) and key in before and before[key] != now[key]:
      raise config_lib.ConfigError(
          f'{workdir} holds a run with {key}={before[key]!r}, this config has {now[key]!r}; '
          'use another --workdir to start a new run')


def read_only(directory: pathlib.Path, config) -> checkpoint.Checkpointer:
  return checkpoint.Checkpointer(directory, config.checkpoint, read_only=True)


def with_objects(config: ml_collections.ConfigDict | None, model=None, data=None, task=None):
  """A copy of `config` (the defaults when None) whose names record the objects passed in, so config.json
  says what was trained and a workdir of another model class is refused on resume."""
  config = config_lib.defaults() if config is None else ml_collections.ConfigDict(config.to_dict())
  for key, obj in (('model', model), ('data', data), ('task', task)):
    if obj is not None:
      inner = obj.module if isinstance(obj, model_lib.Model) else obj
      config[key].name = registry.describe(inner.loss if isinstance(inner, tasks.Task) else inner)
  return config


def _first_line(error: Exception) -> str:
  lines = str(error).strip().splitlines()
  return f'{type(error).__name__}: {lines[0][:300]}' if lines else type(error).__name__


def _checked_example(exp_program: Program, example: dict, config, data_keys) -> tuple:
  """The model's abstract outputs on `example`, or a ConfigError naming what does not fit."""
  missing = [key for key in config.model.inputs if key not in data_keys]
  if missing:
    raise config_lib.ConfigError(
        f'model.inputs={tuple(config.model.inputs)} names {missing}, but the data has keys '
        f'{sorted(data_keys)}; '
        'set --config.model.inputs to the keys the model takes')
  if exp_program.task.label not in data_keys:
    raise config_lib.ConfigError(
        f'the task reads labels from {exp_program.task.label!r}, but the data has keys {sorted(data_keys)}; '
        'add that key or give Task(label=...)')
  try:
    abstract_state = jax.eval_shape(exp_program.create_state, 0)
    return abstract_state, jax.eval_shape(lambda s: exp_program.model.apply(
        state_lib.variables(s), example, train=False), abstract_state)
  except config_lib.ConfigError:
    raise
  except Exception as e:  # noqa: BLE001 - a user's model may raise anything on a wrong input.
    shapes = {key: f'{value.dtype}{list(value.shape)}' for key, value in example.items()}
    raise config_lib.ConfigError(f'model {config.model.name!r} fails on a batch {shapes}: {_first_line(e)}; '
                                 'check model.inputs and the model\'s input shapes') from None


def prepare(config: ml_collections.ConfigDict, workdir: pathlib.Path | None, *, model=None, data_source=None,
            task=None) -> Experiment:
  """Builds and checks every piece of the run; touches no file."""
  config_lib.validate(config)
  compile_cache.enable(config)  # Before anything compiles: a later process then loads these programs.
  if workdir and workdir.exists() and not workdir.is_dir():
    raise config_lib.ConfigError(f'workdir {str(workdir)!r} is a file; pass a directory with --workdir')
  if config.data.augment != 'none' and 'image' not in config.data.normalize:
    raise config_lib.ConfigError(f'data.augment={config.data.augment!r} works on the \'image\' key, which '
                                 'is not normalized here; use --config.data.augment=none')
  label = registry.task(config, task).label
  splits = data.load(config, registry.data(config, data_source), label)
  if config.data.augment != 'none' and 'image' not in splits.keys:
    raise config_lib.ConfigError(f'data.augment={config.data.augment!r} needs an \'image\' key; the data '
                                 f'has {sorted(splits.keys)}; use --config.data.augment=none')
  num_train = data.length(splits.train)
  steps_per_epoch = num_train // config.data.batch_size
  if steps_per_epoch == 0:
    raise config_lib.ConfigError(
        f'data.batch_size={config.data.batch_size} is larger than the {num_train} training '
        'examples; use a smaller batch')
  total = config_lib.total_steps(config, steps_per_epoch)
  strategy = parallel.make(config.parallel, {'data.batch_size': config.data.batch_size,
                                             'data.eval_batch_size': config.data.eval_batch_size})
  stats = data.compute_stats({k: v[:1] for k, v in splits.train.items()}, 1, tuple(config.data.normalize))
  normalize_keys = {key for key in stats if key != 'num_examples'}
  example = {key: np.zeros((1, *value.shape[1:]),
                           np.float32 if key in normalize_keys else data.device_dtype(value))
             for key, value in splits.train.items()}
  program = _program(_program_config(config), model is not None and _Same(model) or None,
                     task is not None and _Same(task) or None,
                     tuple(map(_Same, registry.entries(config, model is not None, task is not None))),
                     splits.num_classes,
                     _spec(example), total, strategy)
  abstract_state, outputs = _checked_example(program, example, config, splits.keys)
  if program.task.check:
    program.task.check(outputs.shape[1:], splits.num_classes)
  try:
    program.task.check_outputs(outputs, example)
    names = program.task.metric_names(outputs, example)
  except config_lib.ConfigError:
    raise
  except Exception as e:  # noqa: BLE001 - a user's loss may raise anything on the model's outputs.
    raise config_lib.ConfigError(f'the task\'s loss or metrics fail on the model\'s outputs: '
                                 f'{_first_line(e)}; check that they take (outputs, batch)') from None
  metrics = tuple(f'eval/{name}' for name in names)
  config_lib.check_monitors(config, metrics)
  if config.optim.freeze or config.optim.lr_multipliers:
    log.info('Optimizer rules per parameter:\n%s',
             optim.rules_table(optim.parameter_rules(config.optim, abstract_state.params)))
  if config.init_from:
    transfer.source_config(config.init_from)
  if workdir and (workdir / checkpoint.CHECKPOINT_DIR).is_dir():
    read_only(workdir / checkpoint.CHECKPOINT_DIR, config).check_fits(abstract_state)
    _check_resumable(config, workdir)
  if config.checkpoint.restore_from:
    source = checkpoint.checkpoint_dir(config.checkpoint.restore_from)
    if not source.is_dir() or not read_only(source, config).steps():
      raise config_lib.ConfigError(
          f'checkpoint.restore_from={config.checkpoint.restore_from!r} holds no checkpoint; '
          'give a workdir or its checkpoints folder')
    read_only(source, config).check_fits(abstract_state)
  return Experiment(config=config, splits=splits, program=program, strategy=strategy,
                    steps_per_epoch=steps_per_epoch, total_steps=total, example=example, metrics=metrics)

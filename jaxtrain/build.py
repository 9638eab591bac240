"""Builds and checks every piece of a run from its config and the objects passed in; touches no file.

Everything that can reject a run (config values, names, a user's model, data and task, device counts, a
workdir holding another run) is checked here, before the workdir is touched, so a bad command never damages
an existing run. `prepare` is what `fit`, `evaluate`, the doctor, the LR finder and the experiments build on.
"""

import atexit
import dataclasses
import functools
import json
import logging
import pathlib
import shutil
import tempfile
from collections.abc import Callable

import jax
import ml_collections
import numpy as np

from jaxtrain import checkpoint, compile_cache, data, models, optim, parallel, registry, steps, tasks, weights
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


def _program_config(config: ml_collections.ConfigDict, model_given: bool) -> ml_collections.FrozenConfigDict:
  """The parts of a config that the compiled functions depend on: not paths or durations, and the seed
  only where it builds the model (an import path's NNX class gets nnx.Rngs(seed))."""
  built_from_path = not model_given and registry.is_import_path(config.model.name)
  return ml_collections.FrozenConfigDict({
      'seed': config.seed if built_from_path else 0,
      'model': config.model, 'optim': config.optim, 'task': config.task,
      'data': {key: config.data[key] for key in augment.CONFIG_KEYS},
      'train': {key: config.train[key] for key in ('nonfinite', 'max_consecutive_skips')},
      'diagnose': config.diagnostics.every_steps > 0})


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
                                task, augment_fn, max_skips=config.train.max_consecutive_skips)
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
    """A fresh state, born on the devices; an NNX module's weights are read now (arguments of the
    compiled program, not constants baked into it, so a module changed in place starts as it is now)."""
    return self.program.create_state(self.config.seed, initial=self.program.model.initial_variables())

  def abstract_state(self):
    """The state's shapes, dtypes and shardings, computing nothing: what a checkpoint restores into.
    (`create_state` itself is traced, not called under another trace: on a CPU it is compiled with its own
    options, which JAX accepts only on an outermost jit.)"""
    return jax.eval_shape(self.program.create_state, self.config.seed,
                          initial=self.program.model.initial_variables())

  @property
  def user_model(self) -> bool:
    """A model from outside the zoo (an object or an import path): zoo-only diagnostics do not apply."""
    return not models.is_zoo(getattr(self.program.model, 'module', None))


# Keys that define what a workdir's checkpoints and normalization.json are: a run resumes only with the same.
_RUN_DEFINING = ('seed', 'model.', 'data.name', 'data.batch_size', 'data.validation_fraction',
                 'data.stats_max_examples', 'data.normalize', 'data.seq_len', 'data.tokenizer', 'population.')


def _check_resumable(config: ml_collections.ConfigDict, workdir: pathlib.Path, detail: str = '') -> None:
  """A workdir holding another run (other model, data or seed) is an error, not something to overwrite.
  The differing config key is named first, then `detail` (the first checkpoint array that differs)."""
  path = workdir / CONFIG_FILE
  if not path.exists() or not any((workdir / folder).is_dir()
                                  for folder in (checkpoint.CHECKPOINT_DIR, checkpoint.POPULATION_DIR)):
    return
  before = config_lib.flatten(json.loads(path.read_text()))
  now = config_lib.flatten(json.loads(json.dumps(config.to_dict())))
  for key in sorted(now):
    if key.startswith(_RUN_DEFINING) and key in before and before[key] != now[key]:
      raise config_lib.ConfigError(
          f'{workdir} holds a run with {key}={before[key]!r}, this config has {now[key]!r}'
          f'{f" ({detail})" if detail else ""}; use another --workdir to start a new run')


# Keys that change how a run is watched or where it reads from, not what it trains.
_PRESENTATION = ('train.progress_bar', 'data.data_dir', 'data.workers', 'data.prefetch', 'data.in_memory',
                 'compile_cache.', 'generate.')


def config_changes(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> list[str]:
  """'key=stored -> now' for every setting of `config` that differs from the workdir's config.json."""
  path = workdir / CONFIG_FILE
  if not path.exists():
    return []
  before = config_lib.flatten(json.loads(path.read_text()))
  now = config_lib.flatten(json.loads(json.dumps(config.to_dict())))
  return [f'{key}={before.get(key)!r} -> {now[key]!r}' for key in sorted(now)
          if before.get(key) != now[key] and not key.startswith(_PRESENTATION)]


def temporary_workdir() -> pathlib.Path:
  """A workdir for a run given none (fit(config) in a notebook): removed when Python exits, and said so."""
  workdir = pathlib.Path(tempfile.mkdtemp(prefix='jaxtrain-'))
  atexit.register(shutil.rmtree, workdir, ignore_errors=True)
  log.warning('Working in the temporary directory %s, removed when Python exits; pass a workdir to keep it',
              workdir)
  return workdir


def read_only(directory: pathlib.Path, config) -> checkpoint.Checkpointer:
  return checkpoint.Checkpointer(directory, config.checkpoint, read_only=True)


def trained_state(exp: 'Experiment', workdir: pathlib.Path) -> tuple[state_lib.TrainState, dict]:
  """The newest checkpoint of a trained workdir and its normalization statistics; reads, never writes."""
  stats_path = workdir / data.STATS_FILE
  if not (workdir / checkpoint.CHECKPOINT_DIR).is_dir() or not stats_path.exists():
    raise config_lib.ConfigError(f'no trained run in {str(workdir)!r}; train it first with --mode train')
  ckpt = read_only(workdir / checkpoint.CHECKPOINT_DIR, exp.config)
  restored = ckpt.restore(exp.abstract_state())
  ckpt.close()
  if restored is None:
    raise config_lib.ConfigError(f'no readable checkpoint in {str(ckpt.directory)!r}; train first')
  return restored.state, json.loads(stats_path.read_text())


def with_objects(config: ml_collections.ConfigDict | None, model=None, data=None, task=None):
  """A copy of `config` (the defaults when None) whose names record the objects passed in, so config.json
  says what was trained and a workdir of another model class is refused on resume."""
  config = config_lib.defaults() if config is None else ml_collections.ConfigDict(config.to_dict())
  for key, obj in (('model', model), ('data', data), ('task', task)):
    if obj is not None:
      inner = obj.module if isinstance(obj, model_lib.Model) else obj
      config[key].name = registry.describe(inner.loss if isinstance(inner, tasks.Task) else inner)
  return config


def _check_keys(config, label: str, data_keys) -> None:
  """The model's inputs and the task's label must be keys of the data."""
  missing = [key for key in config.model.inputs if key not in data_keys]
  if missing:
    raise config_lib.ConfigError(
        f'model.inputs={tuple(config.model.inputs)} names {missing}, but the data has keys '
        f'{sorted(data_keys)}; set --config.model.inputs to the keys the model takes')
  if label not in data_keys:
    raise config_lib.ConfigError(
        f'the task reads labels from {label!r}, but the data has keys {sorted(data_keys)}; '
        'add that key or give Task(label=...)')


def _model_fails(config, example: dict, error: Exception) -> config_lib.ConfigError:
  shapes = {key: f'{value.dtype}{list(value.shape)}' for key, value in example.items()}
  return config_lib.ConfigError(f'model {config.model.name!r} fails on a batch {shapes}: '
                                f'{registry.first_line(error)}; check model.inputs and the model\'s input '
                                'shapes')


def _compiled(config, model, task, splits, example: dict, total: int, strategy) -> tuple:
  """(program, abstract state, abstract outputs on `example`); a model that fails on the batch (while it
  initializes or runs) is a ConfigError, not a traceback."""
  try:
    program = _program(_program_config(config, model is not None), model is not None and _Same(model) or None,
                       task is not None and _Same(task) or None,
                       tuple(map(_Same, registry.entries(config, model is not None, task is not None))),
                       splits.num_classes, _spec(example), total, strategy)
    abstract_state = jax.eval_shape(program.create_state, 0)
    outputs = jax.eval_shape(lambda s: program.model.apply(state_lib.variables(s), example, train=False),
                             abstract_state)
  except config_lib.ConfigError:
    raise
  except Exception as e:  # noqa: BLE001 - a user's model may raise anything on a wrong input.
    raise _model_fails(config, example, e) from None
  return program, abstract_state, outputs


def _check_task(program: Program, outputs, example: dict, num_classes: int) -> tuple[str, ...]:
  """The metric names an evaluation reports; a ConfigError when the task cannot take the outputs."""
  try:
    if program.task.check:
      if not hasattr(outputs, 'shape'):
        raise config_lib.ConfigError(
            f'the {program.task.name!r} task needs the model to return one array of logits, not a '
            f'{type(outputs).__name__}; give a jaxtrain.Task whose loss takes these outputs')
      program.task.check(outputs.shape[1:], num_classes)
    program.task.check_outputs(outputs, example)
    return tuple(f'eval/{name}' for name in program.task.metric_names(outputs, example))
  except config_lib.ConfigError:
    raise
  except Exception as e:  # noqa: BLE001 - a user's loss may raise anything on the model's outputs.
    raise config_lib.ConfigError(f'the task\'s loss or metrics fail on the model\'s outputs: '
                                 f'{registry.first_line(e)}; check that they take (outputs, batch)') from None


def _warn_traps(config: ml_collections.ConfigDict, example: dict) -> None:
  """Settings that are valid but that a newcomer rarely means: said once in the log, the run goes on."""
  if config.optim.name == 'adadelta' and config.optim.lr < 0.1:
    log.warning("optim.name='adadelta' with optim.lr=%g barely trains: Adadelta scales its steps by its own "
                'running averages and is meant for a rate of about 1; set --config.optim.lr=1.0',
                config.optim.lr)
  if config.data.augment in ('crop', 'crop_flip') and 'image' in example:
    side = min(example['image'].shape[1:3])
    if config.data.crop_padding / side > 0.2:
      log.warning('data.crop_padding=%d is %d%% of the %d-pixel image side: random crops shift the image '
                  'by up to that much and cut much of it away; use a padding of about a tenth of the side '
                  '(--config.data.crop_padding=%d)', config.data.crop_padding,
                  round(100 * config.data.crop_padding / side), side, max(1, side // 10))


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
  if config.model.kwargs and model is None and not registry.is_import_path(config.model.name):
    raise config_lib.ConfigError(f'model.kwargs={dict(config.model.kwargs)} is only for a model named by '
                                 "import path (model.name='pkg.module:Class'); set the zoo's own keys, or "
                                 'build the object with them')
  label = registry.task(config, task).label
  splits = data.load(config, registry.data(config, data_source), label)
  _check_keys(config, label, splits.keys)
  absent = [key for key in config.data.normalize if key not in splits.keys and key != 'image']
  if absent:
    raise config_lib.ConfigError(f'data.normalize={tuple(config.data.normalize)} names {absent}, which the '
                                 f'data does not have (keys: {sorted(splits.keys)}); name keys it has')
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
  _warn_traps(config, example)
  program, abstract_state, outputs = _compiled(config, model, task, splits, example, total, strategy)
  metrics = _check_task(program, outputs, example, splits.num_classes)
  config_lib.check_monitors(config, metrics)
  if config.optim.freeze or config.optim.lr_multipliers:
    log.info('Optimizer rules per parameter:\n%s',
             optim.rules_table(optim.parameter_rules(config.optim, abstract_state.params)))
  if config.init_from and weights.is_weight_file(config.init_from):
    weights.check_init_from(config, {'params': abstract_state.params,
                                     'batch_stats': abstract_state.batch_stats})
  elif config.init_from:
    transfer.source_config(config.init_from)
  if workdir:
    misfit = None
    if (workdir / checkpoint.CHECKPOINT_DIR).is_dir():
      try:
        read_only(workdir / checkpoint.CHECKPOINT_DIR, config).check_fits(abstract_state)
      except checkpoint.IncompatibleCheckpoint as e:
        misfit = e
    _check_resumable(config, workdir, str(misfit or ''))  # The key that differs, with the array.
    if misfit:
      raise misfit
  if config.checkpoint.restore_from:
    source = checkpoint.checkpoint_dir(config.checkpoint.restore_from)
    if not source.is_dir() or not read_only(source, config).steps():
      raise config_lib.ConfigError(
          f'checkpoint.restore_from={config.checkpoint.restore_from!r} holds no checkpoint; '
          'give a workdir or its checkpoints folder')
    read_only(source, config).check_fits(abstract_state)
  return Experiment(config=config, splits=splits, program=program, strategy=strategy,
                    steps_per_epoch=steps_per_epoch, total_steps=total, example=example, metrics=metrics)

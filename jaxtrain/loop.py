"""fit() and evaluate(): the stateful loop around the pure, jitted steps.

Everything that can reject a run (config, data set, model and optimizer names, device counts) is checked in
`_prepare` before the workdir is touched, so a bad command never damages an existing run.
"""

import dataclasses
import functools
import json
import logging
import pathlib
import tempfile
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxtrain import checkpoint, compile_cache, data, models, monitor, optim, parallel, steps, tasks
from jaxtrain import config as config_lib
from jaxtrain import state as state_lib
from jaxtrain.data import augment
from jaxtrain.diagnostics import curves, nan
from jaxtrain.diagnostics import training as training_diagnostics
from jaxtrain.experiments import snapshots, transfer
from jaxtrain.logging import MetricWriter, plot_history, read_metrics

log = logging.getLogger('jaxtrain')

SUMMARY_FILE = 'summary.json'
CONFIG_FILE = 'config.json'


@dataclasses.dataclass
class Run:
  """What `fit` returns: the metrics history, the final state and summary.json's content."""

  workdir: pathlib.Path
  history: list[dict]
  state: state_lib.TrainState
  summary: dict

  def plot(self, path: str | pathlib.Path | None = None):
    """Loss and accuracy curves (train vs eval), saved to workdir/plots/curves.png; shows in notebooks."""
    return plot_history(self.history, pathlib.Path(path or self.workdir / 'plots' / 'curves.png'))

  def __repr__(self) -> str:
    final = ', '.join(f'{k}={v:.4g}' for k, v in self.summary.get('final', {}).items())
    return f'Run({str(self.workdir)!r}, steps={self.summary.get("steps")}, {final})'


@dataclasses.dataclass(frozen=True)
class _Program:
  """What a run compiles: the model, its optimizer and the jitted functions."""

  model: object
  optimizer: optim.Optimizer
  task: tasks.Task
  augment: Callable  # (rng, images) -> images, inside the train step.
  create_state: Callable  # seed -> a fresh state, born on the devices.
  train_step: Callable  # (state, chunk, k) -> (state, metrics), trained on chunk[k].
  diag_step: Callable | None  # The same, with per-layer statistics in metrics['diag'].
  eval_step: Callable  # (state, padded batch) -> sums.


def _program_config(config: ml_collections.ConfigDict) -> ml_collections.FrozenConfigDict:
  """The parts of a config that the compiled functions depend on (not the seed, paths or durations)."""
  return ml_collections.FrozenConfigDict({
      'model': config.model, 'optim': config.optim, 'task': config.task,
      'data': {key: config.data[key] for key in augment.CONFIG_KEYS},
      'train': {'nonfinite': config.train.nonfinite}, 'diagnose': config.diagnostics.every_steps > 0})


@functools.lru_cache(maxsize=8)
def _program(config: ml_collections.FrozenConfigDict, num_classes: int, image_shape: tuple[int, ...],
             total_steps: int, strategy: parallel.Strategy) -> _Program:
  """Cached by its inputs (`config` from `_program_config`), so fitting the same model again in one process
  (a re-run notebook cell, another seed) reuses the jitted functions and compiles nothing."""
  task = tasks.build(config.task)
  model = models.build(config.model, task.outputs(num_classes))
  if config.optim.freeze:
    model = transfer.FrozenBatchStats(model, config.optim)
  optimizer = optim.build(config.optim, total_steps)
  ema = config.optim.ema_decay > 0
  augment_fn = augment.build(config.data)
  make_step = functools.partial(steps.make_train_step, model, optimizer, config.optim, config.train.nonfinite,
                                task, augment_fn)
  create = functools.partial(state_lib.create, model, optimizer.tx, image_shape, ema=ema)
  abstract_state = jax.eval_shape(create, 0)
  return _Program(
      model=model, optimizer=optimizer, task=task, augment=augment_fn,
      create_state=strategy.jit_create_state(create),
      train_step=strategy.jit_chunk_train_step(make_step(), abstract_state),
      diag_step=strategy.jit_chunk_train_step(make_step(diagnose=config.model.activation), abstract_state)
      if config.diagnose else None,
      eval_step=strategy.jit_eval_step(
          steps.make_eval_step(model, task, use_ema=ema and config.optim.ema_eval), abstract_state))


@dataclasses.dataclass(frozen=True)
class _Experiment:
  """The pieces of a run, built and validated from its config."""

  config: ml_collections.ConfigDict
  splits: data.Splits
  program: _Program
  strategy: parallel.Strategy
  steps_per_epoch: int
  total_steps: int

  def new_state(self):
    return self.program.create_state(self.config.seed)


# Keys that define what a workdir's checkpoints and normalization.json are: a run resumes only with the same.
_RUN_DEFINING = ('seed', 'model.', 'data.name', 'data.batch_size', 'data.validation_fraction',
                 'data.stats_max_examples')


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


def _prepare(config: ml_collections.ConfigDict, workdir: pathlib.Path | None) -> _Experiment:
  """Builds and checks every piece of the run; touches no file."""
  config_lib.validate(config)
  compile_cache.enable(config)  # Before anything compiles: a later process then loads these programs.
  if workdir and workdir.exists() and not workdir.is_dir():
    raise config_lib.ConfigError(f'workdir {str(workdir)!r} is a file; pass a directory with --workdir')
  splits = data.load(config)
  num_train = len(splits.train['label'])
  steps_per_epoch = num_train // config.data.batch_size
  if steps_per_epoch == 0:
    raise config_lib.ConfigError(
        f'data.batch_size={config.data.batch_size} is larger than the {num_train} training '
        'examples; use a smaller batch')
  total = config_lib.total_steps(config, steps_per_epoch)
  strategy = parallel.make(config.parallel, {'data.batch_size': config.data.batch_size,
                                             'data.eval_batch_size': config.data.eval_batch_size})
  program = _program(_program_config(config), splits.num_classes, splits.image_shape, total, strategy)
  exp = _Experiment(config=config, splits=splits, program=program, strategy=strategy,
                    steps_per_epoch=steps_per_epoch, total_steps=total)
  abstract_state = jax.eval_shape(exp.new_state)
  output = jax.eval_shape(lambda s: program.model.apply(
      state_lib.variables(s), jnp.zeros((1, *splits.image_shape)), train=False), abstract_state)
  program.task.check(output.shape[1:], splits.num_classes)
  if config.optim.freeze or config.optim.lr_multipliers:
    log.info('Optimizer rules per parameter:\n%s',
             optim.rules_table(optim.parameter_rules(config.optim, abstract_state.params)))
  if config.init_from:
    transfer.source_config(config.init_from)
  if workdir and (workdir / checkpoint.CHECKPOINT_DIR).is_dir():
    _read_only(workdir / checkpoint.CHECKPOINT_DIR, config).check_fits(abstract_state)
    _check_resumable(config, workdir)
  if config.checkpoint.restore_from:
    source = checkpoint.checkpoint_dir(config.checkpoint.restore_from)
    if not source.is_dir() or not _read_only(source, config).steps():
      raise config_lib.ConfigError(
          f'checkpoint.restore_from={config.checkpoint.restore_from!r} holds no checkpoint; '
          'give a workdir or its checkpoints folder')
    _read_only(source, config).check_fits(abstract_state)
  return exp


def _read_only(directory: pathlib.Path, config) -> checkpoint.Checkpointer:
  return checkpoint.Checkpointer(directory, config.checkpoint, read_only=True)


def _evaluate(eval_step, state, batches, strategy: parallel.Strategy, prefix: str) -> dict:
  """The task's metrics (loss, accuracy, ...) over every example of a split (padding masked out); sums stay
  on the device until one fetch at the end."""
  totals = None
  for batch in batches:
    sums = eval_step(state, strategy.place_batch(batch))
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  return {f'{prefix}/{key}': value for key, value in tasks.summarize(jax.device_get(totals)).items()}


@jax.jit
def _stack_mean(pending: list[dict]) -> dict:
  return jax.tree.map(lambda *values: jnp.mean(jnp.stack(values)), *pending)


def _mean_metrics(pending: list[dict]) -> dict:
  """Averages the device metrics of the steps since the last log: the loop's only host sync.

  One jitted reduction and one transfer; fetching each step's scalars separately costs ~4% of a CPU run.
  `skipped` (1 for a step whose update was dropped) is reported as a count over the window.
  """
  means = jax.device_get(_stack_mean(pending))
  means['skipped'] = means['skipped'] * len(pending)
  return {f'train/{k}': float(v) for k, v in means.items()}


def fit(config: ml_collections.ConfigDict, workdir: str | pathlib.Path | None = None,
        on_eval: Callable[[int, dict], None] | None = None) -> Run:
  """Trains the configured run in `workdir` (a temporary directory when None), resuming from its newest
  readable checkpoint (or `checkpoint.restore_from`) when there is one; a fresh run starts from
  `init_from`'s matching weights when set.

  `on_eval(step, eval record)` is called after each evaluation (a sweep reports it to its pruner); an
  exception it raises stops the run with the checkpoints closed.

  SIGTERM or SIGINT finishes the current step, saves and raises checkpoint.Preempted; a non-finite loss
  raises nan.NonFiniteError under train.nonfinite='halt'. With early stopping the returned state is the best.
  """
  workdir = pathlib.Path(workdir) if workdir else None
  if jax.process_index() == 0 and jax.process_count() > 1:
    data.load(config)  # Prepares the data set files once, before the other processes read them.
  parallel.barrier('jaxtrain:data')
  exp = _prepare(config, workdir)
  parallel.barrier('jaxtrain:prepared')  # Every process has seen the workdir as it was before the run.
  abstract_state = jax.eval_shape(exp.new_state)
  workdir = workdir or pathlib.Path(tempfile.mkdtemp(prefix='jaxtrain-'))
  workdir.mkdir(parents=True, exist_ok=True)
  ckpt = checkpoint.Checkpointer(workdir / checkpoint.CHECKPOINT_DIR, config.checkpoint)
  try:
    restored = ckpt.restore(abstract_state)
    if restored is None and config.checkpoint.restore_from:
      source = _read_only(checkpoint.checkpoint_dir(config.checkpoint.restore_from), config)
      restored = source.restore(abstract_state)
      source.close()
      if restored is None:
        raise config_lib.ConfigError(
            f'no readable checkpoint in checkpoint.restore_from={config.checkpoint.restore_from!r}')
    return _train(exp, workdir, ckpt, restored, abstract_state, on_eval)
  finally:
    ckpt.close()


def _train(exp: _Experiment, workdir: pathlib.Path, ckpt: checkpoint.Checkpointer,
           restored: checkpoint.Restored | None, abstract_state, on_eval=None) -> Run:
  config = exp.config
  state = restored.state if restored else _initial_state(exp)
  start = restored.step if restored else 0
  if restored:
    log.info('Resuming from step %d in %s', start, workdir)
  log.info('Model %s with %d parameters', config.model.name, state_lib.num_params(state.params))
  history = read_metrics(workdir)
  summary_path = workdir / SUMMARY_FILE
  if summary_path.exists():
    summary = json.loads(summary_path.read_text())
    if summary.get('steps') == start and (start >= exp.total_steps or summary.get('stopped_early')):
      log.info('%s is already trained to step %d; nothing to do', workdir, start)
      if summary.get('stopped_early') and summary.get('best_step') in ckpt.steps():
        state = ckpt.restore(abstract_state, summary['best_step']).state
      return Run(workdir=workdir, history=history, state=state, summary=summary)
  primary = jax.process_index() == 0  # Of several processes, one writes the workdir's files.
  if primary:
    (workdir / CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2) + '\n')
  stats = data.load_or_compute_stats(exp.splits.train, workdir, config.data.stats_max_examples, primary)
  meta = {'config': config.to_dict(), 'normalization': stats}

  train_step, eval_step = exp.program.train_step, exp.program.eval_step
  shard = exp.strategy.process_shard
  eval_data = data.eval_batches(exp.splits.eval, stats, config.data.eval_batch_size, shard)
  train_data = data.train_batches(exp.splits.train, stats, config.data.batch_size, config.seed, shard)
  per_chunk = data.chunk_steps(train_data[0])
  stream = data.train_iterator(train_data, restored.data if restored else data.stream_state(0))
  chunks = data.prefetch(data.chunks(stream, per_chunk), exp.strategy.place_chunk, config.data.prefetch)
  chunk, in_chunk = None, per_chunk

  eval_every = config.train.eval_every_steps or exp.steps_per_epoch
  diag_every, diagnostics = config.diagnostics.every_steps, training_diagnostics.TrainingDiagnostics()
  save_every = config.checkpoint.every_steps or exp.steps_per_epoch
  best = monitor.Best(config.checkpoint.monitor, config.checkpoint.mode).replay(history, start)
  patience = config.early_stopping.patience
  stopper = monitor.Best(config.early_stopping.monitor, config.early_stopping.mode,
                         config.early_stopping.min_delta).replay(history, start)
  writer = MetricWriter(workdir, exp.total_steps, start, config.train.progress_bar, history, primary)
  snaps = snapshots.Snapshots(workdir, config, exp.total_steps) if config.checkpoint.snapshots else None
  started = time.time()
  pending, last_log, evaluation, stopped_early = [], (start, time.time()), None, False
  try:
    with checkpoint.StopRequests() as stop:
      for step in range(start + 1, exp.total_steps + 1):
        if in_chunk == per_chunk:
          chunk, in_chunk = next(chunks), 0
        diagnose = diag_every > 0 and step % diag_every == 0
        state, metrics = (exp.program.diag_step if diagnose else train_step)(state, chunk, np.int32(in_chunk))
        in_chunk += 1
        if diagnose:
          diagnostics.add(step, step / exp.steps_per_epoch, metrics.pop('diag'))
        pending.append(metrics)
        writer.advance(1)
        if step == start + 1:
          jax.block_until_ready(metrics)
          log.info('First step (compilation included) took %.1fs', time.time() - started)
          last_log = (step, time.time())
        epoch = step / exp.steps_per_epoch
        preempted = stop.signum  # Read once: a signal may arrive at any line.
        evaluate = config_lib.every(eval_every, step, exp.total_steps)
        save = (config_lib.every(save_every, step, exp.total_steps) or preempted is not None
                or (config.checkpoint.epoch_end and step % exp.steps_per_epoch == 0))
        if config_lib.every(config.train.log_every_steps, step, exp.total_steps) or evaluate or save:
          nan.check(exp, state, train_data, ckpt, workdir)
        if config_lib.every(config.train.log_every_steps, step, exp.total_steps):
          record = {'step': step, 'epoch': epoch, **_mean_metrics(pending)}
          if step > last_log[0]:
            record['train/steps_per_sec'] = (step - last_log[0]) / (time.time() - last_log[1])
          writer.write(record)
          for record in diagnostics.records():
            writer.write(record)
          pending, last_log = [], (step, time.time())
        evaluation = None
        if evaluate:
          evaluation = _evaluate(eval_step, state, data.iterate(eval_data), exp.strategy, 'eval')
          writer.write({'step': step, 'epoch': epoch, **evaluation})
          if on_eval:
            on_eval(step, evaluation)
          state = state.replace(
              opt_state=exp.program.optimizer.observe(state.opt_state, evaluation['eval/loss']))
          # Every improving evaluation is saved so the best state survives (keep_best) and can be returned.
          save |= best.update(step, evaluation) and config.checkpoint.keep_best > 0
          stopper.update(step, evaluation)
          stopped_early = bool(patience) and stopper.since >= patience
        if save or stopped_early:
          ckpt.save(step, state, data.stream_state(step), meta, evaluation)
        if snaps:
          snaps.maybe_save(step, state, meta)
        if preempted is not None:
          ckpt.wait()
          raise checkpoint.Preempted(step, workdir, preempted)
        if stopped_early:
          log.info('Early stopping at step %d: %s has not improved by more than %g for %d evaluations; '
                   'returning the best state, step %d', step, stopper.metric, stopper.min_delta, patience,
                   best.step)
          break

    steps_done = int(jax.device_get(state.step))
    if stopped_early and best.step != steps_done:
      ckpt.wait()
      state, evaluation = ckpt.restore(abstract_state, best.step).state, None
    final = _final_metrics(exp, eval_step, state, stats, evaluation)
    writer.write({'step': steps_done, 'epoch': steps_done / exp.steps_per_epoch,
                  **{k: v for k, v in final.items() if k.startswith('test/')}})
  finally:
    chunks.close()
    writer.close()
    if snaps:
      snaps.close()

  history = read_metrics(workdir)
  summary = {'steps': steps_done, 'wall_s': time.time() - started, 'best_step': best.step,
             'best': best.record, 'final': final, 'diagnosis': _diagnose(history)}
  if stopped_early:
    summary['stopped_early'] = True
  if primary:
    summary_path.write_text(json.dumps(summary, indent=2) + '\n')
  return Run(workdir=workdir, history=history, state=state, summary=summary)


def _diagnose(history: list[dict]) -> list[dict]:
  """The learning-curve diagnosis (overfitting, plateau, ...) of a run's history, logged as it is made."""
  findings = curves.diagnose(history)
  for finding in findings:
    log.info('Learning curves: %s (%s); %s', finding['name'], finding['evidence'], finding['advice'])
  return findings


def _initial_state(exp: _Experiment):
  """A fresh state; with `init_from`, its parameters and BatchNorm statistics where path and shape match."""
  state = exp.new_state()
  if not exp.config.init_from:
    return state
  source_config = transfer.source_config(exp.config.init_from)
  source = _read_only(checkpoint.checkpoint_dir(exp.config.init_from), source_config)
  restored = source.restore(jax.eval_shape(_prepare(source_config, None).new_state))
  source.close()
  if restored is None:
    raise config_lib.ConfigError(f'no readable checkpoint in init_from={exp.config.init_from!r}')
  return transfer.initialize(state, restored.state, exp.config.init_from)


def _final_metrics(exp: _Experiment, eval_step, state, stats: dict, evaluation: dict | None) -> dict:
  """Eval-split and test-split metrics of `state` (the test split is evaluated only here).

  `evaluation` is the eval split's metrics of `state` when the loop has just computed them.
  """
  batch_size, shard = exp.config.data.eval_batch_size, exp.strategy.process_shard
  final = evaluation or _evaluate(
      eval_step, state, data.iterate(data.eval_batches(exp.splits.eval, stats, batch_size, shard)),
      exp.strategy, 'eval')
  if exp.splits.eval_name == 'test':
    return {**final, **{k.replace('eval/', 'test/'): v for k, v in final.items()}}
  test = data.eval_batches(exp.splits.test, stats, batch_size, shard)
  return {**final, **_evaluate(eval_step, state, data.iterate(test), exp.strategy, 'test')}


def evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> dict:
  """Eval- and test-split metrics of the newest checkpoint in `workdir`; writes nothing."""
  workdir = pathlib.Path(workdir)
  exp = _prepare(config, workdir)
  stats_path = workdir / data.STATS_FILE
  if not (workdir / checkpoint.CHECKPOINT_DIR).is_dir() or not stats_path.exists():
    raise config_lib.ConfigError(f'no trained run in {str(workdir)!r}; train it first with --mode train')
  ckpt = _read_only(workdir / checkpoint.CHECKPOINT_DIR, config)
  restored = ckpt.restore(jax.eval_shape(exp.new_state))
  ckpt.close()
  if restored is None:
    raise config_lib.ConfigError(f'no readable checkpoint in {str(ckpt.directory)!r}; train first')
  state = restored.state
  metrics = _final_metrics(exp, exp.program.eval_step, state, json.loads(stats_path.read_text()), None)
  return {'step': int(jax.device_get(state.step)), **metrics,
          'diagnosis': _diagnose(read_metrics(workdir))}

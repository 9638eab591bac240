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

from jaxtrain import checkpoint, data, models, optim, parallel, steps
from jaxtrain import config as config_lib
from jaxtrain import state as state_lib
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
  create_state: Callable  # seed -> a fresh state, born on the devices.
  train_step: Callable  # (state, chunk, k) -> (state, metrics), trained on chunk[k].
  eval_step: Callable  # (state, padded batch) -> sums.


@functools.lru_cache(maxsize=8)
def _program(model_config: ml_collections.FrozenConfigDict, optim_config: ml_collections.FrozenConfigDict,
             num_classes: int, image_shape: tuple[int, ...], total_steps: int,
             strategy: parallel.Strategy) -> _Program:
  """Cached by its inputs, so fitting the same model again in one process (a re-run notebook cell, another
  seed) reuses the jitted functions and compiles nothing."""
  model = models.build(model_config, num_classes)
  optimizer = optim.build(optim_config, total_steps)
  return _Program(
      model=model, optimizer=optimizer,
      create_state=strategy.jit_create_state(
          functools.partial(state_lib.create, model, optimizer.tx, image_shape)),
      train_step=strategy.jit_chunk_train_step(steps.make_train_step(model, optimizer, optim_config)),
      eval_step=strategy.jit_eval_step(steps.make_eval_step(model)))


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
  program = _program(ml_collections.FrozenConfigDict(config.model),
                     ml_collections.FrozenConfigDict(config.optim), splits.num_classes,
                     splits.image_shape, total, strategy)
  exp = _Experiment(config=config, splits=splits, program=program, strategy=strategy,
                    steps_per_epoch=steps_per_epoch, total_steps=total)
  if workdir:
    _check_resumable(config, workdir)
  return exp


def _evaluate(eval_step, state, batches, strategy: parallel.Strategy, prefix: str) -> dict:
  """Mean loss and accuracy over every example of a split (padding masked out); one fetch at the end."""
  totals = None
  for batch in batches:
    sums = eval_step(state, strategy.place_batch(batch))
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  totals = jax.device_get(totals)
  count = float(totals['count'])
  return {f'{prefix}/loss': float(totals['loss']) / count,
          f'{prefix}/accuracy': float(totals['accuracy']) / count}


def _improved(value: float, best: float | None, mode: str) -> bool:
  return best is None or (value < best if mode == 'min' else value > best)


@jax.jit
def _stack_mean(pending: list[dict]) -> dict:
  return jax.tree.map(lambda *values: jnp.mean(jnp.stack(values)), *pending)


def _mean_metrics(pending: list[dict]) -> dict:
  """Averages the device metrics of the steps since the last log: the loop's only host sync.

  One jitted reduction and one transfer; fetching each step's scalars separately costs ~4% of a CPU run.
  """
  return {f'train/{k}': float(v) for k, v in jax.device_get(_stack_mean(pending)).items()}


def fit(config: ml_collections.ConfigDict, workdir: str | pathlib.Path | None = None) -> Run:
  """Trains (or resumes) the configured run in `workdir` (a temporary directory when None)."""
  workdir = pathlib.Path(workdir) if workdir else None
  exp = _prepare(config, workdir)
  abstract_state = jax.eval_shape(exp.new_state)
  workdir = workdir or pathlib.Path(tempfile.mkdtemp(prefix='jaxtrain-'))
  workdir.mkdir(parents=True, exist_ok=True)
  ckpt = checkpoint.Checkpointer(workdir, config.checkpoint.keep)
  if ckpt.latest_step() is None:
    state = exp.new_state()
  else:
    state = ckpt.restore(abstract_state)
    log.info('Resuming from step %d in %s', int(state.step), workdir)
  log.info('Model %s with %d parameters', config.model.name, state_lib.num_params(state.params))
  start = int(jax.device_get(state.step))
  if start >= exp.total_steps and (workdir / SUMMARY_FILE).exists():
    ckpt.close()
    log.info('%s is already trained to step %d; nothing to do', workdir, start)
    summary = json.loads((workdir / SUMMARY_FILE).read_text())
    return Run(workdir=workdir, history=read_metrics(workdir), state=state, summary=summary)
  (workdir / CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2) + '\n')
  stats = data.load_or_compute_stats(exp.splits.train, workdir, config.data.stats_max_examples)

  train_step, eval_step = exp.program.train_step, exp.program.eval_step
  eval_data = data.eval_batches(exp.splits.eval, stats, config.data.eval_batch_size)
  train_data = data.train_batches(exp.splits.train, stats, config.data.batch_size, config.seed)
  per_chunk = data.chunk_steps(train_data[0])
  chunks = data.prefetch(data.iterate(data.chunked(train_data, per_chunk), start // per_chunk),
                         exp.strategy.place_chunk, config.data.prefetch)
  chunk = None

  eval_every = config.train.eval_every_steps or exp.steps_per_epoch
  save_every = config.checkpoint.every_steps or exp.steps_per_epoch
  monitor, mode = config.checkpoint.monitor, config.checkpoint.mode
  best_step, best, evaluation = None, {}, None
  for record in read_metrics(workdir):  # A resumed run remembers the best evaluation before it.
    if record['step'] <= start and monitor in record and _improved(record[monitor], best.get(monitor), mode):
      best_step, best = record['step'], {k: v for k, v in record.items() if k.startswith('eval/')}
  writer = MetricWriter(workdir, exp.total_steps, start, config.train.progress_bar)
  started = time.time()
  pending, last_log = [], (start, time.time())
  try:
    for step in range(start + 1, exp.total_steps + 1):
      index = step - 1  # Of the batch, in the endless train stream.
      if chunk is None or index % per_chunk == 0:
        chunk = next(chunks)
      state, metrics = train_step(state, chunk, np.int32(index % per_chunk))
      pending.append(metrics)
      writer.advance(1)
      if step == start + 1:
        jax.block_until_ready(metrics)
        log.info('First step (compilation included) took %.1fs', time.time() - started)
        last_log = (step, time.time())
      epoch = step / exp.steps_per_epoch
      if config_lib.every(config.train.log_every_steps, step, exp.total_steps):
        record = {'step': step, 'epoch': epoch, **_mean_metrics(pending)}
        if step > last_log[0]:
          record['train/steps_per_sec'] = (step - last_log[0]) / (time.time() - last_log[1])
        writer.write(record)
        pending, last_log = [], (step, time.time())
      if config_lib.every(eval_every, step, exp.total_steps):
        evaluation = _evaluate(eval_step, state, data.iterate(eval_data), exp.strategy, 'eval')
        writer.write({'step': step, 'epoch': epoch, **evaluation})
        state = state.replace(
            opt_state=exp.program.optimizer.observe(state.opt_state, evaluation['eval/loss']))
        if monitor in evaluation and _improved(evaluation[monitor], best.get(monitor), mode):
          best_step, best = step, evaluation
      if config_lib.every(save_every, step, exp.total_steps):
        ckpt.save(state)

    final = _final_metrics(exp, eval_step, state, stats, evaluation)
    writer.write({'step': exp.total_steps, 'epoch': exp.total_steps / exp.steps_per_epoch,
                  **{k: v for k, v in final.items() if k.startswith('test/')}})
  finally:
    chunks.close()
    writer.close()
    ckpt.close()

  summary = {'steps': int(jax.device_get(state.step)), 'wall_s': time.time() - started,
             'best_step': best_step, 'best': best, 'final': final}
  (workdir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + '\n')
  return Run(workdir=workdir, history=read_metrics(workdir), state=state, summary=summary)


def _final_metrics(exp: _Experiment, eval_step, state, stats: dict, evaluation: dict | None) -> dict:
  """Eval-split and test-split metrics of `state` (the test split is evaluated only here).

  `evaluation` is the eval split's metrics of `state` when the loop has just computed them.
  """
  batch_size = exp.config.data.eval_batch_size
  final = evaluation or _evaluate(
      eval_step, state, data.iterate(data.eval_batches(exp.splits.eval, stats, batch_size)),
      exp.strategy, 'eval')
  if exp.splits.eval_name == 'test':
    return {**final, **{k.replace('eval/', 'test/'): v for k, v in final.items()}}
  test = data.eval_batches(exp.splits.test, stats, batch_size)
  return {**final, **_evaluate(eval_step, state, data.iterate(test), exp.strategy, 'test')}


def evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> dict:
  """Eval- and test-split metrics of the newest checkpoint in `workdir`; writes nothing."""
  workdir = pathlib.Path(workdir)
  exp = _prepare(config, workdir)
  stats_path = workdir / data.STATS_FILE
  if not (workdir / checkpoint.CHECKPOINT_DIR).is_dir() or not stats_path.exists():
    raise config_lib.ConfigError(f'no trained run in {str(workdir)!r}; train it first with --mode train')
  ckpt = checkpoint.Checkpointer(workdir, config.checkpoint.keep, read_only=True)
  if ckpt.latest_step() is None:
    raise config_lib.ConfigError(f'no checkpoint in {str(ckpt.directory)!r}; train first')
  state = ckpt.restore(jax.eval_shape(exp.new_state))
  ckpt.close()
  metrics = _final_metrics(exp, exp.program.eval_step, state, json.loads(stats_path.read_text()), None)
  return {'step': int(jax.device_get(state.step)), **metrics}

"""fit() and evaluate(): a run built from its config and the objects passed in, trained by the engine.

    run = jaxtrain.fit(config, workdir, model=MyNet(...), data=jaxtrain.data.Arrays(train=..., eval=...),
                       task=jaxtrain.Task(loss=my_loss), callbacks=[MyCallback()])

An object passed replaces what the config would build by name; the config still governs the optimizer,
durations, checkpoints and parallelism. Everything is checked (build.prepare) before the workdir is touched.
A population (`population.size > 1`) and an ensemble (`ensemble.members`, a population's members, a run's
snapshots) are dispatched here exactly as the CLI does.
"""

import json
import logging
import pathlib
import time

import jax
import ml_collections

from jaxtrain import build, checkpoint, data, engine, evaluation, history, parallel, weights
from jaxtrain import config as config_lib
from jaxtrain import state as state_lib
from jaxtrain.callbacks import (
    best_checkpoint,
    dynamics,
    early_stopping,
    layer_stats,
    nonfinite,
    plateau,
    preemption,
    profiler,
    snapshots,
    trackers,
)
from jaxtrain.callbacks import writers as metric_writers
from jaxtrain.diagnostics import figure_process, run_report
from jaxtrain.experiments import ensemble, population, transfer

log = logging.getLogger('jaxtrain')


def fit(config: ml_collections.ConfigDict | None = None, workdir: str | pathlib.Path | None = None, *,
        model=None, data=None, task=None, callbacks=(), writers=()) -> history.Run:
  """Trains the configured run in `workdir` (a temporary directory when None, removed when Python exits),
  resuming from its newest readable checkpoint (or `checkpoint.restore_from`) when there is one; a fresh run
  starts from `init_from`'s matching weights when set. `config=None` means the defaults.

  `model`: a flax.linen or flax.nnx Module; `data`: a `jaxtrain.data.Arrays` (or any object with its
  `splits(config, label)`); `task`: a `jaxtrain.Task` or a loss function; `callbacks`: `jaxtrain.Callback`s;
  `writers`: more sinks for every record beside metrics.jsonl, TensorBoard and the progress bar (objects
  with `write(record)` and `close()`, as callbacks/writers.py's). SIGTERM or SIGINT finishes the current
  step, saves and raises checkpoint.Preempted; a non-finite loss raises NonFiniteError under
  train.nonfinite='halt'. With early stopping the returned state is the best.
  """
  config = build.with_objects(config, model, data, task)
  callbacks = engine.user_callbacks(callbacks)
  if config.population.size > 1:
    return population.fit_population(config, workdir, model=model, data_source=data, task=task,
                                     callbacks=callbacks)
  workdir = pathlib.Path(workdir) if workdir else None
  if jax.process_index() == 0 and jax.process_count() > 1:
    build.prepare(config, None, model=model, data_source=data, task=task)  # Prepares data files once.
  parallel.barrier('jaxtrain:data')
  exp = build.prepare(config, workdir, model=model, data_source=data, task=task)
  parallel.barrier('jaxtrain:prepared')  # Every process has seen the workdir as it was before the run.
  workdir = workdir or build.temporary_workdir()
  workdir.mkdir(parents=True, exist_ok=True)
  ckpt = checkpoint.Checkpointer(workdir / checkpoint.CHECKPOINT_DIR, config.checkpoint)
  try:
    abstract_state = exp.abstract_state()
    restored = ckpt.restore(abstract_state)
    if restored is None and config.checkpoint.restore_from:
      source = build.read_only(checkpoint.checkpoint_dir(config.checkpoint.restore_from), config)
      restored = source.restore(abstract_state)
      source.close()
      if restored is None:
        raise config_lib.ConfigError(
            f'no readable checkpoint in checkpoint.restore_from={config.checkpoint.restore_from!r}')
    return _train(exp, workdir, ckpt, restored, abstract_state, callbacks, list(writers))
  finally:
    ckpt.close()


def _finished(workdir: pathlib.Path, start: int, total: int) -> dict | None:
  """summary.json's content when the run in `workdir` is done at `start` (trained through, or stopped)."""
  path = workdir / history.SUMMARY_FILE
  if not path.exists():
    return None
  summary = json.loads(path.read_text())
  if summary.get('steps') == start and (start >= total or summary.get('stop_reason')):
    return summary
  return None


def _train(exp: build.Experiment, workdir: pathlib.Path, ckpt: checkpoint.Checkpointer,
           restored: checkpoint.Restored | None, abstract_state, user_callbacks: list,
           extra_writers: list) -> history.Run:
  config = exp.config
  state = restored.state if restored else _initial_state(exp)
  start = restored.step if restored else 0
  if restored:
    log.info('Resuming from step %d in %s', start, workdir)
  log.info('Model %s with %d parameters', config.model.name, state_lib.num_params(state.params))
  past = history.read_metrics(workdir)
  summary = _finished(workdir, start, exp.total_steps)
  if summary:
    log.info('%s is already trained to step %d; nothing to do', workdir, start)
    changes = build.config_changes(config, workdir)
    if changes:
      log.warning('%s was trained with other settings than this config (%s), which are not applied: the '
                  'results shown are the finished run\'s. Use a new --workdir to train with them, or raise '
                  'train.num_steps / train.num_epochs to continue this run', workdir, ', '.join(changes))
    if summary.get('stopped_early') and summary.get('best_step') in ckpt.steps():
      state = ckpt.restore(abstract_state, summary['best_step']).state
    return history.Run(workdir=workdir, history=past, state=state, summary=summary, model=exp.program.model)
  primary = jax.process_index() == 0
  if primary:
    (workdir / build.CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2) + '\n')
  stats = data.load_or_compute_stats(exp.splits.train, workdir, config.data.stats_max_examples, primary,
                                     tuple(config.data.normalize))
  trainer = engine.Trainer(exp, workdir, state, start, ckpt, stats, past)
  tracked = trackers.build(workdir, config) if primary else []
  writer = metric_writers.MetricWriter.default(workdir, exp.total_steps, start, config.train.progress_bar,
                                               past, primary, [*extra_writers, *tracked])
  best = best_checkpoint.BestCheckpoint(config.checkpoint)
  stopper = early_stopping.EarlyStopping(config.early_stopping) if config.early_stopping.patience else None
  target = early_stopping.Target(config.early_stopping.target) if config.early_stopping.target else None
  callbacks = engine.CallbackList([
      nonfinite.NonFiniteGuard(), metric_writers.WriteMetrics(writer), layer_stats.LayerStats(writer),
      plateau.Plateau(exp.program.optimizer), best, *([stopper] if stopper else []),
      *([target] if target else []),
      *([snapshots.Snapshots(workdir, config, exp.total_steps)] if config.checkpoint.snapshots else []),
      *([dynamics.PredictionDynamics(config.diagnostics.fixed_batch, primary)]
        if config.diagnostics.fixed_batch else []),
      *([profiler.Profiler(config.profile.start_step, config.profile.num_steps)]
        if config.profile.start_step else []),
      *user_callbacks, preemption.Preemption()])
  started = time.time()
  figures = figure_process.Figures() if primary else None  # Drawn by another process as the run goes on.
  if config.diagnostics.report and primary and start == 0:
    run_report.at_start(exp, state, stats, workdir, figures.draw)
  try:
    engine.run(trainer, callbacks, restored.data if restored else data.stream_state(0))
    if figures:  # The curves' train and eval points are all written: drawn while the final pass runs.
      figures.draw(history.write_curves, history.curve_points(history.read_metrics(workdir)),
                   workdir / history.CURVES_FILE)
    steps_done = int(jax.device_get(trainer.state.step))
    state, last_eval = trainer.state, trainer.evaluation
    if stopper and stopper.stopped and best.best.step != steps_done:
      ckpt.wait()
      state, last_eval = ckpt.restore(abstract_state, best.best.step).state, None
    final = evaluation.final_metrics(exp, state, stats, last_eval)
    report, findings = (run_report.at_end(exp, state, stats, final, workdir, figures and figures.draw)
                        if config.diagnostics.report else ({}, []))
    writer.write({'step': steps_done, 'epoch': steps_done / exp.steps_per_epoch,
                  **{k: v for k, v in final.items() if k.startswith('test/')}})
  finally:
    writer.close()
    callbacks.close()
  records = history.read_metrics(workdir)
  summary = {'steps': steps_done, 'wall_s': time.time() - started, 'best_step': best.best.step,
             'best': best.best.record, 'final': final, **report, 'perf': trainer.perf,
             'diagnosis': evaluation.diagnose(records) + findings}
  if trainer.stop_reason:
    summary['stop_reason'] = trainer.stop_reason
  if stopper and stopper.stopped:
    summary['stopped_early'] = True
  if target and target.reached:
    summary.update(target.reached)
  if primary:
    (workdir / history.SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + '\n')
    try:
      figures.wait()
    except Exception as e:  # noqa: BLE001 - a figure is a report: the trained, saved run stands.
      log.warning('Not every figure in %s was drawn: %s', workdir / 'plots', e)
  run = history.Run(workdir=workdir, history=records, state=state, summary=summary, model=exp.program.model)
  callbacks.on_fit_end(trainer, run)
  return run


def _initial_state(exp: build.Experiment):
  """A fresh state; with `init_from`, its parameters and BatchNorm statistics where path and shape match."""
  state = exp.new_state()
  init_from = exp.config.init_from
  if not init_from:
    return state
  if weights.is_weight_file(init_from):
    fresh = {'params': state.params, 'batch_stats': state.batch_stats}
    return transfer.initialize(state, weights.initial_variables(init_from, fresh), init_from)
  source_config = transfer.source_config(init_from)
  source = build.read_only(checkpoint.checkpoint_dir(init_from), source_config)
  restored = source.restore(build.prepare(source_config, None).abstract_state())
  source.close()
  if restored is None:
    raise config_lib.ConfigError(f'no readable checkpoint in init_from={init_from!r}')
  source_variables = {'params': restored.state.params, 'batch_stats': restored.state.batch_stats}
  return transfer.initialize(state, source_variables, init_from)


def evaluate(config: ml_collections.ConfigDict | None, workdir: str | pathlib.Path, *, model=None, data=None,
             task=None) -> dict:
  """Eval- and test-split metrics of the newest checkpoint in `workdir`, plus the ensemble's when the
  config names members (or the workdir holds a population or snapshots); writes nothing. `config=None`
  reads the run's own config.json."""
  if config is None and (pathlib.Path(workdir) / build.CONFIG_FILE).exists():
    config = transfer.source_config(workdir)
  config = build.with_objects(config, model, data, task)
  return ensemble.evaluate(config, pathlib.Path(workdir), model=model, data_source=data, task=task)

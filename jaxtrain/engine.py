"""The engine: the loop around the pure jitted step, and the callbacks that carry every other concern.

The loop (`run`) steps, and at the moments a config names (log, eval, checkpoint, or a callback's request)
evaluates (evaluation.py) and saves, and hands over to callbacks: writing metrics, best-k checkpoints, early
stopping, the plateau schedule, snapshots, preemption, the non-finite guard and in-graph diagnostics each
live in their own module under callbacks/, and a user's `Callback` joins them. Between moments nothing
waits on the device: the step is dispatched asynchronously and only `on_step` hooks (host-only
bookkeeping) run.
"""

import functools
import logging
import pathlib
import time

import jax
import numpy as np

from jaxtrain import checkpoint, data, evaluation, perf
from jaxtrain import config as config_lib
from jaxtrain.config import ConfigError

log = logging.getLogger('jaxtrain')


class Callback:
  """A hook into training; every method is optional. Hooks run only at log, eval and checkpoint moments,
  so on other steps a callback costs nothing and the host never waits for the device.

  `record` is exactly what goes into metrics.jsonl. `trainer.stop(reason)` ends the run after the current
  step (a checkpoint is saved, summary.json records `stop_reason`); `trainer.save()` forces a checkpoint.
  """

  def on_fit_start(self, trainer: 'Trainer') -> None: ...
  def on_log(self, trainer: 'Trainer', step: int, record: dict) -> None: ...
  def on_eval(self, trainer: 'Trainer', step: int, record: dict) -> None: ...
  def on_checkpoint(self, trainer: 'Trainer', step: int) -> None: ...
  def on_fit_end(self, trainer: 'Trainer', run) -> None: ...


_HOOKS = ('on_fit_start', 'on_step', 'before_moment', 'on_log', 'on_eval', 'on_checkpoint', 'on_fit_end',
          'close')


class CallbackList:
  """Calls each hook on the callbacks that define it, in order. `on_step` (every step, host-only) and
  `before_moment` (before a moment's records exist) are for the built-in callbacks; `close` runs however
  the run ends."""

  def __init__(self, callbacks):
    self.callbacks = list(callbacks)
    for hook in _HOOKS:  # Resolved once: the loop's per-step `on_step` is one call over a ready list.
      setattr(self, hook, functools.partial(
          _call_each, [getattr(c, hook) for c in self.callbacks if _defines(c, hook)]))


def _call_each(functions: list, *args) -> None:
  for function in functions:
    function(*args)


def _defines(callback, hook: str) -> bool:
  """Whether `callback` has its own `hook`: a method of its class, or a function set on the instance."""
  if hook in vars(callback):
    return callable(vars(callback)[hook])
  method = getattr(type(callback), hook, None)
  return method is not None and method is not getattr(Callback, hook, None)


def user_callbacks(callbacks) -> list[Callback]:
  """`fit(callbacks=)` as a list: None, one Callback or an iterable of them; a ConfigError for others."""
  if callbacks is None:
    return []
  callbacks = [callbacks] if isinstance(callbacks, Callback) else list(callbacks)
  wrong = [type(c).__name__ for c in callbacks if not isinstance(c, Callback)]
  if wrong:
    raise ConfigError(f'callbacks holds {", ".join(wrong)}, not jaxtrain.Callback; subclass '
                      'jaxtrain.Callback and define the hooks you need (on_log, on_eval, ...)')
  return callbacks


class Trainer:
  """The running fit: what the engine advances and callbacks read and steer."""

  def __init__(self, exp, workdir: pathlib.Path, state, start: int, ckpt: checkpoint.Checkpointer,
               stats: dict, history: list[dict]):
    self.exp, self.config, self.workdir, self.state, self.start = exp, exp.config, workdir, state, start
    self.step, self.ckpt, self.stats, self.history = start, ckpt, stats, history
    self.meta = {'config': exp.config.to_dict(), 'normalization': stats}
    self.stop_reason: str | None = None
    self.evaluation: dict | None = None  # The eval record of the current step, when it has one.
    self._save_requested, self._pending, self.diag = False, [], None
    self._last_log = (start, time.time())  # (step, time) of the last log record, for steps/s.
    self.perf: dict = {}  # The compiled step's FLOPs and memory per device (`analyze`), for summary.json.
    task = exp.program.task  # A language model's examples are sequences: its throughput is in tokens too.
    self._tokens_per_example = exp.example[task.label].shape[-1] if task.name == 'language_modeling' else 0
    self.train_data = data.train_batches(exp.splits.train, stats, self.config.data.batch_size,
                                         self.config.seed, exp.strategy.process_shard)

  @property
  def epoch(self) -> float:
    return self.step / self.exp.steps_per_epoch

  def stop(self, reason: str) -> None:
    """Ends the run after the current step, with a checkpoint; summary.json records `reason`."""
    self.stop_reason = self.stop_reason or reason

  def save(self) -> None:
    """Saves a checkpoint at the end of the current step."""
    self._save_requested = True

  def evaluate(self, state, split: str = 'eval') -> dict:
    """The task's metrics of `state` over a whole split: {'eval/loss': ..., ...}."""
    return evaluation.split_metrics(self.exp, state, self.stats, split)

  def _train_record(self) -> dict:
    """The log record of the steps since the last one: one jitted mean and one transfer (the only sync)."""
    # window_steps: how many steps the means cover; fewer in the first record after a resume mid-window.
    record = {'step': self.step, 'epoch': self.epoch, **_mean_metrics(self._pending),
              'train/window_steps': len(self._pending)}
    if self.step > self._last_log[0]:
      steps_per_sec = (self.step - self._last_log[0]) / (time.time() - self._last_log[1])
      record['train/steps_per_sec'] = steps_per_sec
      record['train/examples_per_sec'] = steps_per_sec * self.config.data.batch_size
      if self._tokens_per_example:
        record['train/tokens_per_sec'] = record['train/examples_per_sec'] * self._tokens_per_example
      if self.perf.get('step_flops') and self.perf.get('peak_flops'):
        record['train/mfu'] = steps_per_sec * self.perf['step_flops'] / self.perf['peak_flops']
    self._pending, self._last_log = [], (self.step, time.time())
    return record

  def analyze(self, chunk, k) -> None:
    """Compiles the train step ahead of its first call (the loop's call then finds it compiled): logs its
    memory per device, stops a run that cannot fit with a ConfigError, and keeps its FLOPs for MFU."""
    compiled = self.exp.program.train_step.lower(self.state, chunk, k).compile()
    device, perf_config = jax.local_devices()[0], self.config.perf
    figures = perf.memory(compiled, self.state)
    log.info('The train step needs per device: %s', perf.describe(figures))
    perf.check_fits(figures, perf.device_memory(device, perf_config.device_memory))
    self.perf = {'memory': figures, 'step_flops': perf.step_flops(compiled),
                 'peak_flops': perf.peak_flops(device, self.config.model.dtype, perf_config.peak_flops)}

  def _chunks(self, restored_data: dict):
    stream = data.train_iterator(self.train_data, restored_data,
                                 data.workers(self.exp.splits.train, self.config.data.workers))
    per_chunk = data.chunk_steps(self.train_data[0])
    chunks = data.prefetch(data.chunks(stream, per_chunk), self.exp.strategy.place_chunk,
                           self.config.data.prefetch)
    return chunks, per_chunk


def run(trainer: Trainer, callbacks: CallbackList, restored_data: dict) -> None:
  """Trains from `trainer.start` to the configured number of steps (or a stop), then `on_fit_end` is the
  caller's (it has the final metrics)."""
  exp, config = trainer.exp, trainer.config
  chunks, per_chunk = trainer._chunks(restored_data)
  eval_every = config.train.eval_every_steps or exp.steps_per_epoch
  save_every = config.checkpoint.every_steps or exp.steps_per_epoch
  diag_every, total = config.diagnostics.every_steps, exp.total_steps
  started = time.time()
  try:
    callbacks.on_fit_start(trainer)
    for step in range(trainer.start + 1, total + 1):
      if (step - trainer.start - 1) % per_chunk == 0:
        chunk = next(chunks)
      diagnose = diag_every > 0 and step % diag_every == 0
      train_step = exp.program.diag_step if diagnose else exp.program.train_step
      k = np.int32((step - trainer.start - 1) % per_chunk)
      if step == trainer.start + 1:
        trainer.analyze(chunk, k)
      with jax.profiler.StepTraceAnnotation('train', step_num=step):
        trainer.state, metrics = train_step(trainer.state, chunk, k)
      trainer.diag = metrics.pop('diag') if diagnose else None
      trainer._pending.append(metrics)
      trainer.step, trainer.evaluation = step, None
      if step == trainer.start + 1:
        jax.block_until_ready(metrics)
        log.info('First step (compilation included) took %.1fs', time.time() - started)
        trainer._last_log = (step, time.time())
      callbacks.on_step(trainer, step)
      logs = config_lib.every(config.train.log_every_steps, step, total)
      evaluates = config_lib.every(eval_every, step, total)
      scheduled_save = (config_lib.every(save_every, step, total)
                        or (config.checkpoint.epoch_end and step % exp.steps_per_epoch == 0))
      if not (logs or evaluates or scheduled_save or trainer._save_requested or trainer.stop_reason):
        continue
      callbacks.before_moment(trainer, step)
      if logs:
        callbacks.on_log(trainer, step, trainer._train_record())
      if evaluates:
        trainer.evaluation = {'step': step, 'epoch': trainer.epoch, **trainer.evaluate(trainer.state)}
        callbacks.on_eval(trainer, step, trainer.evaluation)
      if scheduled_save or trainer._save_requested or trainer.stop_reason:  # Eval may have asked for one.
        trainer.ckpt.save(step, trainer.state, data.stream_state(step), trainer.meta, trainer.evaluation)
        trainer._save_requested = False
        callbacks.on_checkpoint(trainer, step)
      if trainer.stop_reason:
        log.info('Stopping at step %d: %s', step, trainer.stop_reason)
        break
  finally:
    chunks.close()


@jax.jit
def _stack_mean(pending: list[dict]) -> dict:
  return jax.tree.map(lambda *values: jax.numpy.mean(jax.numpy.stack(values), axis=0), *pending)


def _mean_metrics(pending: list[dict]) -> dict:
  """Averages the device metrics of the steps since the last log.

  One jitted reduction and one transfer; fetching each step's scalars separately costs ~4% of a CPU run.
  `skipped` (1 for a step whose update was dropped) is reported as a count over the window. A metric with
  a member axis (a population's) is reported per member, as 'train/<name>/m<i>'.
  """
  means = jax.device_get(_stack_mean(pending))
  means['skipped'] = means['skipped'] * len(pending)
  return {f'train/{k}' + (f'/m{i}' if np.ndim(v) else ''): float(x) for k, v in means.items()
          for i, x in enumerate(np.atleast_1d(v))}

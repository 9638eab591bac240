"""The one place that talks to orbax: save, restore, resume, best-k retention, fallback, preemption.

A checkpoint is a Composite of three items, so a step directory holds everything a run needs to continue:
`state` (the TrainState: step, params, opt_state, batch_stats, rng), `data` (the Grain iterator state of the
train stream) and `meta` (resolved config, normalization statistics, jaxtrain version; JSON, readable without
jaxtrain). Saves are asynchronous: `save` returns once the arrays are copied off the devices and training goes
on while the files are written.
"""

import contextlib
import dataclasses
import importlib.metadata
import logging
import pathlib
import signal
import sys
import threading
import time

import jax
import orbax.checkpoint as ocp
import packaging.version
from orbax.checkpoint import checkpoint_managers

from jaxtrain.config import ConfigError

log = logging.getLogger('jaxtrain')


class _OrbaxNotices(logging.Filter):
  """Drops orbax's info and warning records (a legacy-API notice, a missing-metadata notice, ... on every
  restore), which would otherwise print before the one `error:` line a user must read; they are kept when
  the jaxtrain logger is at DEBUG. Orbax's errors pass."""

  def filter(self, record: logging.LogRecord) -> bool:
    return (record.levelno >= logging.ERROR or '/orbax/' not in record.pathname
            or log.isEnabledFor(logging.DEBUG))


logging.getLogger('absl').addFilter(_OrbaxNotices())  # Orbax logs through absl's logger.

CHECKPOINT_DIR = 'checkpoints'
POPULATION_DIR = 'population_checkpoints'  # A population's members while they train.
DAMAGED_DIR = 'damaged_checkpoints'  # Where unreadable steps are moved (not deleted) so training can go on.


class IncompatibleCheckpoint(ConfigError):
  """A checkpoint whose arrays do not fit the configured model or optimizer."""


class SaveFailed(RuntimeError):
  """A checkpoint could not be written (a full disk, a lost mount); the steps saved before it stay."""


@dataclasses.dataclass(frozen=True)
class Restored:
  step: int
  state: object
  data: dict  # The Grain iterator state of the train stream.
  meta: dict


def version() -> str:
  try:
    return importlib.metadata.version('jaxtrain')
  except importlib.metadata.PackageNotFoundError:
    return 'unknown'


def checkpoint_dir(path: pathlib.Path) -> pathlib.Path:
  """A run's checkpoint folder from a workdir or the folder itself (for `checkpoint.restore_from`)."""
  path = pathlib.Path(path)
  return path / CHECKPOINT_DIR if (path / CHECKPOINT_DIR).is_dir() else path


def _preservation(checkpoint_config) -> checkpoint_managers.PreservationPolicy:
  """The newest `keep` steps plus the best `keep_best` evaluated ones.

  orbax's `max_to_keep` + `best_fn` ranks every step by its metric and can delete the newest (it has none,
  or a worse one); a union of LatestN and BestN always keeps it. Steps saved without metrics are ranked by
  LatestN only, so BestN's "keep unranked steps" must be off or nothing would ever be deleted.
  """
  monitor = checkpoint_config.monitor
  policies = [checkpoint_managers.LatestN(n=checkpoint_config.keep)]
  if checkpoint_config.keep_best:
    policies.append(checkpoint_managers.BestN(
        get_metric_fn=lambda metrics: metrics[monitor], reverse=checkpoint_config.mode == 'min',
        n=checkpoint_config.keep_best, keep_checkpoints_without_metrics=False))
  return checkpoint_managers.AnyPreservationPolicy(policies)


def _mismatch(saved_tree, abstract_state) -> str | None:
  """The first array path (parameters first) whose shape differs between a checkpoint and the configured
  state, or None."""
  saved = ocp.tree.to_flat_dict(saved_tree, sep='/')
  wanted = ocp.tree.to_flat_dict(abstract_state, sep='/')
  for path in sorted(set(saved) | set(wanted), key=lambda p: (not p.startswith('params/'), p)):
    if path not in saved:
      return f'{path} (shape {tuple(wanted[path].shape)}) is in the configured state, not in the checkpoint'
    if path not in wanted:
      return f'{path} (shape {tuple(saved[path].shape)}) is in the checkpoint but not in the configured state'
    if tuple(saved[path].shape) != tuple(wanted[path].shape):
      return (f'{path} has shape {tuple(saved[path].shape)} in the checkpoint but '
              f'{tuple(wanted[path].shape)} in the config')
  return None


class Checkpointer:
  """A run's checkpoints: `checkpoint.keep` newest plus `checkpoint.keep_best` best, async saves."""

  def __init__(self, directory: pathlib.Path, checkpoint_config, read_only: bool = False):
    self.directory = pathlib.Path(directory).absolute()
    self._read_only = read_only
    options = ocp.CheckpointManagerOptions(
        read_only=read_only, create=not read_only, cleanup_tmp_directories=not read_only,
        preservation_policy=None if read_only else _preservation(checkpoint_config))
    handlers = {'state': ocp.StandardCheckpointHandler(), 'data': ocp.JsonCheckpointHandler(),
                'meta': ocp.JsonCheckpointHandler()}
    self._manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)

  def steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, state, data_state: dict, meta: dict, metrics: dict | None = None) -> bool:
    """Starts an async save of `state` as `step` (the caller knows it: no device sync here; a no-op when
    that step is saved); `metrics` rank it for best-k retention."""
    if step in self._manager.all_steps():
      return False
    # force: the loop decides when to save; orbax's own interval and in-progress checks must not skip it.
    with self._writing():
      return self._manager.save(step, metrics=metrics, force=True, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state),
          meta=ocp.args.JsonSave({**meta, 'jaxtrain_version': version()})))

  def wait(self) -> None:
    """Blocks until every started save is committed."""
    with self._writing():
      self._manager.wait_until_finished()

  @contextlib.contextmanager
  def _writing(self):
    """An async save's failure surfaces at the next save or wait, as whatever orbax and TensorStore raise
    (a ValueError 'RESOURCE_EXHAUSTED ... No space left on device' for a full disk): a SaveFailed saying
    what failed and what was kept. The half-written step stays in its tmp folder, which the next start
    removes."""
    try:
      yield
    except Exception as e:  # noqa: BLE001 - every write failure, whichever layer raised it.
      text = str(e)
      full = 'No space left on device' in text or "os_error_code='28'" in text
      cause = 'no space left on device' if full else (text.strip().splitlines() or [type(e).__name__])[-1]
      kept = ', '.join(map(str, self.steps())) or 'none'
      raise SaveFailed(f'writing a checkpoint in {self.directory} failed: {cause[:300]}; the steps saved '
                       f'before are kept ({kept}): free space or choose another --workdir, then run the '
                       'same command again to resume') from None

  def restore(self, abstract_state, step: int | None = None) -> Restored | None:
    """`step` (default: the newest step that can be read) in the structure and shardings of
    `abstract_state`; None when there is no checkpoint.

    A step whose files are damaged (a truncated or missing file) is reported and skipped for the one before;
    in a writable run it is moved to `workdir/damaged_checkpoints/` so the run can save that step again.
    A checkpoint whose arrays do not fit the config raises IncompatibleCheckpoint naming the first path.
    """
    candidates = [step] if step is not None else sorted(self.steps(), reverse=True)
    for candidate in candidates:
      if self._saved_tree(candidate) is None:
        continue
      self._check_fits(candidate, abstract_state)
      try:
        restored = self._manager.restore(candidate, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)),
            data=ocp.args.JsonRestore(), meta=ocp.args.JsonRestore()))
      except Exception as e:  # noqa: BLE001 - any read error means the step is damaged.
        self._damaged(candidate, e)
        continue
      log.info('Restored step %d from %s', candidate, self.directory)
      return Restored(step=candidate, state=restored['state'], data=restored['data'], meta=restored['meta'])
    return None

  def check_fits(self, abstract_state) -> None:
    """Raises IncompatibleCheckpoint when the newest readable step does not fit `abstract_state`; reads
    only metadata, so a bad config is refused before anything is loaded or written."""
    for step in sorted(self.steps(), reverse=True):
      if self._saved_tree(step, report=False) is not None:
        self._check_fits(step, abstract_state)
        return

  def _saved_tree(self, step: int, report: bool = True):
    """The array metadata of a step's state, or None (reported as damaged) when it cannot be read."""
    try:
      saved = self._manager.item_metadata(step)['state']
      if saved is None:
        raise FileNotFoundError('its state item is missing')
      return saved.tree
    except Exception as e:  # noqa: BLE001
      if report:
        self._damaged(step, e)
      return None

  def _check_version(self, step: int) -> None:
    """A step written by a newer jaxtrain may hold what this one cannot read right (new state fields, a
    changed data position): refused, naming both versions, rather than resumed half-understood."""
    try:
      meta = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']
    except Exception:  # noqa: BLE001 - an unreadable step is reported as damaged where its state is read.
      return
    try:
      written, running = (packaging.version.Version(v) for v in (meta.get('jaxtrain_version'), version()))
    except (packaging.version.InvalidVersion, TypeError):  # 'unknown' (not installed) on either side.
      return
    if written > running:
      raise IncompatibleCheckpoint(
          f'checkpoint step {step} in {self.directory} was written by jaxtrain {written}, newer than this '
          f'jaxtrain {running}; upgrade jaxtrain (pip install -U jaxtrain) or use another --workdir')

  def _check_fits(self, step: int, abstract_state) -> None:
    self._check_version(step)
    mismatch = _mismatch(self._manager.item_metadata(step)['state'].tree, abstract_state)
    if mismatch:
      raise IncompatibleCheckpoint(
          f'checkpoint step {step} in {self.directory} does not fit this config: {mismatch}; '
          "use the run's own config or another --workdir")

  def _damaged(self, step: int, error: Exception) -> None:
    reason = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
    if self._read_only:
      log.warning('Checkpoint step %d in %s cannot be read (%s); trying the previous step',
                  step, self.directory, reason)
      return
    moved = self.directory.parent / DAMAGED_DIR / f'{step}-{time.strftime("%Y%m%d-%H%M%S")}'
    moved.parent.mkdir(parents=True, exist_ok=True)
    (self.directory / str(step)).rename(moved)
    self._manager.reload()
    log.warning('Checkpoint step %d in %s cannot be read (%s); moved it to %s and trying the previous step',
                step, self.directory, reason, moved)

  def close(self) -> None:
    self.wait()
    self._manager.close()


def save_state(path: pathlib.Path, state) -> None:
  """A lone train state outside any run's checkpoints (the NaN dump); blocks until written."""
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(pathlib.Path(path).absolute(), state)


def load_state(path: pathlib.Path, abstract_state):
  """A state written by `save_state`, in the structure and shardings of `abstract_state`."""
  with ocp.StandardCheckpointer() as checkpointer:
    return checkpointer.restore(pathlib.Path(path).absolute(),
                                jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state))


class Preempted(Exception):  # noqa: N818 - not an error: the run stopped on request and can resume.
  """Raised by `fit` after a SIGTERM/SIGINT once the current step's checkpoint is committed."""

  def __init__(self, step: int, workdir: pathlib.Path, signum: int):
    self.step, self.workdir, self.signum = step, workdir, signum
    super().__init__(f'stopped by {signal.Signals(signum).name} at step {step}; the checkpoint is saved in '
                     f'{workdir}; run the same command again to resume')


_STARTUP_SIGNALS: list[int] = []  # SIGTERMs that came before the loop listened (`keep_startup_sigterm`).


def keep_startup_sigterm() -> None:
  """From now on, a SIGTERM that arrives before training starts is kept for the loop, which then stops
  at its first step (with several processes, at the first log step) and saves. The CLI's train mode calls
  it first: a cluster may signal a job while it imports and compiles, and dying then would save nothing,
  so a requeued job signalled early again would never get further."""
  def keep(signum, frame):
    _STARTUP_SIGNALS.append(signum)
    print(f'\n{signal.Signals(signum).name} received while starting: the run stops and saves at its first '
          'step', file=sys.stderr, flush=True)
  if threading.current_thread() is threading.main_thread():
    signal.signal(signal.SIGTERM, keep)


class StopRequests:
  """Turns SIGTERM and SIGINT into a request the loop checks after each step (cluster preemption, Ctrl-C).

  The loop then saves, waits for the commit and raises `Preempted`. A second SIGINT aborts at once with
  KeyboardInterrupt. Handlers are installed only in the main thread (signals cannot be caught elsewhere)
  and the previous ones come back on exit.
  """

  def __init__(self):
    self.signum: int | None = None
    self._previous = {}

  def _handle(self, signum, frame):
    if self.signum is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.signum = signum
    print(f'\n{signal.Signals(signum).name} received: finishing the step and saving a checkpoint '
          '(Ctrl-C again aborts at once)', file=sys.stderr, flush=True)

  def __enter__(self) -> 'StopRequests':
    if _STARTUP_SIGNALS:
      self.signum = _STARTUP_SIGNALS.pop()
    if threading.current_thread() is threading.main_thread():
      for signum in (signal.SIGTERM, signal.SIGINT):
        self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)

"""Hyperparameter sweeps (note 003: coarse grid or random search, then refine), backed by Optuna.

`sweep.space` is a tuple of 'key=spec' strings over config keys; a spec is one of SPECS. Every trial is a
normal run (`jaxtrain.fit`) in workdir/trials/<n>/, so any trial can be inspected, evaluated or resumed like
any run. With a pruner, each evaluation of `sweep.metric` is reported to Optuna and a trial that falls
behind stops (`Pruned`). Processes that use the same storage URL and study name share one study, so a sweep
is spread over machines by starting the same command several times:
- the database decides how many trials start: counting the study's trials and creating the next one happen
  under a lock (`_creation_lock`) held in the database itself for a server (PostgreSQL's advisory locks,
  MySQL's GET_LOCK), and on the SQLite file's folder for SQLite, which is one machine's file anyway;
- trial n draws its point from a sampler seeded with (seed, n), so processes that share a study draw
  different points (each trial has its own number) and a sweep run again draws the same ones;
- every process writes sweep.csv from the database once no trial is running (a trial whose process died
  is failed by Optuna's heartbeat after `HEARTBEAT_GRACE_S`).
"""

import ast
import contextlib
import copy
import csv
import difflib
import fcntl
import json
import logging
import math
import pathlib
import re
import time
import warnings
import zlib

from jaxtrain import api, build, engine
from jaxtrain import config as config_lib
from jaxtrain.callbacks.nonfinite import NonFiniteError

log = logging.getLogger('jaxtrain')

SPECS = {'uniform': 'uniform(low, high)', 'loguniform': 'loguniform(low, high) with low > 0',
         'int': 'int(low, high), both included', 'choice': 'choice(a, b, ...)', 'grid': 'grid(a, b, ...)'}
SAMPLERS = ('grid', 'random', 'tpe')
PRUNERS = ('none', 'median', 'successive_halving')
CSV_FILE, PLOT_FILE, LOCK_FILE = 'sweep.csv', 'plots/sweep.png', 'sweep.lock'
HEARTBEAT_S, HEARTBEAT_GRACE_S = 20, 60  # A running trial's process proves it is alive this often.
CONNECT_TIMEOUT_S = 10  # An unreachable database server is an error after this long, not a hang.
STORAGE_EXAMPLE = 'postgresql+psycopg2://user:password@host:5432/database'


class Pruned(Exception):  # noqa: N818 - a decision, not an error.
  """Raised from a trial's `on_eval` when the pruner stops it; the sweep records the trial as pruned."""


def _optuna():
  try:
    import optuna
  except ImportError:
    raise config_lib.ConfigError(
        "--mode sweep needs Optuna; install it with pip install -e '.[sweep]'") from None
  return optuna


def _value(text: str):
  """'1e-3' -> 0.001, 'adam' -> 'adam', '(32, 64)' -> (32, 64): Python literals, else the bare word."""
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def parse_space(config) -> dict[str, tuple[str, list]]:
  """{config key: (kind, arguments)} from `sweep.space`; a ConfigError names the entry and what is allowed."""
  space = {}
  for entry in config.sweep.space:
    key, _, spec = (part.strip() for part in entry.partition('='))
    match = re.fullmatch(r'(\w+)\((.*)\)', spec, re.DOTALL)
    if key and match and match[1] not in SPECS:
      close = difflib.get_close_matches(match[1], SPECS, n=1)
      raise config_lib.ConfigError(
          f'sweep.space entry {entry!r}: the spec {match[1]!r} is not known'
          f'{f" (did you mean {close[0]!r}?)" if close else ""}; a spec is one of: '
          f'{", ".join(SPECS.values())}')
    if not key or not match:
      raise config_lib.ConfigError(f'sweep.space entry {entry!r} is not key=spec; a spec is one of: '
                                   f'{", ".join(SPECS.values())}')
    config_lib.check_key(config, key)
    kind = match[1]
    args = [_value(a.strip()) for a in _split(match[2])]
    numeric = all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args)
    if kind in ('uniform', 'loguniform', 'int') and not (
        len(args) == 2 and numeric and args[0] < args[1] and (kind != 'loguniform' or args[0] > 0)):
      raise config_lib.ConfigError(f'sweep.space entry {entry!r}: use {SPECS[kind]} with low < high')
    if kind in ('choice', 'grid') and not args:
      raise config_lib.ConfigError(f'sweep.space entry {entry!r}: use {SPECS[kind]} with at least one value')
    space[key] = (kind, args)
  if not space:
    raise config_lib.ConfigError("sweep.space is empty; e.g. --config.sweep.space=\"('optim.lr=loguniform"
                                 "(1e-4, 1e-1)',)\"")
  return space


def _split(text: str) -> list[str]:
  """Splits arguments at top-level commas, so tuples such as (32, 64) stay one argument."""
  parts, depth, current = [], 0, ''
  for char in text:
    depth += (char in '([') - (char in ')]')
    if char == ',' and depth == 0:
      parts.append(current)
      current = ''
    else:
      current += char
  return [p for p in [*parts, current] if p.strip()]


def _check(config) -> dict:
  c = config.sweep
  config_lib.lookup(SAMPLERS, 'sweep.sampler', c.sampler)
  config_lib.lookup(PRUNERS, 'sweep.pruner', c.pruner)
  if c.mode not in ('min', 'max'):
    raise config_lib.ConfigError(f"sweep.mode={c.mode!r} is not known; choose 'min' or 'max'")
  if not re.fullmatch(r'(eval|test)/\w+', c.metric):
    raise config_lib.ConfigError(
        f"sweep.metric={c.metric!r}: use an eval/ or test/ metric, e.g. 'eval/accuracy'")
  space = parse_space(config)
  if c.sampler == 'grid' and any(kind not in ('grid', 'choice') for kind, _ in space.values()):
    raise config_lib.ConfigError(
        'sweep.sampler=grid needs grid(...) or choice(...) for every key of sweep.space')
  if c.sampler != 'grid' and c.num_trials < 1:
    raise config_lib.ConfigError(f'sweep.num_trials={c.num_trials} is out of range; it must be >= 1 for '
                                 f'sweep.sampler={c.sampler}')
  return space


def _suggest(trial, space: dict) -> dict:
  """One point of the space from Optuna's trial; tuples are offered as their repr (Optuna stores scalars)."""
  point = {}
  for key, (kind, args) in space.items():
    if kind in ('uniform', 'loguniform'):
      point[key] = trial.suggest_float(key, float(args[0]), float(args[1]), log=kind == 'loguniform')
    elif kind == 'int':
      point[key] = trial.suggest_int(key, int(args[0]), int(args[1]))
    else:
      choices = [repr(a) if isinstance(a, tuple) else a for a in args]
      point[key] = _value(trial.suggest_categorical(key, choices)) if any(
          isinstance(a, tuple) for a in args) else trial.suggest_categorical(key, choices)
  return point


def _sampler(config, space: dict, trial_number: int | None = None):
  """The configured sampler; random and TPE seeded with (seed, trial_number) for one trial's draw."""
  optuna = _optuna()
  if config.sweep.sampler == 'grid':  # Picks among the points no trial of the study has taken yet.
    grid = {k: [repr(a) if isinstance(a, tuple) else a for a in args] for k, (_, args) in space.items()}
    return optuna.samplers.GridSampler(grid, seed=config.seed)
  seed = config.seed if trial_number is None else zlib.crc32(f'{config.seed}/{trial_number}'.encode())
  return {'random': optuna.samplers.RandomSampler, 'tpe': optuna.samplers.TPESampler}[
      config.sweep.sampler](seed=seed)


def storage_url(config, workdir: pathlib.Path) -> str:
  return config.sweep.storage or f'sqlite:///{(workdir / "sweep.db").absolute()}'


def _shown(url: str) -> str:
  """The URL without its password, for messages."""
  import sqlalchemy  # noqa: PLC0415 - Optuna's own dependency, only needed by sweeps.
  try:
    return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
  except sqlalchemy.exc.ArgumentError:
    return url


def _storage(url: str):
  """Optuna's RDBStorage for `url`; a ConfigError naming the cause and the fix when it cannot connect."""
  optuna = _optuna()
  import sqlalchemy  # noqa: PLC0415
  shown = _shown(url)
  if url.startswith('sqlite'):  # Processes sharing the file wait for each other's writes, not fail.
    engine = {'connect_args': {'timeout': 60}}
  elif url.startswith('postgresql'):
    engine = {'connect_args': {'connect_timeout': CONNECT_TIMEOUT_S}}
  else:
    engine = {}
  heartbeat = {'heartbeat_interval': HEARTBEAT_S, 'grace_period': HEARTBEAT_GRACE_S}
  for attempt in range(5):
    try:
      with warnings.catch_warnings():  # Optuna calls the heartbeat experimental; it is what we want here.
        warnings.simplefilter('ignore', optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(url, engine_kwargs=engine, **heartbeat)
    except sqlalchemy.exc.NoSuchModuleError:
      raise config_lib.ConfigError(f'sweep.storage={shown!r} names a database SQLAlchemy does not know; use '
                                   f'e.g. {STORAGE_EXAMPLE} or sqlite:///path/sweep.db') from None
    except sqlalchemy.exc.ArgumentError:
      raise config_lib.ConfigError(f'sweep.storage={shown!r} is not a database URL; use e.g. '
                                   f'{STORAGE_EXAMPLE} or sqlite:///path/sweep.db') from None
    except ImportError:  # Optuna's wrapping of the driver's ModuleNotFoundError.
      driver = sqlalchemy.engine.make_url(url).get_dialect().driver
      raise config_lib.ConfigError(
          f"sweep.storage={shown!r} needs the database driver {driver!r}, which is not installed; for "
          f"PostgreSQL install jaxtrain's extra (pip install -e '.[postgres]') and write the URL as "
          f'{STORAGE_EXAMPLE}') from None
    except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError) as e:
      # Processes creating the schema of a new database at once: one loses (a duplicate table or type),
      # then finds the schema there.
      if attempt < 4:
        time.sleep(1 + attempt)
        continue
      raise config_lib.ConfigError(f'sweep.storage={shown!r}: cannot create the study tables: '
                                   f'{str(getattr(e, "orig", e)).strip().splitlines()[0]}') from None
    except sqlalchemy.exc.OperationalError as e:
      if url.startswith('sqlite') and attempt < 4:  # SQLite's form of the same race.
        time.sleep(1 + attempt)
        continue
      cause = str(getattr(e, 'orig', e)).strip().splitlines()[0]
      raise config_lib.ConfigError(f'sweep.storage={shown!r}: cannot use the database: {cause}; check the '
                                   'host, port, user, password and database name in the URL') from None
  raise AssertionError('unreachable')


def _study(config, workdir: pathlib.Path, space: dict):
  optuna = _optuna()
  c = config.sweep
  pruner = {'none': optuna.pruners.NopPruner,
            'median': lambda: optuna.pruners.MedianPruner(n_startup_trials=c.startup_trials),
            'successive_halving': optuna.pruners.SuccessiveHalvingPruner}[c.pruner]()
  return optuna.create_study(study_name=c.study_name, storage=_storage(storage_url(config, workdir)),
                             sampler=_sampler(config, space), pruner=pruner,
                             direction='maximize' if c.mode == 'max' else 'minimize', load_if_exists=True)


class _DatabaseLock:
  """A lock every process on the database server sees: PostgreSQL's session advisory lock, or MySQL's
  named lock, on a connection of its own, keyed by the study's name."""

  def __init__(self, url: str, name: str):
    import sqlalchemy  # noqa: PLC0415
    self._sql = sqlalchemy.text
    self._connection = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool).connect()
    self._postgres = url.startswith('postgresql')
    self._key = zlib.crc32(name.encode())

  def acquire(self) -> None:
    sql = 'SELECT pg_advisory_lock(:key)' if self._postgres else 'SELECT GET_LOCK(:key, -1)'
    self._connection.execute(self._sql(sql), {'key': self._key if self._postgres else str(self._key)})

  def release(self) -> None:
    sql = 'SELECT pg_advisory_unlock(:key)' if self._postgres else 'SELECT RELEASE_LOCK(:key)'
    self._connection.execute(self._sql(sql), {'key': self._key if self._postgres else str(self._key)})

  def close(self) -> None:
    self._connection.close()


class _FileLock:
  """For SQLite: an flock on a file beside the database, which every process on that machine sees."""

  def __init__(self, path: pathlib.Path):
    self._file = path.open('w')

  def acquire(self) -> None:
    fcntl.flock(self._file, fcntl.LOCK_EX)

  def release(self) -> None:
    fcntl.flock(self._file, fcntl.LOCK_UN)

  def close(self) -> None:
    self._file.close()


@contextlib.contextmanager
def _creation_lock(url: str, study_name: str, workdir: pathlib.Path):
  """The lock under which a process counts the study's trials and creates the next one."""
  if url.startswith('sqlite'):
    database = pathlib.Path(url.removeprefix('sqlite:///'))
    lock = _FileLock(database.with_name(database.name + '.lock') if database.parent.is_dir()
                     else workdir / LOCK_FILE)
  else:
    lock = _DatabaseLock(url, study_name)
  try:
    yield lock
  finally:
    lock.close()


class _ReportToPruner(engine.Callback):
  """Reports each evaluation of the sweep's metric to the trial; raises Pruned when the pruner says so."""

  def __init__(self, trial, metric: str):
    self.trial, self.metric = trial, metric

  def on_eval(self, trainer, step: int, record: dict) -> None:
    if self.metric in record:
      self.trial.report(record[self.metric], step)
      if self.trial.should_prune():
        raise Pruned(f'trial {self.trial.number} pruned at step {step}: {self.metric}='
                     f'{record[self.metric]:.4g}')


def sweep(config, workdir: str | pathlib.Path, *, model=None, data=None, task=None) -> dict:
  """Runs trials of `config.sweep` until the study holds `sweep.num_trials` finished trials (the grid's size
  by default); writes sweep.csv and plots/sweep.png and returns {'best': {...}, 'trials': [...]}."""
  workdir = pathlib.Path(workdir)
  space = _check(config)
  # The run itself (objects, names, sweep.metric among what it reports) is checked before any file exists.
  build.prepare(build.with_objects(config, model, data, task), None, model=model, data_source=data, task=task)
  optuna = _optuna()
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  total = config.sweep.num_trials or math.prod(len(args) for _, args in space.values())
  workdir.mkdir(parents=True, exist_ok=True)
  study = _study(config, workdir, space)
  metric = config.sweep.metric

  def objective(trial):
    if config.sweep.sampler != 'grid':
      study.sampler = _sampler(config, space, trial.number)  # Consulted by the suggest calls below.
    point = _suggest(trial, space)
    trial_config = copy.deepcopy(config)
    config_lib.override(trial_config, point)

    log.info('Trial %d: %s', trial.number, json.dumps(point))
    try:
      run = api.fit(trial_config, workdir / 'trials' / str(trial.number), model=model, data=data, task=task,
                    callbacks=[_ReportToPruner(trial, metric)])
    except Pruned as e:
      log.info('%s', e)
      raise optuna.TrialPruned(str(e)) from None
    except NonFiniteError as e:
      log.warning('Trial %d failed: %s', trial.number, e)
      return float('nan')  # Optuna records a NaN objective as a failed trial.
    return run.summary['final'][metric]

  # Counting the study's trials (running ones too) and creating the next one happen under the lock, which
  # the objective releases once its trial exists, so all processes together start exactly `total`.
  url = storage_url(config, workdir)
  with _creation_lock(url, config.sweep.study_name, workdir) as lock:
    while True:
      lock.acquire()
      held = True

      def locked_objective(trial):
        nonlocal held
        lock.release()
        held = False
        return objective(trial)
      try:
        if len(study.get_trials(deepcopy=False)) >= total:
          break
        study.optimize(locked_objective, n_trials=1)
      finally:
        if held:
          lock.release()
  _wait_for_running(study, optuna)
  return _report(study, space, metric, workdir)


def _wait_for_running(study, optuna, poll_s: float = 2.0) -> None:
  """Returns once no trial of the study runs (other processes' included), so sweep.csv is final; the
  heartbeat fails the trials of processes that died."""
  running = optuna.trial.TrialState.RUNNING
  announced = False
  while True:
    with warnings.catch_warnings():  # Experimental in Optuna's eyes; the heartbeat's own recovery.
      warnings.simplefilter('ignore', optuna.exceptions.ExperimentalWarning)
      optuna.storages.fail_stale_trials(study)
    others = [t.number for t in study.get_trials(deepcopy=False, states=(running,))]
    if not others:
      return
    if not announced:
      log.info('Waiting for trials %s of other processes before writing %s', others, CSV_FILE)
      announced = True
    time.sleep(poll_s)


def _report(study, space: dict, metric: str, workdir: pathlib.Path) -> dict:
  """sweep.csv, plots/sweep.png and a printed table of every trial of the study."""
  rows = [{'trial': t.number, 'state': t.state.name.lower(),
           metric: t.value if t.value is not None else _last(t.intermediate_values),
           'steps': max(t.intermediate_values, default=None), **t.params} for t in study.trials]
  columns = ['trial', 'state', metric, 'steps', *space]
  with (workdir / CSV_FILE).open('w', newline='') as f:
    writer = csv.DictWriter(f, columns)
    writer.writeheader()
    writer.writerows(rows)
  print('  '.join(f'{c:>14}' for c in columns))
  for row in rows:
    print('  '.join(f'{v:>14.4g}' if isinstance(v, float) else f'{v!s:>14}' for v in map(row.get, columns)))
  plot_trials(rows, space, metric, workdir / PLOT_FILE)
  complete = [t for t in study.trials if t.state.name == 'COMPLETE']
  best = None
  if complete:
    trial = study.best_trial
    best = {'trial': trial.number, metric: trial.value, 'params': trial.params,
            'workdir': str(workdir / 'trials' / str(trial.number))}
  return {'best': best, 'trials': rows}


def _last(values: dict):
  """The last value a trial reported (a pruned trial's standing when it stopped), or None."""
  return values[max(values)] if values else None


def _category_order(value) -> tuple:
  """Numbers first, by value, then everything else by its text."""
  number = isinstance(value, int | float) and not isinstance(value, bool)
  return (not number, value if number else str(value))


def plot_trials(rows: list[dict], space: dict, metric: str, path: pathlib.Path):
  """The metric against each hyperparameter; pruned trials in grey at their last reported value."""
  import matplotlib.pyplot as plt  # noqa: PLC0415 - only the sweep's plot needs matplotlib.
  from matplotlib import ticker  # noqa: PLC0415

  path.parent.mkdir(parents=True, exist_ok=True)
  fig, axes = plt.subplots(1, len(space), figsize=(4 * len(space), 3.2), squeeze=False)
  for ax, (key, (kind, _)) in zip(axes[0], space.items(), strict=True):
    categorical = kind in ('choice', 'grid')
    # Categories in sorted order (numbers by value), not in the order trials happened to draw them.
    categories = sorted({r[key] for r in rows if r[key] is not None}, key=_category_order)
    for state, color in (('complete', 'tab:blue'), ('pruned', 'tab:gray')):
      points = [(r[key], r[metric]) for r in rows if r['state'] == state and r[metric] is not None]
      if points:
        xs, ys = zip(*points, strict=True)
        ax.scatter([categories.index(x) for x in xs] if categorical else xs, ys, c=color, label=state)
    if categorical:
      ax.set_xticks(range(len(categories)), [str(c) for c in categories])
    if kind == 'loguniform':
      ax.set_xscale('log')
      ax.xaxis.set_minor_formatter(ticker.NullFormatter())  # Labels at every minor tick overlap.
    ax.set_xlabel(key)
    ax.set_ylabel(metric)
  axes[0][0].legend()
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return fig


"""Hyperparameter sweeps (note 003: coarse grid or random search, then refine), backed by Optuna.

`sweep.space` is a tuple of 'key=spec' strings over config keys; a spec is one of SPECS. Every trial is a
normal run (`jaxtrain.fit`) in workdir/trials/<n>/, so any trial can be inspected, evaluated or resumed like
any run. With a pruner, each evaluation of `sweep.metric` is reported to Optuna and a trial that falls
behind stops (`Pruned`). Processes that use the same storage URL and study name share one study, so a sweep
is spread over machines by starting the same command several times:
- the database decides how many trials start (`study_storage.creation_lock`);
- trial n draws its point from a sampler seeded with (seed, n), so processes that share a study draw
  different points (each trial has its own number) and a sweep run again draws the same ones;
- every process writes sweep.csv from the database once no trial is running
  (`study_storage.wait_for_running`).
"""

import ast
import copy
import csv
import difflib
import json
import logging
import math
import pathlib
import re
import zlib

from jaxtrain import api, build, engine
from jaxtrain import config as config_lib
from jaxtrain.callbacks.nonfinite import NonFiniteError
from jaxtrain.experiments import study_storage

log = logging.getLogger('jaxtrain')

SPECS = {'uniform': 'uniform(low, high)', 'loguniform': 'loguniform(low, high) with low > 0',
         'int': 'int(low, high), both included', 'choice': 'choice(a, b, ...)', 'grid': 'grid(a, b, ...)'}
SAMPLERS = ('grid', 'random', 'tpe')
PRUNERS = ('none', 'median', 'successive_halving')
CSV_FILE, PLOT_FILE = 'sweep.csv', 'plots/sweep.png'


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


def _study(config, workdir: pathlib.Path, space: dict):
  optuna = _optuna()
  c = config.sweep
  pruner = {'none': optuna.pruners.NopPruner,
            'median': lambda: optuna.pruners.MedianPruner(n_startup_trials=c.startup_trials),
            'successive_halving': optuna.pruners.SuccessiveHalvingPruner}[c.pruner]()
  storage = study_storage.connect(study_storage.url(config, workdir))
  return optuna.create_study(study_name=c.study_name, storage=storage,
                             sampler=_sampler(config, space), pruner=pruner,
                             direction='maximize' if c.mode == 'max' else 'minimize', load_if_exists=True)


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
  url = study_storage.url(config, workdir)
  with study_storage.creation_lock(url, config.sweep.study_name, workdir) as lock:
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
  study_storage.wait_for_running(study)
  return _report(study, space, metric, workdir)


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


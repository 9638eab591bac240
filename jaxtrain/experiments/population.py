"""Populations: `population.size` copies of a run trained at once by one jitted, vmapped train step.

Every member is the run itself (`steps.make_train_step`, unchanged) with its own learning rate, weight
decay and seed (initialization and dropout; the data order follows `seed`, so all members see the same
batches, which are placed once and shared). The learning rate and weight decay are arrays in the optimizer
state, not constants of the program, so one compilation serves every member. Per-member dropout rates are
not offered: Flax's Dropout takes its rate as a static attribute, so distinct rates would be distinct
programs (sweep them with --mode sweep instead). An NNX module arrives initialized, so its members start
from the same weights; their seeds still give each its own dropout.

The population trains on the engine like a single run, with a `Members` state (the members' states, which
are active, where each stopped) checkpointed in workdir/population_checkpoints/: it resumes after a kill
and saves on SIGTERM. A member whose loss turns non-finite, or that early stopping stops, is masked: its
state stops changing while the others go on. At the end every member is saved as a normal run in
workdir/members/m<i>/ (an ensemble can average them) and the best one by `checkpoint.monitor` also in
workdir/checkpoints/, so `--mode eval` works on the population's workdir.
"""

import dataclasses
import functools
import json
import logging
import pathlib
import time

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxtrain import build, checkpoint, data, engine, evaluation, history, monitor, optim, parallel, steps
from jaxtrain import config as config_lib
from jaxtrain import state as state_lib
from jaxtrain.callbacks import preemption, writers
from jaxtrain.callbacks.writers import MetricWriter
from jaxtrain.data import augment

log = logging.getLogger('jaxtrain')
MEMBERS_DIR = 'members'


@dataclasses.dataclass(frozen=True)
class _MemberOptimizer(optim.Optimizer):
  """The configured chain at learning rate 1 without weight decay, then `_held_hyperparameters`."""

  def learning_rate(self, opt_state, step):
    return self.schedule(step) * opt_state[-1]['lr']


def _held_hyperparameters(optim_config, schedule) -> optax.GradientTransformation:
  """lr * (update - schedule(t) * factor * weight_decay * kernel): optim.build's decoupled weight decay and
  learning rate, with both read from the state (one number per member once vmapped)."""

  def init(params):
    del params
    return {'count': jnp.zeros((), jnp.int32), 'lr': jnp.ones(()), 'weight_decay': jnp.zeros(())}

  def update(updates, state, params):
    rules = optim.parameter_rules(optim_config, params)
    decay = state['weight_decay'] * schedule(state['count'])

    def one(path, u, p, is_kernel):
      factor = rules[optim.parameter_path(path)][1] if is_kernel else 0.0
      return state['lr'] * (u - factor * decay * p) if factor else state['lr'] * u
    updates = jax.tree_util.tree_map_with_path(one, updates, params, optim.kernel_mask(params))
    return updates, {**state, 'count': state['count'] + 1}

  return optax.GradientTransformation(init, update)


def member_optimizer(optim_config, total_steps: int) -> optim.Optimizer:
  if optim_config.schedule == 'plateau':
    raise config_lib.ConfigError("optim.schedule='plateau' is not supported with population.size > 1; "
                                 'use another schedule')
  base_config = ml_collections.ConfigDict(optim_config.to_dict())
  base_config.update(lr=1.0, weight_decay=0.0)
  base = optim.build(base_config, total_steps)
  tx = optax.chain(base.tx, _held_hyperparameters(optim_config, base.schedule))
  return _MemberOptimizer(tx=tx, schedule=base.schedule, plateau=None)


def members(config) -> list[dict]:
  """Each member's overrides: {'optim.lr', 'optim.weight_decay', 'seed'} (the run's value where not given)."""
  p = config.population
  pick = lambda values, default, i: values[i] if values else default  # noqa: E731
  return [{'optim.lr': float(pick(p.lr, config.optim.lr, i)),
           'optim.weight_decay': float(pick(p.weight_decay, config.optim.weight_decay, i)),
           'seed': int(pick(p.seed, config.seed, i))} for i in range(p.size)]


def member_config(config, overrides: dict) -> ml_collections.ConfigDict:
  """The config of one member as a run of its own (population.size = 1)."""
  single = ml_collections.ConfigDict(config.to_dict())
  config_lib.override(single, {**overrides, 'population.size': 1, 'population.lr': (),
                               'population.weight_decay': (), 'population.seed': ()})
  return single


def _where(mask, new, old):
  return jax.tree.map(lambda n, o: jnp.where(mask.reshape(-1, *(1,) * (n.ndim - 1)), n, o), new, old)


@flax.struct.dataclass
class Members:
  """The population's state as the engine trains it: the members' states (a leading member axis), which
  of them still train, and the step each one stopped at (0: still training); checkpointed whole."""

  states: state_lib.TrainState
  active: jax.Array
  stopped_at: jax.Array


@functools.lru_cache(maxsize=4)
def _steps(model, task, optim_config, total_steps: int, nonfinite: str, data_config, use_ema: bool):
  """(member optimizer, train step, eval step), jitted with the engine's signatures: (members, chunk, k) ->
  (members, metrics), each metric with a member axis; (members, batch) -> sums, one set per member. Cached
  by its inputs (the model and task are the single run's cached objects), so a re-run compiles nothing."""
  optimizer = member_optimizer(optim_config, total_steps)
  train_step = jax.vmap(steps.make_train_step(model, optimizer, optim_config, nonfinite, task,
                                              augment.build(data_config)), in_axes=(0, None))

  def step(members: Members, chunk, k):
    new, metrics = train_step(members.states, jax.tree.map(lambda x: x[k], chunk))
    return members.replace(states=_where(members.active, new, members.states)), metrics
  eval_step = jax.vmap(steps.make_eval_step(model, task, use_ema=use_ema), in_axes=(0, None))
  return (optimizer, jax.jit(step, donate_argnums=0),
          jax.jit(lambda members, batch: eval_step(members.states, batch)))


def _member(tree, i: int):
  """Member `i` of a tree with a leading member axis."""
  return jax.tree.map(lambda x: x[i], tree)


def _population_experiment(exp: build.Experiment, specs: list[dict]) -> build.Experiment:
  """`exp` with the population's program (vmapped steps, `Members` state) on one device."""
  config = exp.config
  ema = config.optim.ema_decay > 0
  optimizer, train_step, eval_step = _steps(
      exp.program.model, exp.program.task, ml_collections.FrozenConfigDict(config.optim), exp.total_steps,
      config.train.nonfinite, ml_collections.FrozenConfigDict(config.data), ema and config.optim.ema_eval)
  create = functools.partial(state_lib.create, exp.program.model, optimizer.tx, exp.example, ema=ema)

  def create_members(seed, initial=None):
    del seed  # Each member has its own (population.seed); an NNX module's `initial` weights are shared.
    states = jax.vmap(lambda member_seed: create(member_seed, initial=initial))(
        jnp.asarray([s['seed'] for s in specs]))
    held = {**states.opt_state[-1], 'lr': jnp.asarray([s['optim.lr'] for s in specs], jnp.float32),
            'weight_decay': jnp.asarray([s['optim.weight_decay'] for s in specs], jnp.float32)}
    return Members(states=states.replace(opt_state=(*states.opt_state[:-1], held)),
                   active=jnp.ones(len(specs), bool), stopped_at=jnp.zeros(len(specs), jnp.int32))

  single = ml_collections.ConfigDict({**config.parallel.to_dict(), 'strategy': 'single'})
  strategy = parallel.make(single, {})
  create_state = jax.jit(create_members, compiler_options=strategy.run_once_options)
  program = dataclasses.replace(exp.program, train_step=train_step, eval_step=eval_step, diag_step=None,
                                create_state=create_state)
  return dataclasses.replace(exp, program=program, strategy=strategy)


class MemberStopping(engine.Callback):
  """Early stopping and the non-finite halt, per member: a stopped member is masked (its state stops
  changing) while the others go on; the run stops when none is left. Rebuilt from metrics.jsonl on resume
  like a single run's."""

  def __init__(self, config, size: int):
    self.config = config
    self.stoppers = [monitor.Best(f'{config.early_stopping.monitor}/m{i}', config.early_stopping.mode,
                                  config.early_stopping.min_delta) for i in range(size)]

  def on_fit_start(self, trainer) -> None:
    for stopper in self.stoppers:
      stopper.replay(trainer.history, trainer.start)

  def on_log(self, trainer, step: int, record: dict) -> None:
    record['population/active'] = int(np.asarray(jax.device_get(trainer.state.active)).sum())

  def on_eval(self, trainer, step: int, record: dict) -> None:
    members = trainer.state
    active, skips = (np.array(x) for x in jax.device_get((members.active, members.states.skips)))
    stopped_at = np.array(jax.device_get(members.stopped_at))
    patience = self.config.early_stopping.patience
    for i, stopper in enumerate(self.stoppers):
      stopper.update(step, record)
      halted = self.config.train.nonfinite == 'halt' and skips[i] > 0
      if active[i] and (halted or (patience and stopper.since >= patience)):
        active[i], stopped_at[i] = False, step
        log.info('Member %d stopped at step %d (%s)', i, step,
                 'non-finite loss' if halted else 'early stopping')
    trainer.state = members.replace(active=jnp.asarray(active), stopped_at=jnp.asarray(stopped_at))
    if not active.any():
      trainer.stop('every member stopped')


def fit_population(config: ml_collections.ConfigDict, workdir: str | pathlib.Path | None = None, *,
                   model=None, data_source=None, task=None, callbacks=()) -> history.Run:
  """Trains the population on the engine (so it resumes after a kill and saves on SIGTERM like a single
  run); returns the best member's Run (summary.json lists every member). `callbacks` see the population's
  records (metrics per member, 'eval/loss/m0', ...) and its `Members` state."""
  workdir = pathlib.Path(workdir) if workdir else None
  # A member alone, checked against the workdir (its config.json, and the best member's checkpoint).
  one = build.prepare(config, workdir, model=model, data_source=data_source, task=task)
  specs = members(config)
  exp = _population_experiment(one, specs)
  if workdir and (workdir / checkpoint.POPULATION_DIR).is_dir():
    build.read_only(workdir / checkpoint.POPULATION_DIR, config).check_fits(exp.abstract_state())
  workdir = workdir or build.temporary_workdir()
  summary_path = workdir / history.SUMMARY_FILE
  if summary_path.exists() and 'members' in json.loads(summary_path.read_text()):
    log.info('%s holds a trained population; nothing to do', workdir)
    summary = json.loads(summary_path.read_text())
    ckpt = checkpoint.Checkpointer(workdir / checkpoint.CHECKPOINT_DIR, config.checkpoint, read_only=True)
    state = ckpt.restore(one.abstract_state()).state
    ckpt.close()
    return history.Run(workdir=workdir, history=history.read_metrics(workdir), state=state, summary=summary,
                       model=one.program.model)
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / build.CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2) + '\n')
  log.info('Population of %d: %s', len(specs), json.dumps(specs))
  stats = data.load_or_compute_stats(exp.splits.train, workdir, config.data.stats_max_examples,
                                     keys=tuple(config.data.normalize))
  # The members' own checkpoints; workdir/checkpoints/ receives the best member, as a single run, at the end.
  keep_latest = ml_collections.ConfigDict({**config.checkpoint.to_dict(), 'keep_best': 0})
  ckpt = checkpoint.Checkpointer(workdir / checkpoint.POPULATION_DIR, keep_latest)
  past = history.read_metrics(workdir)
  try:
    restored = ckpt.restore(exp.abstract_state())
    start = restored.step if restored else 0
    if restored:
      log.info('Resuming from step %d in %s', start, workdir)
    trainer = engine.Trainer(exp, workdir, restored.state if restored else exp.new_state(), start, ckpt,
                             stats, past)
    writer = MetricWriter.default(workdir, exp.total_steps, start, config.train.progress_bar, past)
    callbacks = engine.CallbackList([MemberStopping(config, len(specs)), writers.WriteMetrics(writer),
                                  *callbacks, preemption.Preemption()])
    started = time.time()
    try:
      engine.run(trainer, callbacks, restored.data if restored else data.stream_state(0))
    finally:
      writer.close()
      callbacks.close()
    ckpt.wait()
  finally:
    ckpt.close()
  stopped_at = [int(s) or None for s in jax.device_get(trainer.state.stopped_at)]
  run = _finish(one, config, workdir, specs, trainer.state.states, stats, stopped_at, time.time() - started)
  callbacks.on_fit_end(trainer, run)
  return run


def _finish(exp, config, workdir: pathlib.Path, specs: list[dict], states, stats: dict, stopped_at: list,
            wall_s: float) -> history.Run:
  """Each member's final metrics and workdir; the best also as this workdir's checkpoint; summary.json."""
  results, singles = [], []
  for i, spec in enumerate(specs):
    single = _single(_member(states, i), exp.program.optimizer)
    final = evaluation.final_metrics(exp, single, stats)
    results.append({**spec, 'stopped_at': stopped_at[i], 'final': final})
    singles.append(single)
    own = member_config(config, spec)
    _save_run(workdir / MEMBERS_DIR / f'm{i}', own,
              _single(single, optim.build(own.optim, exp.total_steps)), stats, final)
  sign = 1 if config.checkpoint.mode == 'max' else -1
  scores = [sign * r['final'][config.checkpoint.monitor] for r in results]
  best = int(np.nanargmax(scores))
  log.info('Best member: %d %s', best, json.dumps(results[best]))
  _save_run(workdir, member_config(config, specs[best]), singles[best], stats, results[best]['final'],
            keep_config=config)
  summary = {'steps': int(jax.device_get(states.step).max()), 'wall_s': wall_s, 'best_member': best,
             'members': results, 'final': results[best]['final']}
  (workdir / history.SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + '\n')
  return history.Run(workdir=workdir, history=history.read_metrics(workdir), state=singles[best],
                     summary=summary, model=exp.program.model)


def _single(member, optimizer: optim.Optimizer):
  """A member as a plain run's state: its weights, BatchNorm statistics, step and RNG, with a fresh state
  of `optimizer` (the held learning rate and weight decay have no place in a single run's optimizer)."""
  return member.replace(opt_state=optimizer.tx.init(member.params))


def _save_run(workdir: pathlib.Path, config, state, stats: dict, final: dict, keep_config=None) -> None:
  """A normal run's files for `state`: checkpoint, normalization.json, config.json (and summary.json for a
  member); `keep_config` is written instead of `config` (the population's own workdir)."""
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / data.STATS_FILE).write_text(json.dumps(stats, indent=2))
  (workdir / build.CONFIG_FILE).write_text(json.dumps((keep_config or config).to_dict(), indent=2) + '\n')
  if keep_config is None:
    (workdir / history.SUMMARY_FILE).write_text(json.dumps({'steps': int(state.step), 'final': final}) + '\n')
  ckpt = checkpoint.Checkpointer(workdir / checkpoint.CHECKPOINT_DIR, config.checkpoint)
  try:
    step = int(state.step)
    ckpt.save(step, state, data.stream_state(step), {'config': config.to_dict(), 'normalization': stats},
              final)
  finally:
    ckpt.close()

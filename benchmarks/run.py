"""Benchmarks jaxtrain: the default job end to end; its training loop against a hand-written one.

  python benchmarks/run.py            # Full run, a few minutes on 2 CPU cores.
  python benchmarks/run.py --quick    # Smoke check: short runs, one round.

Prints one JSON object on stdout, progress on stderr; benchmarks/README.md explains each figure.

Two questions are measured separately because they have different answers to "where does time go":

* The default job (`default_job_*`) runs in its own process, exactly as a user types it, so
  interpreter start-up, imports, data preparation, compilation, evaluations and checkpoints count;
  so do the start-up runs with an empty and a filled compilation cache (`startup_*`, startup.py).
* The loop (`loop_*` vs `handwritten_*`) runs in this one process, alternating the contenders round
  by round, because the machine is shared and noisy: alternation spreads a slow minute over all
  contenders instead of penalizing whichever ran during it. Medians over rounds are reported. The
  input-wait replica (`input_wait_*`, input_wait.py) and PyTorch (`torch_*`, torch_compare.py) are
  contenders too.

The hand-written loop is the strictest baseline: pre-placed device batches, a minimal jitted step
with the state donated, nothing else in the loop. The two `jaxtrain_step_*` figures sit between it
and `fit` to say where a gap comes from: the step program itself, or the input pipeline feeding it.
"""

import argparse
import contextlib
import datetime
import functools
import importlib.util
import json
import logging
import os
import pathlib
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Runs from a checkout without installing jaxtrain; the subprocesses below get the same path.
sys.path.insert(0, str(ROOT))

import checkpoint_save  # noqa: E402  (this folder: checkpoint_save.py, input_wait.py, startup.py, ...)
import input_wait  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import peers  # noqa: E402
import startup  # noqa: E402

import jaxtrain  # noqa: E402
from jaxtrain import build, data, models  # noqa: E402

CONFIG = ROOT / 'configs' / 'digits_cnn.py'
TARGET_ACCURACY = 0.97
WARMUP_STEPS = 50  # Hand-timed loops run these after compilation and before the clock starts.

log = logging.getLogger('benchmarks')


def progress(message: str, *args) -> None:
  log.info(message, *args)


# --------------------------------------------------------------------------------------------------
# The default job, in its own process.


def default_job(tmp: pathlib.Path, quick: bool) -> dict:
  """The documented default command in a fresh workdir and a fresh TFDS folder.

  The data and compilation cache folders are fresh so the figure is what a first run costs (the digits
  data set is prepared from scikit-learn's copy in a few seconds); the workdir is fresh so nothing is resumed.
  """
  workdir, data_dir = tmp / 'default_job', tmp / 'default_job_tfds'
  command = [sys.executable, '-m', 'jaxtrain.main', '--config', str(CONFIG.relative_to(ROOT)),
             '--workdir', str(workdir), f'--config.data.data_dir={data_dir}',
             f'--config.compile_cache.dir={tmp / "default_job_compile_cache"}',
             '--config.train.progress_bar=False']
  if quick:
    command.append('--config.train.num_epochs=3')  # A smoke check; does not reach the target.
  env = {**os.environ, 'PYTHONPATH': os.pathsep.join(filter(None, [str(ROOT),
                                                                  os.environ.get('PYTHONPATH')]))}
  progress('default job: %s', ' '.join(command))
  wall, result = peers.timed(command, env)
  summary = json.loads((workdir / 'summary.json').read_text())
  first_step = re.search(r'First step \(compilation included\) took ([\d.]+)s', result.stderr)
  accuracy = summary['final']['test/accuracy']
  return {
      'default_job_wall_s': wall,
      'default_job_test_accuracy': accuracy,
      'default_job_reached_target': accuracy >= TARGET_ACCURACY,
      'default_job_train_wall_s': summary['wall_s'],
      'default_job_first_step_s': float(first_step.group(1)) if first_step else None,
      'default_job_steps': summary['steps'],
  }


# --------------------------------------------------------------------------------------------------
# The loop, in this process.


class _FirstStep(logging.Handler):
  """Catches fit's 'First step (compilation included) took %.1fs' record, to report compile time."""

  def __init__(self):
    super().__init__()
    self.seconds = None

  def emit(self, record):
    if record.getMessage().startswith('First step'):
      self.seconds = float(record.args[0])


def steady_steps_per_sec(history: list[dict]) -> float:
  """Steps over seconds of every log interval but the first, from fit's own `train/steps_per_sec`.

  The first interval is left out although fit restarts its clock after the first step: it still
  holds the input pipeline's start and the first executions. Intervals are combined as total steps
  over total time (not a mean of rates), and each ends with fit's metrics fetch, which is counted.
  """
  records = [r for r in history if 'train/steps_per_sec' in r]
  steps_done = [b['step'] - a['step'] for a, b in zip(records, records[1:], strict=False)]
  seconds = [n / r['train/steps_per_sec'] for n, r in zip(steps_done, records[1:], strict=True)]
  return sum(steps_done) / sum(seconds)


class NoOpCallback(jaxtrain.Callback):
  """Defines every hook and does nothing: what a user's callback costs the loop by being there."""

  on_fit_start = on_log = on_eval = on_checkpoint = on_fit_end = lambda self, *args: None


class Bench:
  """What the in-process contenders share: config, data, model, and one epoch of device batches."""

  def __init__(self, tmp: pathlib.Path, num_steps: int, log_every: int):
    self.tmp = tmp
    self.num_steps = num_steps
    # Eval and checkpoint only at the end, so every log interval after the first is pure training.
    # The compilation cache folder is fresh, so first steps compile as in a first run (and the user's
    # cache folder is left alone).
    self.config = jaxtrain.load_config(CONFIG, {
        'data.data_dir': str(tmp / 'tfds'), 'compile_cache.dir': str(tmp / 'compile_cache'),
        'train.num_steps': num_steps, 'train.log_every_steps': log_every, 'train.eval_every_steps': num_steps,
        'checkpoint.every_steps': num_steps, 'train.progress_bar': False})
    config = self.config
    self.splits = data.load(config)
    self.stats = data.compute_stats(self.splits.train, config.data.stats_max_examples,
                                    tuple(config.data.normalize))
    self.batch_size = config.data.batch_size
    self.steps_per_epoch = len(self.splits.train['label']) // self.batch_size
    self.train_data = data.train_batches(self.splits.train, self.stats, self.batch_size,
                                         config.seed)
    # The same examples, order and normalization as fit's first epoch, placed on the device once.
    self.device_batches = [jax.device_put(self.train_data[i]) for i in range(self.steps_per_epoch)]
    self.model = models.build(config.model, self.splits.num_classes)
    self.first_step = _FirstStep()
    logging.getLogger('jaxtrain').addHandler(self.first_step)
    self._fits = 0
    self._handwritten = None
    self._jaxtrain_step = None

  # fit: the whole loop as users run it.

  def fit(self, callbacks=(), name: str = 'loop') -> dict:
    self._fits += 1
    started = time.perf_counter()
    run = jaxtrain.fit(self.config, self.tmp / f'fit_{self._fits}', callbacks=callbacks)
    return {f'{name}_steps_per_sec': steady_steps_per_sec(run.history),
            f'{name}_first_step_s': self.first_step.seconds,
            f'{name}_fit_wall_s': time.perf_counter() - started}

  # The hand-written baseline.

  def _make_handwritten(self):
    """A minimal Flax + optax training step, written the way the JAX/Flax examples write one."""
    model, tx = self.model, optax.adam(self.config.optim.lr)
    image_shape = self.splits.train['image'].shape[1:]

    def init(seed):
      variables = model.init(jax.random.PRNGKey(seed), jnp.zeros((1, *image_shape)), train=False)
      params = variables['params']
      return (params, variables['batch_stats'], tx.init(params), jnp.zeros((), jnp.int32))

    @functools.partial(jax.jit, donate_argnums=0)
    def train_step(state, batch):
      params, batch_stats, opt_state, step = state
      rng = jax.random.fold_in(jax.random.PRNGKey(1), step)

      def loss_fn(params):
        logits, updates = model.apply(
            {'params': params, 'batch_stats': batch_stats}, batch['image'], train=True,
            rngs={'dropout': rng}, mutable=['batch_stats'])
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch['label']).mean()
        return loss, updates['batch_stats']

      (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
      updates, opt_state = tx.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), batch_stats, opt_state, step + 1), loss

    return jax.jit(init, static_argnums=0), train_step

  def handwritten(self) -> dict:
    if self._handwritten is None:
      self._handwritten = self._make_handwritten()
    init, train_step = self._handwritten
    return self._time_loop(train_step, init(self.config.seed), self.device_batches, 'handwritten')

  # jaxtrain's own jitted step outside fit: isolates the step program from the loop around it.

  def jaxtrain_program(self):
    """(strategy, new_state(), chunk train step): fit's own compiled program, built by the function fit
    builds it with (so it cannot drift from fit), once."""
    if self._jaxtrain_step is None:
      exp = build.prepare(self.config, None)
      self._jaxtrain_step = (exp.strategy, functools.partial(exp.program.create_state, self.config.seed),
                             exp.program.train_step)
    return self._jaxtrain_step

  def jaxtrain_step(self, with_pipeline: bool) -> dict:
    """jaxtrain's step over pre-placed batches, or fed like fit feeds it (chunks of batches placed by
    the prefetch thread, each step slicing its batch inside the jit)."""
    strategy, new_state, chunk_train_step = self.jaxtrain_program()
    step_on_item = lambda state, item: chunk_train_step(state, *item)  # noqa: E731
    if not with_pipeline:
      # One chunk holding the whole epoch, placed once: the step program with no transfer at all.
      host = jax.device_get(self.device_batches)
      epoch = strategy.place_chunk({k: np.stack([b[k] for b in host]) for k in host[0]})
      items = [(epoch, np.int32(k)) for k in range(len(host))]
      return self._time_loop(step_on_item, new_state(), items, 'jaxtrain_step')
    per_chunk = data.chunk_steps(self.train_data[0])
    chunks = data.prefetch(data.chunks(data.iterate(self.train_data), per_chunk),
                           strategy.place_chunk, self.config.data.prefetch)
    items = ((chunk, np.int32(k)) for chunk in chunks for k in range(per_chunk))
    try:
      return self._time_loop(step_on_item, new_state(), items, 'jaxtrain_step_with_pipeline')
    finally:
      chunks.close()  # Stops the prefetch thread.

  def _time_loop(self, train_step, state, batches, name: str) -> dict:
    """Compiles, warms up, then times `num_steps` steps with one sync at the end, none per step."""
    if isinstance(batches, list):
      cycle = len(batches)
      next_batch = lambda i: batches[i % cycle]  # noqa: E731
    else:
      next_batch = lambda i: next(batches)  # noqa: E731
    started = time.perf_counter()
    state, metrics = train_step(state, next_batch(0))
    jax.block_until_ready(metrics)
    first = time.perf_counter() - started
    for i in range(1, 1 + WARMUP_STEPS):
      state, metrics = train_step(state, next_batch(i))
    jax.block_until_ready(metrics)
    started, cpu_started = time.perf_counter(), time.process_time()
    for i in range(1 + WARMUP_STEPS, 1 + WARMUP_STEPS + self.num_steps):
      state, metrics = train_step(state, next_batch(i))
    jax.block_until_ready((state, metrics))
    # CPU time of all this process's threads (XLA's, Grain's, the prefetch thread): on a shared
    # machine it moves less with other jobs' load than wall time does, and it shows overlapped work.
    cpu = time.process_time() - cpu_started
    return {f'{name}_steps_per_sec': self.num_steps / (time.perf_counter() - started),
            f'{name}_cpu_ms_per_step': 1e3 * cpu / self.num_steps,
            f'{name}_first_step_s': first}

  def pipeline(self, num_batches: int) -> dict:
    """Host time per batch of fit's train input alone (gather from the in-memory split, normalize)."""
    batches = data.iterate(self.train_data)
    next(batches)
    started = time.perf_counter()
    for _ in range(num_batches):
      next(batches)
    return {'train_pipeline_ms_per_batch': 1e3 * (time.perf_counter() - started) / num_batches}


def loop_benchmark(tmp: pathlib.Path, num_steps: int, log_every: int, rounds: int, with_torch: bool) -> dict:
  """The loop contenders, alternated round by round; PyTorch's too `with_torch` (torch_compare.py)."""
  bench = Bench(tmp, num_steps, log_every)
  contenders = {
      'fit': bench.fit,
      'fit_noop_callback': functools.partial(bench.fit, [NoOpCallback()], 'noop_callback'),
      'handwritten': bench.handwritten,
      'jaxtrain_step': functools.partial(bench.jaxtrain_step, with_pipeline=False),
      'jaxtrain_step_with_pipeline': functools.partial(bench.jaxtrain_step, with_pipeline=True),
      'input_wait': functools.partial(input_wait.input_wait, bench),
  }
  if with_torch:
    import torch_compare  # Imports torch, an optional dependency.

    contenders.update(torch_compare.contenders(bench, threads=os.cpu_count()))
  per_round: dict[str, list] = {}
  for r in range(rounds):
    for name, contender in contenders.items():
      figures = contender()
      progress('round %d/%d %s: %s', r + 1, rounds, name,
               ', '.join(f'{k}={v:.4g}' for k, v in figures.items() if v is not None))
      for key, value in figures.items():
        per_round.setdefault(key, []).append(value)
  per_round.update(bench.pipeline(num_batches=min(num_steps, 500)))
  progress('train pipeline alone: %.3g ms per batch', per_round['train_pipeline_ms_per_batch'])

  # Compilation happens in every fit (it jits afresh) but only in the first round of the hand-timed
  # loops (their jitted functions are kept), and the step with the pipeline reuses jaxtrain_step's.
  del per_round['jaxtrain_step_with_pipeline_first_step_s']
  first_steps = {k: per_round[k][0]
                 for k in ('handwritten_first_step_s', 'jaxtrain_step_first_step_s')}
  medians = {k: statistics.median(v) for k, v in per_round.items()
             if isinstance(v, list) and k not in first_steps}
  figures = {**medians, **first_steps,
             'train_pipeline_ms_per_batch': per_round.pop('train_pipeline_ms_per_batch')}
  baseline = figures['handwritten_steps_per_sec']
  figures['loop_vs_handwritten'] = figures['loop_steps_per_sec'] / baseline
  figures['noop_callback_vs_loop'] = figures['noop_callback_steps_per_sec'] / figures['loop_steps_per_sec']
  figures['jaxtrain_step_vs_handwritten'] = figures['jaxtrain_step_steps_per_sec'] / baseline
  # The input pipeline's cost measured as lost throughput (noisy: +-5% per round on a shared machine).
  figures['pipeline_throughput_loss'] = 1 - (figures['jaxtrain_step_with_pipeline_steps_per_sec']
                                             / figures['jaxtrain_step_steps_per_sec'])
  if with_torch:
    figures.update(torch_compare.ratios(figures))
  figures['per_round'] = per_round
  return figures


def import_time() -> dict:
  """Seconds a fresh interpreter takes to import the command line (JAX, TFDS, Grain, orbax, ...)."""
  started = time.perf_counter()
  subprocess.run([sys.executable, '-c', 'import jaxtrain.main'], cwd=ROOT, check=True,
                 capture_output=True)
  return {'import_s': time.perf_counter() - started}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--quick', action='store_true', help='short runs, one round: a smoke check')
  parser.add_argument('--rounds', type=int, help='alternations of the loop contenders (default 3)')
  parser.add_argument('--steps', type=int, help='timed steps per contender (default 1500)')
  parser.add_argument('--skip-default-job', action='store_true',
                      help='only the loop benchmark (no default job, import and start-up figures)')
  parser.add_argument('--skip-torch', action='store_true',
                      help='no PyTorch comparison (skipped anyway when torch is not installed)')
  parser.add_argument('--output', help='also write the JSON object to this file')
  args = parser.parse_args()
  rounds = args.rounds or (1 if args.quick else 3)
  num_steps = args.steps or (300 if args.quick else 1500)
  log_every = 50 if args.quick else 100
  if num_steps % log_every or num_steps < 2 * log_every:
    parser.error(f'--steps must be a multiple of {log_every} and at least {2 * log_every}')

  logging.basicConfig(stream=sys.stderr, level=logging.WARNING,
                      format='%(asctime)s %(name)s: %(message)s', datefmt='%H:%M:%S')
  logging.getLogger('benchmarks').setLevel(logging.INFO)
  logging.getLogger('jaxtrain').setLevel(logging.INFO)
  with_torch = not args.skip_torch and importlib.util.find_spec('torch') is not None
  if not args.skip_torch and not with_torch:
    progress('torch is not installed: no PyTorch comparison (pip install -e ".[bench]")')
  started = time.perf_counter()
  figures = {}
  # TFDS prints its data preparation on stdout; stdout is kept for the one JSON object.
  with tempfile.TemporaryDirectory(prefix='jaxtrain-bench-') as tmp, \
      contextlib.redirect_stdout(sys.stderr):
    tmp = pathlib.Path(tmp)
    if not args.skip_default_job:
      figures.update(default_job(tmp, args.quick))
      figures.update(import_time())
      figures.update(startup.startup(tmp, data_dir=tmp / 'default_job_tfds'))
    figures.update(checkpoint_save.checkpoint_benchmark(tmp, args.quick))
    figures.update(loop_benchmark(tmp, num_steps, log_every, rounds, with_torch))
  per_round = figures.pop('per_round')  # Printed last: the figures first.
  figures.update({
      'quick': args.quick, 'rounds': rounds, 'timed_steps': num_steps, 'log_every_steps': log_every,
      'batch_size': jaxtrain.load_config(CONFIG).data.batch_size,
      'benchmark_wall_s': time.perf_counter() - started,
      'per_round': per_round,
      'machine': {'cpus': os.cpu_count(), 'devices': [str(d) for d in jax.devices()],
                  'python': platform.python_version(), 'jax': jax.__version__},
      'date': datetime.date.today().isoformat(),
  })
  text = json.dumps(figures, indent=2)
  print(text)
  if args.output:
    pathlib.Path(args.output).write_text(text + '\n')


if __name__ == '__main__':
  main()

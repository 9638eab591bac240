"""Shared fixtures: a per-worker TFDS folder and small digits configs that train in seconds."""

import os
import pathlib

# The tests compile hundreds of programs and run each for a few dozen steps, so XLA's optimizations cost far
# more than they save: on a 2-core CPU the default CNN's train step compiles in 3.9 s instead of 7.7 s and
# state creation in 1.3 s instead of 3.6 s, while a step runs 3.4x slower (benchmarks/suite_compile.py;
# benchmarks/README.md, "The test suite"). Set before JAX is imported, so the subprocesses the tests start
# inherit it; the benchmarks and every user run keep the optimizations. `JAX_DISABLE_MOST_OPTIMIZATIONS=0
# pytest` runs the suite optimized.
os.environ.setdefault('JAX_DISABLE_MOST_OPTIMIZATIONS', '1')

import jax  # noqa: E402
import pytest  # noqa: E402

import jaxtrain  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = ROOT / 'configs'


@pytest.fixture(scope='session')
def data_dir(tmp_path_factory) -> str:
  """Where the digits builder prepares its array_record files (once per test worker)."""
  return str(tmp_path_factory.mktemp('tfds'))


@pytest.fixture(scope='session', autouse=True)
def compile_cache(tmp_path_factory) -> pathlib.Path:
  """JAX's persistent compilation cache, one folder per test worker, for every test in it. Most tests train
  the same small models for a few steps, so most of their programs were compiled by an earlier test, and
  loading one takes milliseconds where compiling it took up to seconds. Set on JAX itself, which the
  configs' `compile_cache.enabled=False` leaves alone (tests/test_compile_cache.py tests jaxtrain's own
  folder handling in fresh processes). JAX writes entries without a lock, so workers do not share one."""
  path = tmp_path_factory.mktemp('jax_compile_cache')
  jax.config.update('jax_compilation_cache_dir', str(path))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', -1)
  return path


@pytest.fixture
def optimized(monkeypatch):
  """XLA's optimizations on, in this process and the ones the test starts: for the few tests whose runs take
  more steps than their compilation costs (the default job's 1,200, the doctor's probes)."""
  disabled = jax.config.read('jax_disable_most_optimizations')
  monkeypatch.setenv('JAX_DISABLE_MOST_OPTIMIZATIONS', '0')
  jax.config.update('jax_disable_most_optimizations', False)
  yield
  jax.config.update('jax_disable_most_optimizations', disabled)


@pytest.fixture
def make_config(data_dir):
  """`make_config(name='digits_cnn', **{'optim.lr': 1e-3})`: a config with quiet, short defaults."""

  def make(name: str = 'digits_cnn', **overrides):
    # `compile_cache.enabled=False`: jaxtrain leaves JAX's cache as the `compile_cache` fixture set it. The
    # end-of-run report (two more compiled functions and an eval pass per run) is tested where it is the
    # subject.
    base = {'data.data_dir': data_dir, 'train.num_steps': 20, 'train.progress_bar': False,
            'train.log_every_steps': 10, 'train.eval_every_steps': 20, 'compile_cache.enabled': False,
            'diagnostics.report': False}
    return jaxtrain.load_config(CONFIGS / f'{name}.py', {**base, **overrides})

  return make


def real_component_unavailable(component: str, reason: str):
  """Skips a test of a real component (SLURM, PostgreSQL) that this machine cannot start, with the reason;
  under CI=true it fails instead, so CI, which installs them, always exercises them."""
  message = f'{component} cannot be started here: {reason}'
  if os.environ.get('CI', '').lower() == 'true':
    pytest.fail(f'{message} (CI=true: real components must run in CI; .ci/run installs them)')
  pytest.skip(message)

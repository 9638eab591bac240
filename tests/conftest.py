"""Shared fixtures: a per-worker TFDS folder and small digits configs that train in seconds."""

import os
import pathlib

import pytest

import jaxtrain

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = ROOT / 'configs'


@pytest.fixture(scope='session')
def data_dir(tmp_path_factory) -> str:
  """Where the digits builder prepares its array_record files (once per test worker)."""
  return str(tmp_path_factory.mktemp('tfds'))


@pytest.fixture
def make_config(data_dir):
  """`make_config(name='digits_cnn', **{'optim.lr': 1e-3})`: a config with quiet, short defaults."""

  def make(name: str = 'digits_cnn', **overrides):
    # The persistent compile cache stays off in-process: tests that count compilations must see them all
    # (tests/test_compile_cache.py tests the cache in fresh processes). The end-of-run report (two more
    # compiled functions and an eval pass per run) is tested where it is the subject.
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

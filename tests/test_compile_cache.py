"""The persistent compilation cache: a second process loads what the first compiled; disabled, nothing is
written.

JAX opens its cache folder once per process, so the runs that enable it are fresh interpreters (the pytest
worker's own JAX settings stay untouched).
"""

import json
import pathlib
import subprocess
import sys

import jax
from conftest import CONFIGS

import jaxtrain
from jaxtrain import compile_cache

# Tiny fits in a fresh process: one per cache folder given, each with a model of its own; prints the
# compilation-cache events JAX reported, per fit.
_FITS = """
import collections, json, sys
from jax import monitoring
events = collections.Counter()
monitoring.register_event_listener(lambda name, **kwargs: events.update([name.rsplit('/', 1)[-1]]))
import jaxtrain
from jaxtrain import compile_cache
overrides, workdir, *caches = json.loads(sys.argv[2]), sys.argv[3], *sys.argv[4:]
report = []
for i, cache in enumerate(caches):
  overrides.update({'compile_cache.dir': cache, 'model.features': (8 + i,)})
  config = jaxtrain.load_config(sys.argv[1], overrides)
  compile_cache.enable(config)
  jaxtrain.fit(config, f'{workdir}/{i}')
  report.append(dict(events))
  events.clear()
print(json.dumps(report))
"""
# Small MLPs (_FITS sets model.features) and no end-of-run report: what is tested is whether programs are
# cached, not how long they take to compile.
_TINY = {'train.num_steps': 2, 'train.progress_bar': False, 'diagnostics.report': False}


def _fits(tmp_path: pathlib.Path, data_dir: str, *caches: pathlib.Path) -> list[dict]:
  """Runs `_FITS` in a new interpreter; the compilation-cache events of each fit, by name."""
  workdir = tmp_path / f'run_{len(list(tmp_path.glob("run_*")))}'
  result = subprocess.run(
      [sys.executable, '-c', _FITS, str(CONFIGS / 'digits_mlp.py'),
       json.dumps({**_TINY, 'data.data_dir': data_dir}), str(workdir), *map(str, caches)],
      capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(result.stdout.strip().splitlines()[-1])


def _files(folder: pathlib.Path) -> list[str]:
  return sorted(p.name for p in folder.iterdir())


def test_second_process_loads_the_first_ones_programs(tmp_path, make_config, data_dir):
  jaxtrain.data.load(make_config('digits_mlp'))  # Prepares the digits before the subprocesses read them.
  cache, other = tmp_path / 'cache', tmp_path / 'other_cache'
  [events] = _fits(tmp_path, data_dir, cache)
  assert events.get('cache_misses', 0) >= 3 and not events.get('cache_hits')  # State creation, train, eval.
  written = _files(cache)
  assert len(written) == events['cache_misses']

  # The second process loads every program; then another folder, given later in the same process, is used.
  loaded, switched = _fits(tmp_path, data_dir, cache, other)
  assert loaded.get('cache_hits') == len(written) and not loaded.get('cache_misses')
  assert _files(cache) == written
  assert switched.get('cache_misses', 0) >= 3 and len(_files(other)) == switched['cache_misses']


def test_disabled_leaves_jax_settings_alone(make_config):
  """enabled=False neither points JAX at the folder nor changes its thresholds: nothing is written there."""
  names = ('jax_compilation_cache_dir', 'jax_persistent_cache_min_compile_time_secs',
           'jax_persistent_cache_min_entry_size_bytes')
  before = [getattr(jax.config, name) for name in names]
  assert compile_cache.enable(make_config(**{'compile_cache.enabled': False})) is None
  assert [getattr(jax.config, name) for name in names] == before


def test_folder_defaults_to_the_users_cache(monkeypatch, tmp_path, make_config):
  monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path))
  assert compile_cache.folder(make_config()) == tmp_path / 'jaxtrain' / 'jax_compile_cache'
  monkeypatch.delenv('XDG_CACHE_HOME')
  monkeypatch.setenv('HOME', str(tmp_path / 'home'))
  home_cache = tmp_path / 'home' / '.cache' / 'jaxtrain' / 'jax_compile_cache'
  assert compile_cache.folder(make_config()) == home_cache
  monkeypatch.chdir(tmp_path)
  assert compile_cache.folder(make_config(**{'compile_cache.dir': 'here'})) == tmp_path / 'here'

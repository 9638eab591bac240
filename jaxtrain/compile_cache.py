"""JAX's persistent compilation cache, on by default: a second process compiles nothing it compiled before.

On a CPU, the default command spends about 4 s compiling before its first step (benchmarks/README.md:
8.6 s from the command to the first step with an empty cache, 4.3 s with a filled one), and every new
process pays it again: the command line, each test process, a restarted notebook kernel. JAX can keep
compiled executables in a folder, keyed by the program, the JAX version, the devices and XLA's flags, and
load them instead of compiling.

How the installed JAX (0.10.2) behaves, checked on it, and why `enable` does what it does:

* JAX opens its cache folder at the first compilation after a folder is set, then keeps that folder for the
  rest of the process. Compilations before `enable` are simply not cached, so calling it late costs only
  those programs; calling it again with another folder would go unnoticed, so `enable` then resets JAX's
  cache (its in-memory jit caches are untouched: nothing is recompiled for that).
* By default JAX caches only programs that took >= 1 s to compile, and its entry-size threshold of 0 lets
  JAX pick one for the file system. For the default job, state creation (1.4 s) and the train step (2.6 s)
  pass the time threshold, but the eval step (0.16 s) and the small helpers (0.03 s each) would be compiled
  again in every process, and a smaller model's programs all would. Both thresholds are switched off:
  `jax_persistent_cache_min_compile_time_secs=0` and `jax_persistent_cache_min_entry_size_bytes=-1` (JAX's
  value for "no size limit, and no override"). Writing the entries costs nothing measurable.
* The cache has no size limit (JAX evicts only with `jax_compilation_cache_max_size`, which needs the
  `filelock` package); the folder can be deleted at any time and is refilled by the next run.
* `compile_cache.enabled=False` leaves JAX's own settings as they are: JAX caches nothing unless its own
  options (`JAX_COMPILATION_CACHE_DIR`, ...) say so.

Like any compilation cache, the folder is trusted: do not point it at a folder others can write to.
"""

import os
import pathlib

import jax
import ml_collections
from jax.experimental.compilation_cache import compilation_cache


def default_dir() -> pathlib.Path:
  """The per-user cache folder: $XDG_CACHE_HOME/jaxtrain/jax_compile_cache, else ~/.cache/jaxtrain/..."""
  base = os.environ.get('XDG_CACHE_HOME') or pathlib.Path.home() / '.cache'
  return pathlib.Path(base) / 'jaxtrain' / 'jax_compile_cache'


def folder(config: ml_collections.ConfigDict) -> pathlib.Path:
  """The cache folder `config.compile_cache.dir` names ('' = `default_dir()`), as an absolute path."""
  configured = config.compile_cache.dir
  return pathlib.Path(configured).expanduser().absolute() if configured else default_dir()


def enable(config: ml_collections.ConfigDict) -> pathlib.Path | None:
  """Points JAX's persistent compilation cache at the configured folder; returns it (None when disabled).

  Idempotent, and cheap enough to call at the start of every entry point (fit, evaluate, doctor, lr_find):
  it compiles nothing and creates no file (JAX creates the folder at the first compilation).
  """
  if not config.compile_cache.enabled:
    return None
  path = folder(config)
  current = jax.config.jax_compilation_cache_dir
  if current != str(path):
    if current is not None:
      compilation_cache.reset_cache()  # Else JAX would keep writing into the folder it opened first.
    jax.config.update('jax_compilation_cache_dir', str(path))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', -1)
  return path

"""JAX's persistent compilation cache, on by default: a second process compiles nothing it compiled before.

On this project's CPU runs, compilation is most of the time to the first step (about 2.5 s of the default
job's 3 s), and every new process pays it again: the command line, each test process, a restarted notebook
kernel. JAX can keep compiled executables in a folder, keyed by the program, the JAX version, the devices
and XLA's flags, and load them instead of compiling.

How the installed JAX (0.10.2) behaves, checked on it, and why `enable` does what it does:

* JAX opens its cache folder at the first compilation after a folder is set, then keeps that folder for the
  rest of the process. Compilations before `enable` are simply not cached, so calling it late costs only
  those programs; calling it again with another folder would go unnoticed, so `enable` then resets JAX's
  cache (its in-memory jit caches are untouched: nothing is recompiled for that).
* By default JAX caches only programs that took >= 1 s to compile, and its entry-size threshold of 0 lets
  JAX pick one for the file system. A small CPU model's programs (state creation, train step, eval step)
  compile in under a second each, so both thresholds are switched off:
  `jax_persistent_cache_min_compile_time_secs=0` and `jax_persistent_cache_min_entry_size_bytes=-1` (JAX's
  value for "no size limit, and no override").
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

"""Command line: python -m jaxtrain.main --config configs/digits_cnn.py [--workdir DIR] [--mode MODE].

Kept short on purpose: the work is in library functions that tests and notebooks call directly. Any setting
is overridable as --config.optim.lr=3e-4. A bad config, data set or workdir exits 2 with one `error:` line.
"""

import ast
import atexit
import gc
import json
import logging
import pathlib
import re
import sys

import jax
from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from jaxtrain import api, checkpoint, generation, parallel, serving
from jaxtrain import config as config_lib
from jaxtrain.callbacks.nonfinite import NonFiniteError
from jaxtrain.diagnostics import doctor, lr_find
from jaxtrain.experiments import sweep

MODES = ('train', 'eval', 'doctor', 'lr_find', 'sweep', 'generate', 'predict', 'export')

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file with a get_config().')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory (default: runs/<config file stem>).')
_MODE = flags.DEFINE_string('mode', 'train', f'One of: {", ".join(MODES)}.')


def _fail(message: str):
  print(f'error: {message}', file=sys.stderr)
  sys.exit(2)


def _config_path(argv: list[str]) -> str | None:
  for i, arg in enumerate(argv):
    if arg.startswith('--config='):
      return arg.split('=', 1)[1]
    if arg == '--config' and i + 1 < len(argv):
      return argv[i + 1]
  return None


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing with every mistake turned into one `error:` line and exit 2."""
  path = _config_path(argv)
  if path is None:
    _fail('--config is required, e.g. --config configs/digits_cnn.py')
  try:
    config = config_lib.load_config(path)
    for arg in argv:
      if arg.startswith('--config.'):
        config_lib.check_key(config, arg[len('--config.'):].split('=', 1)[0])
    return flags.FLAGS(argv)
  except config_lib.ConfigError as e:
    _fail(str(e))
  except flags.Error as e:
    _fail(_flag_error(str(e)))


_UNPARSED = re.compile(r'flag --config\.([\w.]+)=.*: Error while parsing string: (.*) as (\w+)\. ')


def _flag_error(message: str) -> str:
  """absl's message, or for a value that is not a literal of the key's type (a tuple missing its closing
  parenthesis) what is malformed and how to write it, instead of advice on shell quoting."""
  match = _UNPARSED.search(message)
  if not match:
    return message.replace('flag --config.', 'config key ')
  key, value, kind = match.groups()
  try:
    ast.literal_eval(value)
    problem = f'it is not a {kind}'
  except (SyntaxError, ValueError) as e:
    problem = getattr(e, 'msg', None) or str(e)
  example = {'tuple': "'(64, 128)'", 'list': "'[64, 128]'"}.get(kind, '...')
  return (f'config key {key}: {value!r} is not a valid {kind} ({problem}); write it as '
          f'--config.{key}={example}')


def main(argv: list[str]) -> None:
  if _MODE.value == 'train':
    checkpoint.keep_startup_sigterm()
  # Orbax logs the traceback of each of its save threads that fails; the failure reaches this thread too,
  # where it becomes one error line (checkpoint.SaveFailed), so its own copies are left out.
  absl_logging.get_absl_logger().addFilter(lambda record: '/orbax/' not in record.pathname)
  absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax and TFDS log every file they touch.
  logging.getLogger('jaxtrain').setLevel(logging.INFO)
  if len(argv) > 1:
    _fail(f'unexpected arguments {argv[1:]}; settings are passed as --config.KEY=VALUE')
  if _MODE.value not in MODES:
    _fail(f'--mode={_MODE.value!r} is not known; choose one of: {", ".join(MODES)}')
  workdir = _WORKDIR.value or str(pathlib.Path('runs') / pathlib.Path(_config_path(sys.argv)).stem)
  try:
    parallel.initialize_distributed()  # Several processes (SLURM, launch/*.sh) join before any device use.
    if _MODE.value == 'train':
      run = api.fit(_CONFIG.value, workdir)
      if jax.process_index() == 0:  # Every process has the same result; one prints it.
        print(json.dumps(run.summary['final']))
        reason = run.summary.get('stop_reason')
        print(f'Finished at step {run.summary["steps"]}{f" ({reason})" if reason else ""}; the run is in '
              f'{workdir} (raise train.num_steps or train.num_epochs to train it further).')
    elif _MODE.value == 'doctor':
      report = doctor.doctor(_CONFIG.value, workdir)
      print(doctor.format_report(report))
      if report['verdict'] == 'fail':
        print(f'error: the doctor found problems; details in {workdir}/doctor.json', file=sys.stderr)
        sys.exit(1)
    elif _MODE.value == 'lr_find':
      print(json.dumps({'suggested_lr': lr_find.lr_find(_CONFIG.value, workdir)['suggested_lr']}))
    elif _MODE.value == 'sweep':
      print(json.dumps(sweep.sweep(_CONFIG.value, workdir)['best']))
    elif _MODE.value == 'generate':
      print(_CONFIG.value.generate.prompt + generation.generate(_CONFIG.value, workdir))
    elif _MODE.value == 'predict':
      if not _CONFIG.value.predict.input:
        raise config_lib.ConfigError('--mode predict needs the inputs: --config.predict.input=FILE.npy (or '
                                     '.npz with one array per model.inputs key)')
      print(serving.write_predictions(_CONFIG.value, workdir, _CONFIG.value.predict.input))
    elif _MODE.value == 'export':
      print(serving.export(_CONFIG.value, workdir))
    else:
      print(json.dumps(api.evaluate(_CONFIG.value, workdir)))
  except config_lib.ConfigError as e:
    _fail(str(e))
  except NonFiniteError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)
  except checkpoint.SaveFailed as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)
  except OSError as e:  # A workdir or data folder that cannot be read or written (permissions, read-only).
    if e.filename is None:
      raise
    _fail(f'{e.strerror}: {e.filename}; check its permissions and free space, or choose another --workdir '
          'or data.data_dir')
  except checkpoint.Preempted as e:
    print(f'{e}.', file=sys.stderr)
    sys.exit(128 + e.signum)  # The shell's code for "ended by this signal": `train && next` stops here.


def run() -> None:
  """The `jaxtrain` console script."""
  # The modules imported by now (JAX, Flax, orbax, TFDS: about 170,000 objects) live until the process
  # exits, and Python's cyclic garbage collector would traverse them at every full collection and once more
  # while the interpreter shuts down: 0.35 s and 0.3 s of a 5.5 s command (benchmarks/peers.py's recipe on
  # 2 cores). Frozen (gc.freeze), they are left out of both; an exit handler freezes what the run created
  # too (the run's files are closed by then; a cycle's __del__ is not run at exit). Everything the run
  # allocates is still collected while it runs.
  gc.freeze()
  atexit.register(gc.freeze)  # Before the run's exit handlers (figure process, orbax), so after them.
  app.run(main, flags_parser=parse_flags)


if __name__ == '__main__':
  run()

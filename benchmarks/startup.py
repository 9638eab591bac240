"""Time from typing the command to the first trained step, with an empty and with a filled compilation cache.

Called by benchmarks/run.py (figures `startup_*`); benchmarks/README.md explains them. The command is the
default job's, shortened (the first step is what is measured), in its own process, with a compilation cache
folder of its own: the first run finds it empty (cold), the second finds what the first wrote (warm).
"""

import os
import pathlib
import re
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
FIRST_STEP = re.compile(r'First step \(compilation included\) took ([\d.]+)s')
NUM_STEPS = 20  # Enough for one log interval; the process then evaluates, tests and checkpoints once.


def run_command(workdir: pathlib.Path, data_dir: pathlib.Path, cache: pathlib.Path) -> dict:
  """One run of the CLI: seconds from start to its 'First step' log line (read as it is written, so it is
  the moment the step finished), the step's own figure from that line, and the wall time to exit."""
  command = [sys.executable, '-m', 'jaxtrain.main', '--config', 'configs/digits_cnn.py',
             '--workdir', str(workdir), f'--config.data.data_dir={data_dir}',
             '--config.train.progress_bar=False', f'--config.train.num_steps={NUM_STEPS}',
             f'--config.compile_cache.dir={cache}']
  env = {**os.environ, 'PYTHONPATH': os.pathsep.join(filter(None, [str(ROOT), os.environ.get('PYTHONPATH')]))}
  started = time.perf_counter()
  process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True)
  to_first_step, first_step, tail = None, None, []
  for line in process.stderr:  # Python's stderr is line-buffered: each line arrives as it is logged.
    match = FIRST_STEP.search(line)
    if match and to_first_step is None:
      to_first_step, first_step = time.perf_counter() - started, float(match.group(1))
    tail = (tail + [line])[-40:]
  if process.wait():
    sys.stderr.write(''.join(tail))
    raise RuntimeError(f'{" ".join(command)} failed with exit status {process.returncode}')
  return {'to_first_step_s': to_first_step, 'first_step_s': first_step,
          'wall_s': time.perf_counter() - started, 'cache_files': len(list(cache.glob('*')))}


def startup(tmp: pathlib.Path, data_dir: pathlib.Path) -> dict:
  """Cold then warm runs in fresh workdirs, on a data folder that is already prepared (so only start-up,
  compilation and the first step differ between the two)."""
  cache = tmp / 'startup_compile_cache'
  figures = {}
  for name in ('cold', 'warm'):
    result = run_command(tmp / f'startup_{name}', data_dir, cache)
    figures.update({f'startup_{name}_{key}': value for key, value in result.items()})
  return figures

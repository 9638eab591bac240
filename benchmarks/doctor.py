"""The doctor's wall time on the default job, the whole command, against its 15 s budget on 2 CPU cores.

    python benchmarks/doctor.py [--rounds 3]

Each round runs `python -m jaxtrain.main --config configs/digits_cnn.py --mode doctor` in its own process
with every check group (the default), then with `doctor.checks=('init', 'data')` (the fast groups alone).
The first round fills a compilation cache of its own (and prepares the digits); later rounds find it warm,
as a user's second doctor run does. Prints one JSON object: seconds per round and configuration.
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIGURATIONS = {'all_checks': [], 'init_and_data': ["--config.doctor.checks=('init','data')"]}


def doctor_seconds(folder: pathlib.Path, name: str, extra: list[str], round_index: int) -> float:
  command = [sys.executable, '-m', 'jaxtrain.main', '--config', 'configs/digits_cnn.py', '--mode=doctor',
             f'--workdir={folder / f"{name}_{round_index}"}', f'--config.data.data_dir={folder / "data"}',
             f'--config.compile_cache.dir={folder / "cache"}', *extra]
  started = time.perf_counter()
  result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=os.environ)
  if result.returncode:
    raise RuntimeError(f'{" ".join(command)} exited {result.returncode}:\n{result.stdout}{result.stderr}')
  return time.perf_counter() - started


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--rounds', type=int, default=3)
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as folder:
    seconds = {name: [] for name in CONFIGURATIONS}
    for round_index in range(args.rounds):  # Alternated, so both see the same machine load.
      for name, extra in CONFIGURATIONS.items():
        seconds[name].append(round(doctor_seconds(pathlib.Path(folder), name, extra, round_index), 2))
        print(f'round {round_index}: {name} {seconds[name][-1]} s', file=sys.stderr)
  warm = {name: min(values[1:] or values) for name, values in seconds.items()}
  print(json.dumps({'seconds': seconds, 'warm_best_s': warm, 'budget_s': 15.0,
                    'within_budget': warm['all_checks'] <= 15.0}, indent=2))


if __name__ == '__main__':
  main()

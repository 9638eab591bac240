"""What a newcomer meets on the way through the README: messages that say what happened and what to do,
files every run leaves, and nothing else printed before an error."""

import logging
import math
import pathlib
import subprocess
import sys

import pytest
from conftest import CONFIGS, ROOT

from jaxtrain import build
from jaxtrain.callbacks import writers


def cli(*args, **kwargs):
  return subprocess.run([sys.executable, '-m', 'jaxtrain.main', '--config', str(CONFIGS / 'digits_mlp.py'),
                         '--config.train.progress_bar=False', *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=300, **kwargs)


def test_a_finished_run_says_so_writes_curves_and_warns_about_a_changed_config(data_dir, tmp_path):
  common = (f'--workdir={tmp_path}', f'--config.data.data_dir={data_dir}', '--config.train.num_steps=20')
  trained = cli(*common)
  assert trained.returncode == 0, trained.stderr[-2000:]
  assert trained.stdout.strip().splitlines()[-1].startswith(f'Finished at step 20; the run is in {tmp_path}')
  assert (tmp_path / 'plots' / 'curves.png').stat().st_size > 0  # From the CLI, not only Run.plot().
  evaluated = cli(*common, '--mode=eval')
  assert evaluated.returncode == 0
  assert 'checkpoint_manager' not in evaluated.stderr and 'WARNING:absl' not in evaluated.stderr, (
      evaluated.stderr)  # Orbax's notices are not shown.
  again = cli(*common, '--config.optim.lr=0.01')
  assert again.returncode == 0
  warning = next(line for line in again.stderr.splitlines() if 'other settings' in line)
  assert 'optim.lr=0.001 -> 0.01' in warning and 'new --workdir' in warning
  assert again.stdout.splitlines()[-2] == trained.stdout.splitlines()[-2]  # The finished run's results.


def test_fit_without_a_workdir_removes_its_temporary_folder_at_exit(data_dir):
  script = ('import jaxtrain; config = jaxtrain.load_config("configs/digits_mlp.py", {"train.num_steps": 2, '
            f'"data.data_dir": {data_dir!r}, "train.progress_bar": False}}); '
            'print(jaxtrain.fit(config).workdir)')
  result = subprocess.run([sys.executable, '-c', script], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  workdir = result.stdout.strip().splitlines()[-1]
  assert 'removed when Python exits' in result.stderr and workdir in result.stderr
  assert not pathlib.Path(workdir).exists()


def _tensorboard_points(folder: pathlib.Path) -> list[tuple[int, str, float]]:
  """(step, tag, value) of every scalar in the event files (TFRecord framing: length, crc, data, crc)."""
  from tensorboardX.proto import event_pb2

  points = []
  for path in sorted(folder.iterdir()):
    data, offset = path.read_bytes(), 0
    while offset + 12 <= len(data):
      length = int.from_bytes(data[offset:offset + 8], 'little')
      event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
      points += [(event.step, value.tag, value.simple_value) for value in event.summary.value]
      offset += 12 + length + 4
  return points


def test_tensorboard_gets_again_on_resume_what_a_killed_run_logged_after_its_checkpoint(tmp_path, capsys):
  logged = [{'step': step, 'epoch': 0.0, 'train/loss': 1.0 / step} for step in (10, 20, 30)]
  writer = writers.MetricWriter.default(tmp_path, 40, 10, False, logged)  # Resumed from step 10.
  writer.write({'step': 40, 'epoch': 0.0, 'train/loss': 0.025, 'train/accuracy': math.nan})
  writer.close()
  points = _tensorboard_points(tmp_path / 'tb')
  assert points == [(20, 'train/loss', pytest.approx(0.05)), (30, 'train/loss', pytest.approx(1 / 30)),
                    (40, 'train/loss', pytest.approx(0.025))]  # The NaN accuracy stays in metrics.jsonl ...
  assert 'NaN or Inf' not in capsys.readouterr().out  # ... and tensorboardX does not complain.


def test_newcomer_traps_are_said_in_the_log(make_config, caplog):
  with caplog.at_level(logging.WARNING, logger='jaxtrain'):
    build.prepare(make_config(**{'optim.name': 'adadelta', 'optim.lr': 1e-3}), None)
    build.prepare(make_config(**{'data.augment': 'crop_flip'}), None)  # Padding 4 on 8x8 digits.
    build.prepare(make_config(), None)
  messages = [record.message for record in caplog.records]
  assert any("optim.name='adadelta' with optim.lr=0.001 barely trains" in m for m in messages)
  assert any('data.crop_padding=4 is 50% of the 8-pixel image side' in m for m in messages)
  assert len(messages) == 2  # The default config is not flagged.


def test_a_malformed_tuple_override_says_what_is_malformed(tmp_path):
  result = cli(f'--workdir={tmp_path / "run"}', '--config.model.features=(64,')
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1] == (
      "error: config key model.features: '(64,' is not a valid tuple ('(' was never closed); write it as "
      "--config.model.features='(64, 128)'")
  assert not (tmp_path / 'run').exists()

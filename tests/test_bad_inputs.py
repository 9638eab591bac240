"""The bad-input campaign (README, Reliability): each case gets one clear line, a non-zero exit, and
nothing in the workdir is lost. One test per case; the CLI where the line and the exit code are the point."""

import contextlib
import hashlib
import json
import logging
import os
import pathlib
import re
import subprocess
import sys
import tempfile

import numpy as np
import pytest
from conftest import CONFIGS, ROOT

import jaxtrain
from jaxtrain import checkpoint, history
from jaxtrain.data import records


def cli(*args, cwd=ROOT) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, '-m', 'jaxtrain.main', *args], cwd=cwd, capture_output=True,
                        text=True, timeout=300)


def one_error(result: subprocess.CompletedProcess, code: int = 2, foreign_tracebacks: bool = False) -> str:
  """The single `error:` line of a failed command (asserting there is one, no traceback, and `code`).
  `foreign_tracebacks`: allow tracebacks that never pass through jaxtrain (TensorStore's C++ write
  callbacks print theirs when orbax has closed its event loop after a failed save)."""
  errors = [line for line in result.stderr.splitlines() if line.startswith('error:')]
  assert result.returncode == code and len(errors) == 1, result.stderr[-3000:]
  frames = [line for line in result.stderr.splitlines() if line.startswith('  File ')]
  if foreign_tracebacks:
    assert not any('/jaxtrain/' in frame for frame in frames), result.stderr[-3000:]
  else:
    assert 'Traceback' not in result.stderr, result.stderr[-3000:]
  return errors[0]


def digests(folder: pathlib.Path) -> dict:
  """Every file under `folder` by its content, to show a failed command changed nothing."""
  return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(folder.rglob('*')) if p.is_file()}


@contextlib.contextmanager
def small_tmpfs(size: str, read_only: bool = False):
  """A folder on its own small (or read-only) file system: a full or unwritable disk, for real."""
  folder = pathlib.Path(tempfile.mkdtemp(prefix='jaxtrain-fs-'))
  options = f'size={size}' + (',ro' if read_only else '')
  mounted = subprocess.run(['mount', '-t', 'tmpfs', '-o', options, 'tmpfs', str(folder)], capture_output=True)
  if mounted.returncode != 0:
    folder.rmdir()
    pytest.skip(f'cannot mount a tmpfs here (needs root): {mounted.stderr.decode().strip()}')
  try:
    yield folder
  finally:
    subprocess.run(['umount', '-l', str(folder)], check=False)
    folder.rmdir()


def test_truncated_record_file(tmp_path):
  rng = np.random.default_rng(0)
  examples = [{'image': rng.integers(0, 255, (8, 8, 1), np.uint8), 'label': np.int32(i % 4)}
              for i in range(64)]
  records.write(tmp_path / 'train.array_record', examples)
  records.write(tmp_path / 'validation.array_record', examples[:16])
  whole = (tmp_path / 'train.array_record').read_bytes()
  (tmp_path / 'train.array_record').write_bytes(whole[:len(whole) // 2])
  result = cli('--config', str(CONFIGS / 'digits_mlp.py'), f'--workdir={tmp_path / "run"}',
               f'--config.data.name=array_record:{tmp_path}', '--config.train.num_steps=5')
  error = one_error(result)
  assert 'train.array_record' in error and 'truncated' in error
  assert not (tmp_path / 'run').exists()


@pytest.mark.parametrize('source,message', [
    ('import no_such_module\n', "raised ModuleNotFoundError at line 1: No module named 'no_such_module'"),
    ('def get_config():\n  return 1 / 0\n', 'raised ZeroDivisionError at line 2: division by zero'),
    ('def get_config(:\n', 'raised SyntaxError at line 1'),
])
def test_a_config_file_that_raises(tmp_path, source, message):
  (tmp_path / 'broken.py').write_text(source)
  with pytest.raises(jaxtrain.ConfigError, match=message):
    jaxtrain.load_config(tmp_path / 'broken.py')


def test_cli_names_the_line_of_a_config_file_that_raises(tmp_path):
  (tmp_path / 'broken.py').write_text('import ml_collections\n\ndef get_config():\n  return undefined_name\n')
  error = one_error(cli('--config', str(tmp_path / 'broken.py'), f'--workdir={tmp_path / "run"}'))
  assert "raised NameError at line 4: name 'undefined_name' is not defined" in error
  assert not (tmp_path / 'run').exists()


def test_a_workdir_that_cannot_be_written(tmp_path, data_dir):
  with contextlib.ExitStack() as stack:
    if os.geteuid() == 0:  # Root writes through any permission bits: a read-only file system instead.
      folder = stack.enter_context(small_tmpfs('1m', read_only=True))
    else:
      folder = tmp_path / 'locked'
      folder.mkdir(mode=0o555)
    error = one_error(cli('--config', str(CONFIGS / 'digits_mlp.py'), f'--workdir={folder / "run"}',
                          f'--config.data.data_dir={data_dir}', '--config.train.num_steps=5'))
    assert f'{folder / "run"}; check its permissions and free space' in error


def test_a_full_disk_during_a_checkpoint_save(data_dir, caplog):
  settings = {'data.data_dir': data_dir, 'train.num_steps': 80, 'checkpoint.every_steps': 20,
              'checkpoint.keep': 5, 'train.progress_bar': False, 'compile_cache.enabled': False}
  # Room for about two checkpoints of this CNN, not four: which save fails depends on how far the
  # asynchronous saves overlap (each needs room for its temporary folder), so the steps kept are read from
  # the message.
  with small_tmpfs('1500k') as folder:
    result = cli('--config', str(CONFIGS / 'digits_cnn.py'), f'--workdir={folder / "run"}',
                 *(f'--config.{key}={value}' for key, value in settings.items()))
    error = one_error(result, code=1, foreign_tracebacks=True)
    assert 'no space left on device' in error
    kept_steps = re.search(r'the steps saved before are kept \(([\d, ]+)\)', error).group(1).split(', ')
    assert kept_steps in (['20'], ['20', '40'], ['20', '40', '60']), error
    newest = folder / 'run' / 'checkpoints' / kept_steps[-1]
    kept = digests(newest)
    with caplog.at_level(logging.INFO, logger='jaxtrain'):  # Still readable, as it was.
      jaxtrain.evaluate(jaxtrain.load_config(CONFIGS / 'digits_cnn.py', settings), folder / 'run')
    assert f'Restored step {kept_steps[-1]}' in caplog.text
    assert digests(newest) == kept


def test_a_checkpoint_from_a_newer_jaxtrain(make_config, tmp_path):
  config = make_config('digits_mlp', **{'train.num_steps': 5, 'model.features': (16,)})
  jaxtrain.fit(config, tmp_path)
  meta = tmp_path / 'checkpoints' / '5' / 'meta' / 'metadata'
  meta.write_text(json.dumps({**json.loads(meta.read_text()), 'jaxtrain_version': '99.0.0'}))
  before = digests(tmp_path)
  config.train.num_steps = 10
  with pytest.raises(checkpoint.IncompatibleCheckpoint,
                     match=r'written by jaxtrain 99\.0\.0, newer than this jaxtrain .*; upgrade jaxtrain'):
    jaxtrain.fit(config, tmp_path)
  assert digests(tmp_path) == before


def test_a_torn_last_line_of_metrics_jsonl(make_config, tmp_path):
  config = make_config('digits_mlp', **{'train.num_steps': 10, 'train.log_every_steps': 1,
                                        'checkpoint.every_steps': 5, 'model.features': (16,)})
  jaxtrain.fit(config, tmp_path)
  metrics = tmp_path / history.METRICS_FILE
  with metrics.open('a') as f:  # What a process killed in the middle of a write leaves.
    f.write('{"step": 11, "train/lo')
  assert [r['step'] for r in history.read_metrics(tmp_path) if 'train/loss' in r] == list(range(1, 11))
  config.train.num_steps = 15
  jaxtrain.fit(config, tmp_path)
  assert [r['step'] for r in history.read_metrics(tmp_path) if 'train/loss' in r] == list(range(1, 16))
  assert all(json.loads(line) for line in metrics.read_text().splitlines())  # No broken line is left.

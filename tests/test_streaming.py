"""Data larger than memory: ArrayRecord files read batch by batch (data.in_memory=false), in Grain worker
processes (data.workers), giving the batches the in-memory path gives, resuming bit-identically after kill -9,
and one-line errors for files that cannot be read."""

import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds
from conftest import CONFIGS, ROOT
from test_open_core import params_hash

import jaxtrain
from jaxtrain import data, history
from jaxtrain.data import records


def _examples(count: int, seed: int):
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 255, (count, 8, 8, 1), np.uint8)
  labels = (images.mean(axis=(1, 2, 3)) > 127).astype(np.int32) + 2 * (images[:, 0, 0, 0] > 127)
  return [{'image': image, 'label': label} for image, label in zip(images, labels, strict=True)]


@pytest.fixture(scope='module')
def record_folder(tmp_path_factory):
  folder = tmp_path_factory.mktemp('records')
  assert records.write(folder / 'train-0.array_record', _examples(300, 0)) == 300
  records.write(folder / 'train-1.array_record', _examples(212, 1))  # Splits span several files.
  records.write(folder / 'validation.array_record', _examples(100, 2))
  return folder


def _children(pid: int) -> list[int]:
  """The process ids whose parent is `pid` (Linux /proc)."""
  return [int(stat.parent.name) for stat in pathlib.Path('/proc').glob('[0-9]*/stat')
          if _parent(stat) == pid]


def _parent(stat: pathlib.Path) -> int | None:
  try:
    return int(stat.read_text().rsplit(')', 1)[1].split()[1])
  except (OSError, IndexError, ValueError):
    return None


def _config(make_config, folder, **overrides):
  return make_config('digits_mlp', **{'data.name': f'array_record:{folder}', 'model.features': (32,),
                                      **overrides})


def test_streamed_batches_equal_in_memory_batches(make_config, record_folder):
  splits = {mode: data.load(_config(make_config, record_folder, **{'data.in_memory': mode}))
            for mode in ('true', 'false')}
  assert isinstance(splits['false'].train, records.Stream) and isinstance(splits['true'].train, dict)
  assert splits['false'].num_classes == splits['true'].num_classes == 4
  stats = data.compute_stats(splits['true'].train, 1000)
  assert stats == data.compute_stats(splits['false'].train, 1000)
  streams = {mode: data.train_batches(split.train, stats, 64, seed=3) for mode, split in splits.items()}
  for step in (0, 7, 8, 9, 30):  # 8 steps per epoch: within, at and past the first reshuffle.
    for key in ('image', 'label'):
      np.testing.assert_array_equal(streams['true'][step][key], streams['false'][step][key])
  assert not np.array_equal(streams['true'][0]['label'], streams['true'][8]['label'])
  evals = [list(data.iterate(data.eval_batches(split.eval, stats, 64))) for split in splits.values()]
  for a, b in zip(*evals, strict=True):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])


def test_an_epoch_sees_every_example_once_and_processes_read_disjoint_rows(make_config, record_folder):
  split = data.load(_config(make_config, record_folder, **{'data.in_memory': 'false'})).train
  stats = data.compute_stats(split, 10)
  batches = data.train_batches(split, stats, 64, seed=0)
  epoch = np.concatenate([batches[step]['image'].reshape(64, -1) for step in range(8)])
  assert len(np.unique(epoch, axis=0)) == 512 == len(split)  # 512 = 8 * 64: no remainder to drop.
  halves = [data.train_batches(split, stats, 64, seed=0, shard=(i, 2))[5]['image'] for i in range(2)]
  np.testing.assert_array_equal(np.concatenate(halves), batches[5]['image'])


def test_workers_make_the_batches_this_process_makes(make_config, record_folder):
  split = data.load(_config(make_config, record_folder, **{'data.in_memory': 'false'})).train
  batches = data.train_batches(split, data.compute_stats(split, 10), 32, seed=1)
  assert data.workers(split, 2) == 2 and data.workers({'image': np.zeros(3)}, 2) == 0
  streamed = data.train_iterator(batches, data.stream_state(5), workers=2)
  for step in range(5, 12):
    np.testing.assert_array_equal(next(streamed)['image'], batches[step]['image'])
  streamed.close()


def test_kill_9_then_rerun_with_workers_is_bit_identical_to_in_memory_training(make_config, record_folder,
                                                                              tmp_path):
  overrides = {'train.num_steps': 24, 'train.log_every_steps': 1, 'checkpoint.every_steps': 4,
               'train.eval_every_steps': 12}
  reference = jaxtrain.fit(_config(make_config, record_folder, **overrides, **{'data.in_memory': 'true'}),
                           tmp_path / 'memory')
  args = [sys.executable, '-m', 'jaxtrain.main', '--config', str(CONFIGS / 'digits_mlp.py'),
          f'--workdir={tmp_path / "streamed"}', f'--config.data.name=array_record:{record_folder}',
          '--config.model.features=(32,)', '--config.data.in_memory=false', '--config.data.workers=2',
          '--config.train.progress_bar=False', '--config.compile_cache.enabled=False',
          *(f'--config.{key}={value}' for key, value in overrides.items())]
  process = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 180
  while not any(r['step'] >= 10 for r in history.read_metrics(tmp_path / 'streamed')):
    assert process.poll() is None and time.time() < deadline
    time.sleep(0.05)
  workers = _children(process.pid)
  assert len(workers) >= 2  # Grain's workers (and its resource tracker).
  process.send_signal(signal.SIGKILL)
  process.wait()
  deadline = time.time() + 30
  while any(pathlib.Path(f'/proc/{pid}').exists() for pid in workers):  # They end with their parent.
    assert time.time() < deadline, 'data workers outlived the killed training process'
    time.sleep(0.1)
  rerun = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert rerun.returncode == 0, rerun.stderr[-2000:]
  assert 'Resuming from step' in rerun.stderr
  config = _config(make_config, record_folder, **overrides, **{'data.in_memory': 'false'})
  resumed = jaxtrain.fit(config, tmp_path / 'streamed')  # Finished: restores the final state.
  assert params_hash(resumed.state) == params_hash(reference.state)
  steps = [r['step'] for r in history.read_metrics(tmp_path / 'streamed') if 'train/loss' in r]
  assert steps == list(range(1, 25))


def test_streamed_tfds_split_reads_records_lazily(make_config):
  config = make_config(**{'data.name': 'cifar10', 'data.in_memory': 'auto', 'data.batch_size': 4})
  with tfds.testing.mock_data(num_examples=12):
    small = data.load(config)
    config.data.in_memory = 'false'
    streamed = data.load(config)
  assert isinstance(small.train, dict) and isinstance(streamed.train, records.Stream)
  assert streamed.train['image'].shape == (12, 32, 32, 3) and streamed.num_classes == 10


def test_unreadable_records_are_one_line_errors(make_config, record_folder, tmp_path):
  broken = tmp_path / 'broken'
  broken.mkdir()
  good = (record_folder / 'train-0.array_record').read_bytes()
  (broken / 'train.array_record').write_bytes(good[:len(good) // 2])  # Truncated: no footer.
  with pytest.raises(jaxtrain.ConfigError, match=r"cannot read the record file '.*train.array_record'"):
    data.load(_config(make_config, broken))
  (broken / 'train.array_record').write_bytes(b'not a record file at all' * 100)
  with pytest.raises(jaxtrain.ConfigError, match='cannot read the record file'):
    data.load(_config(make_config, broken))
  (broken / 'train.array_record').unlink()
  records.write(broken / 'train.array_record', [{'image': np.zeros(3)}])
  (broken / 'validation.array_record').write_bytes(b'')
  with pytest.raises(jaxtrain.ConfigError, match='validation.array_record'):
    data.load(_config(make_config, broken))
  with pytest.raises(jaxtrain.ConfigError, match=r"has no train\*.array_record file"):
    data.load(_config(make_config, tmp_path / 'nowhere'))


def test_record_files_object_and_its_cli_error(make_config, record_folder, tmp_path):
  source = data.RecordFiles(train=str(record_folder / 'train-*.array_record'))
  config = _config(make_config, record_folder,
                   **{'data.validation_fraction': 0.25, 'data.in_memory': 'false'})
  run = jaxtrain.fit(config, tmp_path / 'run', data=source)
  assert 0 <= run.summary['final']['eval/accuracy'] <= 1
  assert len(data.load(config, source).eval) == 128  # The last quarter of 512.
  result = subprocess.run([sys.executable, '-m', 'jaxtrain.main', '--config', str(CONFIGS / 'digits_mlp.py'),
                           f'--workdir={tmp_path / "cli"}', f'--config.data.name=array_record:{tmp_path}'],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1].startswith(f"error: data.name='array_record:{tmp_path}' has "
                                                            'no train*.array_record file')
  assert not (tmp_path / 'cli').exists()

"""Input: the digits builder, training-split statistics, per-epoch shuffles, padded eval, mock MNIST."""

import itertools
import json
import threading
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds

import jaxtrain
from jaxtrain import data


def test_digits_builder_has_fixed_splits_and_carves_validation(make_config):
  splits = data.load(make_config())  # digits_cnn carves 10% of train for validation.
  sizes = [len(split['label']) for split in (splits.train, splits.eval, splits.test)]
  assert sizes == [1293, 144, 360]
  assert splits.train['image'].shape == (1293, 8, 8, 1) and splits.train['image'].dtype == np.uint8
  assert splits.eval_name == 'validation' and splits.num_classes == 10
  assert splits.train['image'].shape[1:] == (8, 8, 1)
  no_val = data.load(make_config(**{'data.validation_fraction': 0.0}))
  assert len(no_val.train['label']) == 1437 and no_val.eval_name == 'test'
  # The carved validation examples are the tail of the full train split, the same on every call.
  np.testing.assert_array_equal(no_val.train['image'][1293:], splits.eval['image'])
  np.testing.assert_array_equal(no_val.train['label'][:1293], splits.train['label'])


def test_statistics_come_from_the_training_split_only(make_config, tmp_path):
  splits = data.load(make_config())
  stats = data.compute_stats(splits.train, max_examples=10_000)
  images = splits.train['image'].astype(np.float64)
  assert stats['image']['mean'][0] == pytest.approx(images.mean(), rel=1e-6)
  assert stats['image']['std'][0] == pytest.approx(images.std(), rel=1e-6)
  with_test = np.concatenate([images, splits.test['image']])
  assert stats['image']['mean'][0] != pytest.approx(with_test.mean(), rel=1e-6)
  # Stored once in the workdir and reused, even if the split later changed.
  data.load_or_compute_stats(splits.train, tmp_path, 10_000)
  reused = data.load_or_compute_stats(splits.eval, tmp_path, 10_000)
  assert reused == json.loads((tmp_path / data.STATS_FILE).read_text()) == stats


def test_normalized_training_batches_have_zero_mean_unit_std(make_config):
  splits = data.load(make_config(**{'data.validation_fraction': 0.0}))
  stats = data.compute_stats(splits.train, 10_000)
  batches = data.train_batches(splits.train, stats, batch_size=479, seed=0)
  images = np.concatenate([batches[i]['image'] for i in range(3)])  # One epoch: 3 x 479 = 1437.
  assert abs(images.mean()) < 1e-5 and images.std() == pytest.approx(1.0, abs=1e-5)
  assert batches[0]['image'].dtype == np.float32 and batches[0]['label'].dtype == np.int32


def epoch_labels(batches, epoch: int, steps_per_epoch: int) -> list:
  return [tuple(batches[epoch * steps_per_epoch + i]['label']) for i in range(steps_per_epoch)]


def test_each_epoch_is_reshuffled_reproducibly_and_drops_the_remainder(make_config):
  splits = data.load(make_config(**{'data.validation_fraction': 0.0}))
  stats = data.compute_stats(splits.train, 10_000)
  batches = data.train_batches(splits.train, stats, batch_size=100, seed=3)
  steps_per_epoch = len(splits.train['label']) // 100  # 14; each epoch drops its last 37 examples.
  first, second = epoch_labels(batches, 0, 14), epoch_labels(batches, 1, 14)
  assert first != second
  assert epoch_labels(data.train_batches(splits.train, stats, 100, seed=3), 1, 14) == second
  assert epoch_labels(data.train_batches(splits.train, stats, 100, seed=4), 1, 14) != second
  assert all(len(b) == 100 for b in first) and steps_per_epoch == 14
  # Within an epoch no example repeats: the 14 batches hold 1400 distinct examples. Digits has duplicate
  # images, so examples are told apart by a tag written into their pixels.
  tagged = {'image': np.arange(1437).reshape(-1, 1, 1, 1) * np.ones((1, 8, 8, 1)),
            'label': splits.train['label']}
  plain = {'image': {'mean': [0.0], 'std': [1.0]}}
  ids = [data.train_batches(tagged, plain, 100, seed=3)[i]['image'][:, 0, 0, 0] for i in range(28)]
  for epoch in (ids[:14], ids[14:]):
    assert len(np.unique(np.concatenate(epoch))) == 1400


def test_resuming_the_iterator_at_a_step_yields_that_steps_batch(make_config):
  splits = data.load(make_config())
  stats = data.compute_stats(splits.train, 10_000)
  batches = data.train_batches(splits.train, stats, 32, seed=0)
  resumed = next(data.iterate(batches, start=57))
  assert not np.array_equal(resumed['image'], batches[56]['image'])
  np.testing.assert_array_equal(resumed['image'], batches[57]['image'])


def test_chunks_stack_consecutive_batches_and_shrink_for_large_batches(make_config):
  splits = data.load(make_config())
  stats = data.compute_stats(splits.train, 10_000)
  batches = data.train_batches(splits.train, stats, 32, seed=0)
  per_chunk = data.chunk_steps(batches[0])
  assert per_chunk == 16  # 32 digits are 8 KiB: small batches travel 16 steps at a time.
  stream = data.chunks(data.train_iterator(batches, data.stream_state(48)), per_chunk)
  chunk = next(stream)  # Steps 48..63.
  assert chunk['image'].shape == (16, 32, 8, 8, 1)
  np.testing.assert_array_equal(chunk['image'][5], batches[53]['image'])
  np.testing.assert_array_equal(chunk['label'][15], batches[63]['label'])
  np.testing.assert_array_equal(next(stream)['label'][0], batches[64]['label'])
  large = {'image': np.zeros((256, 224, 224, 3), np.float32)}  # An ImageNet batch moves alone.
  assert data.chunk_steps(large) == 1


def test_eval_batches_are_padded_and_count_every_example_once(make_config):
  splits = data.load(make_config())
  stats = data.compute_stats(splits.train, 10_000)
  batches = list(data.iterate(data.eval_batches(splits.test, stats, batch_size=256)))
  assert [b['image'].shape[0] for b in batches] == [256, 256]
  assert sum(int(b['mask'].sum()) for b in batches) == 360
  assert not batches[1]['mask'][104:].any() and batches[1]['mask'][:104].all()


def test_prefetch_places_batches_ahead_and_reraises_producer_errors():
  placed = []

  def place(batch):
    placed.append(batch)
    return batch * 10

  assert list(data.prefetch(iter(range(5)), place, size=2)) == [0, 10, 20, 30, 40]

  def broken():
    yield 1
    raise OSError('disk gone')

  with pytest.raises(OSError, match='disk gone'):
    list(data.prefetch(broken(), lambda b: b, size=2))

  # Closing an endless stream stops its producer thread, even while it waits on a full queue.
  before = threading.active_count()
  stream = data.prefetch(itertools.count(), lambda b: b, size=2)
  assert [next(stream) for _ in range(3)] == [0, 1, 2]
  time.sleep(0.1)  # The producer fills the queue and blocks.
  stream.close()
  assert threading.active_count() == before


def test_read_decodes_a_tfds_source_into_arrays(make_config):
  builder = data.DATASETS['digits'](make_config().data.data_dir)
  source = builder.as_data_source(split='test')
  arrays = data.read(source)
  assert arrays['image'].shape == (360, 8, 8, 1) and arrays['label'].dtype == np.int32
  np.testing.assert_array_equal(arrays['image'][250], source[250]['image'])
  assert arrays['label'][359] == source[359]['label']


def test_mnist_config_trains_a_few_steps_on_mock_data(make_config, tmp_path):
  config = make_config('mnist_cnn', **{'train.num_steps': 3, 'data.batch_size': 8,
                                       'data.eval_batch_size': 16, 'train.log_every_steps': 1})
  with tfds.testing.mock_data(num_examples=48):
    run = jaxtrain.fit(config, tmp_path)
  assert run.summary['steps'] == 3
  assert 0.0 <= run.summary['final']['test/accuracy'] <= 1.0
  losses = [r['train/loss'] for r in run.history if 'train/loss' in r]
  assert len(losses) == 3 and all(np.isfinite(losses))

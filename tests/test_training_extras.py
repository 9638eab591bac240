"""The zoo configs run offline; gradient accumulation, bf16, EMA and augmentation inside the train step."""

import hashlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

import jaxtrain
from jaxtrain import config as config_lib
from jaxtrain import model as model_lib
from jaxtrain import models, optim, steps
from jaxtrain import state as state_lib


def params_hash(params) -> str:
  return hashlib.sha256(b''.join(np.asarray(x).tobytes() for x in jax.tree.leaves(params))).hexdigest()


def finite(tree) -> bool:
  return all(np.isfinite(np.asarray(x, np.float32)).all() for x in jax.tree.leaves(tree))


# Each zoo config, made small enough to run a few CPU steps (mock data where the data set is not offline).
ZOO = [
    ('digits_unet', {}, None),
    ('cifar10_resnet18', {'model.width': 8}, 24),
    ('mnist_vit', {'model.width': 16, 'model.num_layers': 1, 'model.mlp_dim': 32}, 24),
    # Streamed, in this process: mock data exists only here, not in worker processes.
    ('imagenet_resnet50', {'model.width': 8, 'data.image_size': 32, 'data.workers': 0}, 5),
]


@pytest.mark.parametrize('name,overrides,mock_examples', ZOO, ids=[z[0] for z in ZOO])
def test_zoo_configs_train_a_few_steps_offline(make_config, tmp_path, name, overrides, mock_examples):
  config = make_config(name, **{'train.num_steps': 3, 'train.log_every_steps': 1, 'train.eval_every_steps': 3,
                                'data.batch_size': 4, 'data.eval_batch_size': 8, **overrides})
  if mock_examples:
    with tfds.testing.mock_data(num_examples=mock_examples):
      run = jaxtrain.fit(config, tmp_path)
  else:
    run = jaxtrain.fit(config, tmp_path)
  assert run.summary['steps'] == 3
  assert all(np.isfinite(r['train/loss']) for r in run.history if 'train/loss' in r)
  assert 'test/accuracy' in run.summary['final']
  if name == 'digits_unet':
    assert 0 < run.summary['final']['test/mean_iou'] <= 1


def one_step(config, batch, accumulate: int):
  """Parameters after one train step of a BatchNorm-free CNN with `accumulate` micro-batches."""
  config_lib.override(config, {'optim.accumulate_steps': accumulate})
  model = model_lib.wrap(models.build(config.model, 10))
  optimizer = optim.build(config.optim, 10)
  state = state_lib.create(model, optimizer.tx, {'image': np.zeros((1, 8, 8, 1), np.float32)}, 0)
  step = jax.jit(steps.make_train_step(model, optimizer, config.optim))
  new_state, metrics = step(state, batch)
  return new_state.params, metrics


def test_accumulating_k_micro_batches_equals_one_batch_of_k_times_the_size(make_config):
  config = make_config(**{'model.norm': 'none', 'model.dropout': 0.0, 'optim.name': 'sgd', 'optim.lr': 0.1,
                          'optim.warmup_steps': 0, 'optim.schedule': 'constant'})
  rng = np.random.default_rng(0)
  batch = {'image': rng.normal(size=(32, 8, 8, 1)).astype(np.float32),
           'label': rng.integers(0, 10, 32).astype(np.int32)}
  whole, whole_metrics = one_step(config, batch, 1)
  accumulated, accumulated_metrics = one_step(config, batch, 4)
  for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(accumulated), strict=True):
    np.testing.assert_allclose(a, b, atol=1e-6)
  np.testing.assert_allclose(whole_metrics['loss'], accumulated_metrics['loss'], rtol=1e-6)
  np.testing.assert_allclose(whole_metrics['accuracy'], accumulated_metrics['accuracy'])
  with pytest.raises(jaxtrain.ConfigError, match='does not split into optim.accumulate_steps=5'):
    config_lib.override(config, {'optim.accumulate_steps': 5})
    config_lib.validate(config)


def test_bfloat16_computes_in_bf16_and_keeps_float32_parameters(make_config):
  run = jaxtrain.fit(make_config(**{'model.dtype': 'bfloat16'}))
  assert {x.dtype for x in jax.tree.leaves(run.state.params)} == {jnp.dtype('float32')}
  assert {x.dtype for x in jax.tree.leaves(run.state.opt_state) if x.ndim} == {jnp.dtype('float32')}
  config = make_config(**{'model.dtype': 'bfloat16'})
  model = models.build(config.model, 10)
  hidden = jax.eval_shape(lambda p: model.apply({'params': p, 'batch_stats': run.state.batch_stats},
                                                jnp.zeros((2, 8, 8, 1)), train=False,
                                                capture_intermediates=True)[1],
                          run.state.params)['intermediates']
  assert jnp.dtype('bfloat16') in {x.dtype for x in jax.tree.leaves(hidden)}  # The layers compute in bf16.
  assert run.summary['final']['test/accuracy'] > 0.3 and finite(run.state.params)


def test_ema_is_evaluated_saved_and_restored(make_config, tmp_path):
  settings = {'optim.ema_decay': 0.9, 'checkpoint.every_steps': 10, 'optim.schedule': 'constant',
              'optim.warmup_steps': 0}
  run = jaxtrain.fit(make_config(**settings), tmp_path / 'ema')
  assert params_hash(run.state.ema) != params_hash(run.state.params)
  # Evaluation uses the average: the eval metrics are those of a state whose params are the EMA.
  averaged = jaxtrain.evaluate(make_config(**settings, **{'optim.ema_eval': False}), tmp_path / 'ema')
  assert averaged['eval/loss'] != run.summary['final']['eval/loss']
  # A run resumed from step 10 ends with the same EMA as an uninterrupted one.
  jaxtrain.fit(make_config(**settings, **{'train.num_steps': 10}), tmp_path / 'resumed')
  resumed = jaxtrain.fit(make_config(**settings), tmp_path / 'resumed')
  assert params_hash(resumed.state.ema) == params_hash(run.state.ema)


def test_augmentation_in_the_step_is_reproducible_and_changes_training(make_config):
  settings = {'train.num_steps': 10, 'model.dropout': 0.0}
  plain = jaxtrain.fit(make_config(**settings)).state.params
  flipped = [jaxtrain.fit(make_config(**settings, **{'data.augment': 'crop_flip'})).state.params
             for _ in range(2)]
  assert params_hash(flipped[0]) == params_hash(flipped[1])
  assert params_hash(flipped[0]) != params_hash(plain)


def test_a_head_that_does_not_fit_the_task_is_a_config_error(make_config):
  with pytest.raises(jaxtrain.ConfigError, match="task.name='segmentation' needs per-pixel logits"):
    jaxtrain.fit(make_config(**{'task.name': 'segmentation', 'data.name': 'digits_segmentation'}))
  with pytest.raises(jaxtrain.ConfigError, match='moves the image but not its per-pixel labels'):
    jaxtrain.fit(make_config('digits_unet', **{'data.augment': 'flip'}))

"""The model zoo: vgg, resnet18/34/50, vit, unet.

Parameter counts at full size come from `jax.eval_shape` (nothing is computed) and match the published
models; training checks run a few jitted Adam steps of narrow versions on a tiny batch.
"""

import functools

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxtrain
from jaxtrain import config as config_lib
from jaxtrain import models, tasks
from jaxtrain import state as state_lib
from jaxtrain.models import layers, resnet


def model_config(**overrides):
  config = config_lib.defaults()
  config_lib.override(config, {f'model.{k}': v for k, v in overrides.items()})
  return config.model


def abstract_params(config, num_classes: int, shape: tuple[int, ...]):
  model = models.build(config, num_classes)
  return jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, *shape)))['params']


def count(config, num_classes: int, shape: tuple[int, ...]) -> int:
  return state_lib.num_params(abstract_params(config, num_classes, shape))


def fast_key(seed: int):
  """An RBG key: XLA's own generator compiles ~7x faster than threefry on a CPU, where compiling the
  random initializers of a small net otherwise costs more than its forward and backward passes."""
  return jax.random.key(seed, impl='rbg')


IMAGENET = (224, 224, 3)
VIT_B16 = dict(name='vit', width=768, num_layers=12, num_heads=12, mlp_dim=3072, patch_size=16,
               activation='gelu')


@pytest.mark.parametrize('name,expected', [
    ('resnet18', 11_689_512), ('resnet34', 21_797_672), ('resnet50', 25_557_032)])
def test_resnets_have_torchvisions_parameter_counts(name, expected):
  """torchvision's counts: BatchNorm scale and bias are parameters, its running statistics are not."""
  assert count(model_config(name=name, norm='batch'), 1000, IMAGENET) == expected


def test_resnet18_with_the_cifar_stem_has_the_usual_cifar_count():
  # The 7x7x3x64 stem becomes 3x3x3x64 (-7,680) and the head 512 x 10 (-507,870).
  assert count(model_config(name='resnet18', norm='batch'), 10, (32, 32, 3)) == 11_173_962


def test_vit_b16_and_vgg16_have_their_published_parameter_counts():
  assert count(model_config(**VIT_B16), 1000, IMAGENET) == 86_567_656
  vgg16 = model_config(name='vgg', features=(64, 128, 256, 512, 512), stage_depths=(2, 2, 3, 3, 3),
                       head_features=(4096, 4096))
  assert count(vgg16, 1000, IMAGENET) == 138_357_544


def vit_params(d: int, layers: int, mlp: int, patch: int, channels: int, tokens: int, classes: int,
               class_token: bool) -> int:
  """The ViT count by formula: embedding, (class token), positions, blocks, final norm, head."""
  block = 2 * 2 * d + 4 * (d * d + d) + (d * mlp + mlp) + (mlp * d + d)  # 2 LNs, q k v out, MLP.
  return (patch * patch * channels * d + d + class_token * d + (tokens + class_token) * d
          + layers * block + 2 * d + d * classes + classes)


@pytest.mark.parametrize('pooling', ['token', 'avg'])
def test_small_vit_count_follows_the_formula(pooling):
  config = model_config(name='vit', width=24, num_layers=2, num_heads=3, mlp_dim=40, patch_size=4,
                        vit_pooling=pooling)
  expected = vit_params(24, 2, 40, 4, 3, (16 // 4) ** 2, 10, class_token=pooling == 'token')
  assert count(config, 10, (16, 16, 3)) == expected


def test_unet_count_follows_the_formula():
  # Encoder 4: conv 3*3*1*4+4, conv 3*3*4*4+4; bottleneck 8: 3*3*4*8+8, 3*3*8*8+8; up-conv 2*2*8*4+4;
  # decoder on the concatenated 4+4 channels: 3*3*8*4+4, 3*3*4*4+4; per-pixel head 1*1*4*3+3.
  expected = 40 + 148 + 296 + 584 + 132 + 292 + 148 + 15
  assert count(model_config(name='unet', features=(4, 8)), 3, (8, 8, 1)) == expected == 1655


def test_resnet_stem_follows_the_image_side_unless_set():
  def stem(side, setting):
    params = abstract_params(model_config(name='resnet18', width=8, stem=setting), 10, (side, side, 3))
    return params['stem']['Conv_0']['kernel'].shape[:2]

  assert stem(32, 'auto') == (3, 3) and stem(64, 'auto') == (7, 7)
  assert stem(64, 'cifar') == (3, 3) and stem(32, 'imagenet') == (7, 7)


@pytest.mark.parametrize('bottleneck,norm,zeroed', [(True, 'batch', ('BatchNorm_0', 'scale')),
                                                    (False, 'none', ('Conv_0', 'kernel'))])
def test_zero_init_residual_starts_the_residual_branch_at_zero(bottleneck, norm, zeroed):
  """A block whose branch is zero is its shortcut followed by the activation: the net starts shallow."""
  x = np.random.default_rng(0).normal(size=(2, 4, 4, 8)).astype(np.float32)
  block = resnet.ResidualBlock(8 // (4 if bottleneck else 1), layers.initializer('he_normal', 'k'),
                               nn.initializers.zeros, bottleneck=bottleneck, norm=norm,
                               zero_init_residual=True)
  variables = jax.jit(functools.partial(block.init, train=False))(fast_key(0), x)
  last = f'ConvNorm_{2 if bottleneck else 1}'
  assert not np.any(variables['params'][last][zeroed[0]][zeroed[1]])
  assert np.any(variables['params']['ConvNorm_0']['Conv_0']['kernel'])
  np.testing.assert_allclose(block.apply(variables, x, train=False), np.maximum(x, 0), atol=1e-6)
  # The option reaches the blocks of a configured ResNet, and is off by default.
  assert models.build(model_config(name='resnet50', zero_init_residual=True), 10).zero_init_residual
  assert not models.build(model_config(name='resnet50'), 10).zero_init_residual


def train_losses(model, x, batch, loss_fn, steps: int = 5, lr: float = 1e-2) -> np.ndarray:
  """Adam on one batch, as the train step will do it: BatchNorm statistics updated, dropout keyed.

  Init and the steps are one jitted program (a scan over the steps), so a model compiles once.
  """
  tx = optax.adam(lr)

  def step(carry, i):
    params, batch_stats, opt_state = carry

    def loss_of(params):
      logits, updates = model.apply({'params': params, 'batch_stats': batch_stats}, x, train=True,
                                    rngs={'dropout': jax.random.fold_in(fast_key(1), i)},
                                    mutable=['batch_stats'])
      return loss_fn(logits, batch).mean(), updates.get('batch_stats', batch_stats)

    (loss, batch_stats), grads = jax.value_and_grad(loss_of, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), batch_stats, opt_state), loss

  @jax.jit
  def run():
    variables = model.init(fast_key(0), x)
    params, batch_stats = variables['params'], variables.get('batch_stats', {})
    return jax.lax.scan(step, (params, batch_stats, tx.init(params)), jnp.arange(steps))[1]

  return np.asarray(run())


CLASSIFIERS = {
    'vgg': dict(name='vgg', features=(4, 8), stage_depths=(2, 1), head_features=(16,), norm='batch'),
    'resnet18': dict(name='resnet18', width=4, norm='batch', dropout=0.1),
    'resnet50': dict(name='resnet50', width=2, norm='batch', zero_init_residual=True),
    'vit': dict(name='vit', width=16, num_layers=2, num_heads=2, mlp_dim=32, patch_size=4, dropout=0.1,
                activation='gelu', kernel_init='glorot_uniform'),
}


# ResNet-50's 53 convs take ~20 s to compile on a CPU: its blocks are tested alone above, the whole
# net trains in the slow tests.
@pytest.mark.parametrize('name', ['vgg', 'resnet18', 'vit', pytest.param('resnet50', marks=pytest.mark.slow)])
def test_classifier_trains_on_a_tiny_batch(name):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(8, 8, 8, 3)).astype(np.float32)
  batch = {'label': jnp.asarray(rng.integers(0, 5, size=8))}
  losses = train_losses(models.build(model_config(**CLASSIFIERS[name]), 5), x, batch,
                        tasks.build(config_lib.defaults().task).loss)
  assert all(np.isfinite(losses)) and losses[-1] < losses[0], losses


def test_unet_gives_per_pixel_logits_and_trains_on_a_segmentation_loss():
  model = models.build(model_config(name='unet', features=(4, 8), norm='batch'), 3)
  x = np.random.default_rng(0).normal(size=(4, 8, 8, 1)).astype(np.float32)
  batch = {'label': jnp.asarray((x[..., 0] > 0).astype(np.int32) + (x[..., 0] > 1))}  # 3 classes.
  logits = jax.eval_shape(lambda: model.init_with_output(jax.random.PRNGKey(0), x)[0])
  assert logits.shape == (4, 8, 8, 3) and logits.dtype == jnp.float32
  config = config_lib.defaults()
  config.task.name = 'segmentation'
  segmentation = tasks.build(config.task)
  segmentation.check(logits.shape[1:], 3)
  losses = train_losses(model, x, batch, segmentation.loss, lr=3e-2)
  assert all(np.isfinite(losses)) and losses[-1] < losses[0], losses


def bf16_run(model, x):
  """Logits, the variables' dtypes and the dtypes of every layer's output, for a bf16 model."""
  def run():
    variables = model.init(jax.random.PRNGKey(0), x)
    logits, state = model.apply(variables, x, capture_intermediates=True, mutable=['intermediates'])
    return logits, variables, state['intermediates']
  return run


@pytest.mark.parametrize('name', sorted(CLASSIFIERS))
def test_bfloat16_computes_in_bf16_with_float32_parameters_and_logits(name):
  small = {**CLASSIFIERS[name], 'dropout': 0.0, 'dtype': 'bfloat16'}
  x = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype(np.float32)
  logits, variables, intermediates = jax.eval_shape(bf16_run(models.build(model_config(**small), 5), x))
  assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype('float32')}
  assert jnp.dtype('bfloat16') in {leaf.dtype for leaf in jax.tree.leaves(intermediates)}
  assert logits.dtype == jnp.float32


def test_bfloat16_logits_are_close_to_float32_ones():
  small = {**CLASSIFIERS['vit'], 'dropout': 0.0}
  x = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype(np.float32)
  fp32, bf16 = (models.build(model_config(**small, dtype=dtype), 5) for dtype in ('float32', 'bfloat16'))

  @jax.jit
  def both():
    variables = fp32.init(fast_key(0), x)
    return fp32.apply(variables, x), bf16.apply(variables, x)

  reference, logits = both()
  assert logits.dtype == jnp.float32 and not np.array_equal(logits, reference)
  np.testing.assert_allclose(logits, reference, atol=0.05 * float(jnp.abs(reference).max()))


def test_vit_pooling_choices_and_class_token():
  for pooling, has_token in [('token', True), ('avg', False), ('attention', False)]:
    params = abstract_params(model_config(**CLASSIFIERS['vit'], vit_pooling=pooling), 5, (8, 8, 3))
    assert ('cls' in params) == has_token
    assert params['pos_embedding'].shape == (1, 4 + has_token, 16)
    assert ('AttentionPool_0' in params) == (pooling == 'attention')


@pytest.mark.parametrize('overrides,shape,message', [
    (dict(name='vit', patch_size=3), (8, 8, 3), r'model.patch_size=3 does not divide the image size 8x8'),
    (dict(name='vit', width=30, num_heads=4), (8, 8, 3), r'model.width=30 must divide by model.num_heads=4'),
    (dict(name='vit', vit_pooling='flatten'), (8, 8, 3), r"model.vit_pooling='flatten'.*attention, avg"),
    (dict(name='unet', features=(4, 8, 16, 32)), (12, 12, 1), r'unet halves the image 3 times.*divide by 8'),
    (dict(name='vgg', features=(4, 8, 16), stage_depths=(2, 2)), (8, 8, 1), r'model.stage_depths=\(2, 2\)'),
    (dict(name='resnet18', stem='big'), (8, 8, 3), r"model.stem='big'.*cifar, imagenet"),
    (dict(name='resnet50', dtype='float16'), (8, 8, 3), r"model.dtype='float16'.*bfloat16, float32"),
])
def test_bad_model_options_are_config_errors(overrides, shape, message):
  with pytest.raises(jaxtrain.ConfigError, match=message):
    abstract_params(model_config(**overrides), 10, shape)


def test_every_model_is_in_the_registry():
  assert {'mlp', 'cnn', 'vgg', 'resnet18', 'resnet34', 'resnet50', 'vit', 'unet', 'gpt'} == set(models.MODELS)
  flat = flax.traverse_util.flatten_dict(abstract_params(model_config(name='resnet18'), 10, (8, 8, 3)))
  assert ('head', 'kernel') in flat  # The classifier is called head in every model.

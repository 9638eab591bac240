"""On-device augmentation: pure functions of the RNG, shapes kept, and each one does what its name says."""

import jax
import numpy as np
import pytest

import jaxtrain
from jaxtrain import config as config_lib
from jaxtrain.data import augment

BATCH, SIDE = 16, 8


def data_config(**overrides):
  config = config_lib.defaults()
  config_lib.override(config, {f'data.{k}': v for k, v in overrides.items()})
  return config.data


def images(seed: int = 0) -> np.ndarray:
  """Random pixels: any window or mirror of them is told apart from every other."""
  return np.random.default_rng(seed).normal(size=(BATCH, SIDE, SIDE, 3)).astype(np.float32)


@pytest.fixture(scope='module')
def jitted():
  """Each augmentation jitted once, as the train step will call it: with `fold_in(rng, step)`."""
  def step_augment(name):
    fn = augment.build(data_config(augment=name))
    return jax.jit(lambda rng, step, x: fn(jax.random.fold_in(rng, step), x))
  return {name: step_augment(name) for name in augment.AUGMENTS}


@pytest.mark.parametrize('name', sorted(augment.AUGMENTS))
def test_every_augmentation_keeps_the_shape_and_is_a_function_of_the_rng(jitted, name):
  x, rng = images(), jax.random.PRNGKey(0)
  out = np.asarray(jitted[name](rng, 3, x))
  assert out.shape == x.shape and out.dtype == np.float32 and np.all(np.isfinite(out))
  np.testing.assert_array_equal(out, jitted[name](rng, 3, x))  # Same key and step, same images.
  if name == 'none':
    np.testing.assert_array_equal(out, x)
    return
  assert not np.array_equal(out, jitted[name](rng, 4, x))  # Another step ...
  assert not np.array_equal(out, jitted[name](jax.random.PRNGKey(1), 3, x))  # ... or seed.
  # Every example draws its own transformation: copies of one image come out different.
  copies = np.asarray(jitted[name](rng, 3, np.repeat(x[:1], BATCH, axis=0)))
  assert len({c.tobytes() for c in copies}) > 1


def test_unknown_names_are_config_errors_listing_the_choices():
  with pytest.raises(jaxtrain.ConfigError, match=r"data.augment='mixup'.*crop_flip"):
    augment.build(data_config(augment='mixup'))
  with pytest.raises(jaxtrain.ConfigError, match=r"data.crop_pad_mode='edge'.*reflect, zero"):
    augment.build(data_config(augment='crop_flip', crop_pad_mode='edge'))


def test_flip_mirrors_left_right_about_half_the_images():
  x = images()
  out = np.asarray(augment.flip(jax.random.PRNGKey(0), x))
  flipped = [np.array_equal(o, i[:, ::-1]) for o, i in zip(out, x, strict=True)]
  kept = [np.array_equal(o, i) for o, i in zip(out, x, strict=True)]
  assert all(f != k for f, k in zip(flipped, kept, strict=True))  # Each image is one or the other.
  assert 3 <= sum(flipped) <= BATCH - 3


@pytest.mark.parametrize('mode,numpy_mode', [('reflect', 'reflect'), ('zero', 'constant')])
def test_crop_is_a_window_of_the_padded_image(mode, numpy_mode):
  x, padding = images(), 2
  out = np.asarray(augment.random_crop(jax.random.PRNGKey(0), x, padding=padding, mode=mode))
  offsets = []
  for image, crop in zip(x, out, strict=True):
    padded = np.pad(image, [(padding, padding), (padding, padding), (0, 0)], mode=numpy_mode)
    matches = [(top, left) for top in range(2 * padding + 1) for left in range(2 * padding + 1)
               if np.array_equal(padded[top:top + SIDE, left:left + SIDE], crop)]
    assert len(matches) == 1
    offsets.append(matches[0])
  assert len(set(offsets)) > 4  # Offsets are drawn per example, over the whole range.
  assert {top for top, _ in offsets} >= {0, 2 * padding} or {left for _, left in offsets} >= {0, 2 * padding}


def test_random_resized_crop_zooms_into_a_box_of_the_image():
  rng = jax.random.PRNGKey(0)
  # A constant image stays constant: every output pixel is a convex combination of input pixels.
  constant = np.full((BATCH, SIDE, SIDE, 3), 0.7, np.float32)
  np.testing.assert_allclose(augment.random_resized_crop(rng, constant), constant, rtol=1e-6)
  # A horizontal ramp (pixel = its column) stays a ramp: along each row the output rises from the box's
  # left edge to its right edge, within the image; boxes differ between examples and are mostly smaller.
  ramp = np.broadcast_to(np.arange(SIDE, dtype=np.float32)[None, None, :, None], constant.shape)
  out = np.asarray(augment.random_resized_crop(rng, ramp, min_scale=0.08))
  assert np.all(np.diff(out, axis=2) >= -1e-5)
  assert out.min() >= -1e-5 and out.max() <= SIDE - 1 + 1e-5
  np.testing.assert_allclose(out, np.broadcast_to(out[:, :1], out.shape), atol=1e-5)  # Rows alike.
  spans = out[:, 0, -1, 0] - out[:, 0, 0, 0]
  assert np.ptp(spans) > 1 and np.median(spans) < SIDE - 1
  # With min_scale=1 the box is (nearly) the whole image: the output is (nearly) the input.
  whole = np.asarray(augment.random_resized_crop(rng, ramp, min_scale=1.0))
  assert np.abs(whole - ramp).mean() < np.abs(out - ramp).mean()

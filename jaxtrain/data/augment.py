"""On-device augmentation: pure, jit-compatible functions `augment(rng, images) -> images`.

They run inside the jitted train step on the normalized float batch, so the host pipeline stays a cheap
gather and the random draws are a function of (seed, step) like every other random number of a run: the
step calls `build(config.data)(jax.random.fold_in(rng, step), batch['image'])`. Each example gets its own
key (split + vmap), and every output has the input's shape, so the step compiles once.
"""

import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxtrain.config import lookup

PAD_MODES = {'reflect': 'reflect', 'zero': 'constant'}
LOG_RATIO = (math.log(3 / 4), math.log(4 / 3))  # Aspect ratios of random resized crops, log-uniform.


def _per_example(augment_one: Callable) -> Callable:
  """Lifts `augment_one(key, image)` to a batch with one independent key per example."""
  def augment(rng, images):
    return jax.vmap(augment_one)(jax.random.split(rng, images.shape[0]), images)
  return augment


def _flip_one(key, image):
  return jnp.where(jax.random.bernoulli(key), image[:, ::-1], image)


def _crop_one(key, image, padding: int, mode: str):
  """A window of the image's size at a uniform offset in the image padded by `padding` on each side."""
  height, width = image.shape[:2]
  padded = jnp.pad(image, [(padding, padding), (padding, padding), (0, 0)], mode=PAD_MODES[mode])
  top, left = jax.random.randint(key, (2,), 0, 2 * padding + 1)
  return jax.lax.dynamic_slice(padded, (top, left, 0), (height, width, image.shape[2]))


def _resized_crop_one(key, image, min_scale: float):
  """Inception-style crop: a box of area U(min_scale, 1) x the image's and aspect ratio log-uniform in
  (3/4, 4/3), at a uniform position, resized (bilinear, antialiased) to the image's size.

  A box wider or taller than the image (area fraction x ratio > 1) is clipped to the image's side instead
  of redrawn as torchvision does (up to 10 times): static shapes need a fixed number of draws. Such draws,
  large-area ones, become a little squarer.
  """
  height, width = image.shape[:2]
  area_key, ratio_key, position_key = jax.random.split(key, 3)
  area = jax.random.uniform(area_key, minval=min_scale, maxval=1.0) * height * width
  ratio = jnp.exp(jax.random.uniform(ratio_key, minval=LOG_RATIO[0], maxval=LOG_RATIO[1]))
  box_h = jnp.clip(jnp.sqrt(area / ratio), 1.0, height)
  box_w = jnp.clip(jnp.sqrt(area * ratio), 1.0, width)
  top, left = jax.random.uniform(position_key, (2,)) * jnp.stack([height - box_h, width - box_w])
  scale = jnp.stack([height / box_h, width / box_w])
  # Output pixel y reads input y / scale + top: the box maps onto the whole output.
  return jax.image.scale_and_translate(
      image, image.shape, spatial_dims=(0, 1), scale=scale, translation=-scale * jnp.stack([top, left]),
      method='linear', antialias=True).astype(image.dtype)


def flip(rng, images):
  """Each image mirrored left-right with probability 1/2."""
  return _per_example(_flip_one)(rng, images)


def random_crop(rng, images, padding: int = 4, mode: str = 'reflect'):
  """Each image padded by `padding` (reflect or zero) and cropped back to its size at a random offset."""
  return _per_example(functools.partial(_crop_one, padding=padding, mode=mode))(rng, images)


def random_resized_crop(rng, images, min_scale: float = 0.08):
  """Each image replaced by a random box of it (area fraction >= min_scale) resized to the image's size."""
  return _per_example(functools.partial(_resized_crop_one, min_scale=min_scale))(rng, images)


def _then(*augments: Callable) -> Callable:
  """Applies batched augmentations in order, each with its own key."""
  def augment(rng, images):
    for key, step in zip(jax.random.split(rng, len(augments)), augments, strict=True):
      images = step(key, images)
    return images
  return augment


def _none(rng, images):
  del rng
  return images


def _crop(data_config) -> Callable:
  lookup(PAD_MODES, 'data.crop_pad_mode', data_config.crop_pad_mode)
  return functools.partial(random_crop, padding=data_config.crop_padding, mode=data_config.crop_pad_mode)


# data.augment -> data config -> augment(rng, images).
CONFIG_KEYS = ('augment', 'crop_padding', 'crop_pad_mode', 'crop_min_scale')  # What `build` reads.
AUGMENTS = {
    'none': lambda data_config: _none,
    'flip': lambda data_config: flip,
    'crop': _crop,
    'crop_flip': lambda data_config: _then(_crop(data_config), flip),
    # The ImageNet training recipe: a random resized crop, then a horizontal flip.
    'random_resized_crop': lambda data_config: _then(
        functools.partial(random_resized_crop, min_scale=data_config.crop_min_scale), flip),
}


def build(data_config) -> Callable:
  """`augment(rng, images) -> images` for `data.augment`; images are (batch, H, W, C)."""
  return lookup(AUGMENTS, 'data.augment', data_config.augment)(data_config)

"""U-Net (Ronneberger et al. 2015): per-pixel class logits (batch, H, W, num_classes).

The encoder halves the resolution per level and the decoder doubles it back; each decoder level also reads
the encoder's map of the same size (the skip connection), which carries the fine detail that the coarse
maps have lost, so object boundaries come out sharp.
"""

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxtrain.config import ConfigError
from jaxtrain.models import layers
from jaxtrain.models.blocks import Block


class UNet(nn.Module):
  """`features` are the channels per level, the last one the bottleneck; two conv blocks per level."""

  num_classes: int
  features: Sequence[int]
  kernel_init: Callable
  bias_init: Callable
  kernel_size: int = 3
  norm: str = 'none'
  activation: str = 'relu'
  dropout: float = 0.0
  spatial_dropout: bool = False
  pooling: str = 'max'
  dtype: Any = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    factor = 2 ** (len(self.features) - 1)
    if x.shape[1] % factor or x.shape[2] % factor:
      raise ConfigError(f'unet halves the image {len(self.features) - 1} times (model.features='
                        f'{tuple(self.features)}), so both sides must divide by {factor}; the image is '
                        f'{x.shape[1]}x{x.shape[2]}')
    block = functools.partial(Block, kernel_init=self.kernel_init, bias_init=self.bias_init,
                              kernel_size=self.kernel_size, norm=self.norm, activation=self.activation,
                              dropout=self.dropout, spatial_dropout=self.spatial_dropout, dtype=self.dtype)

    def level(x, channels: int):
      return block(channels)(block(channels)(x, train), train)

    skips = []
    for channels in self.features[:-1]:
      x = level(x, channels)
      skips.append(x)
      x = layers.POOLINGS[self.pooling](x, (2, 2), strides=(2, 2))
    x = level(x, self.features[-1])
    for channels, skip in zip(reversed(self.features[:-1]), reversed(skips), strict=True):
      x = nn.ConvTranspose(channels, (2, 2), strides=(2, 2), kernel_init=self.kernel_init,
                           bias_init=self.bias_init, dtype=self.dtype)(x)
      x = level(jnp.concatenate([skip, x], axis=-1), channels)
    return nn.Conv(self.num_classes, (1, 1), kernel_init=self.kernel_init, bias_init=self.bias_init,
                   dtype=self.dtype, name='head')(x).astype(jnp.float32)

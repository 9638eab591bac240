"""The core zoo: an MLP and a LeNet/VGG-style CNN, both built from `Block`s with the layer options by name."""

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxtrain.models import layers
from jaxtrain.models.blocks import Block


class MLP(nn.Module):
  """Flatten -> [Dense -> norm -> act -> dropout] per width in `features` -> Dense(num_classes)."""

  num_classes: int
  features: Sequence[int]
  kernel_init: Callable
  bias_init: Callable
  activation: str = 'relu'
  norm: str = 'none'
  dropout: float = 0.0
  dtype: Any = None  # Compute dtype; parameters and logits are float32.

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = x.reshape(x.shape[0], -1)
    for width in self.features:
      x = Block(width, self.kernel_init, self.bias_init, norm=self.norm,
                activation=self.activation, dropout=self.dropout, dtype=self.dtype)(x, train)
    return nn.Dense(self.num_classes, kernel_init=self.kernel_init, bias_init=self.bias_init,
                    dtype=self.dtype, name='head')(x).astype(jnp.float32)


class CNN(nn.Module):
  """Per stage conv blocks and a 2x2 pooling; then head pooling, dense blocks, classifier.

  One conv per stage is LeNet; VGG is the same plan with 2-4 convs per stage (`stage_depths`).
  """

  num_classes: int
  features: Sequence[int]
  kernel_init: Callable
  bias_init: Callable
  head_features: Sequence[int] = ()
  kernel_size: int = 3
  activation: str = 'relu'
  norm: str = 'none'
  dropout: float = 0.0
  spatial_dropout: bool = False
  pooling: str = 'max'
  head_pooling: str = 'flatten'
  stage_depths: Sequence[int] | None = None  # Convs per stage; None: one each.
  dtype: Any = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    pool = layers.POOLINGS[self.pooling]
    depths = self.stage_depths or (1,) * len(self.features)
    for channels, depth in zip(self.features, depths, strict=True):
      for _ in range(depth):
        x = Block(channels, self.kernel_init, self.bias_init, kernel_size=self.kernel_size,
                  norm=self.norm, activation=self.activation, dropout=self.dropout,
                  spatial_dropout=self.spatial_dropout, dtype=self.dtype)(x, train)
      if min(x.shape[1:3]) >= 2:  # Small inputs (8x8 digits) stop shrinking at 1x1.
        x = pool(x, (2, 2), strides=(2, 2))
    x = layers.pool_head(self.head_pooling, x)
    for width in self.head_features:
      x = Block(width, self.kernel_init, self.bias_init, norm=self.norm,
                activation=self.activation, dropout=self.dropout, dtype=self.dtype)(x, train)
    return nn.Dense(self.num_classes, kernel_init=self.kernel_init, bias_init=self.bias_init,
                    dtype=self.dtype, name='head')(x).astype(jnp.float32)

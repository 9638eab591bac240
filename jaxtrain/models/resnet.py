"""ResNets (He et al. 2015, torchvision's v1.5 layout: a bottleneck strides in its 3x3 conv).

The stem follows the input: CIFAR-sized images keep their resolution (3x3 conv, no pooling); ImageNet-sized
ones are reduced 4x at once (7x7/2 conv and 3x3/2 max pooling), which on a 32x32 image would leave 8x8
before the first block. 'auto' decides from the image side when the model is first applied.
"""

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxtrain.models import layers

STEMS = ('auto', 'cifar', 'imagenet')
AUTO_IMAGENET_SIDE = 64  # 'auto' picks the ImageNet stem from this image side on.


class ConvNorm(nn.Module):
  """Conv (symmetric padding k//2, as in the papers) -> norm; the bias only when there is no norm.

  `zero_init` starts the layer at zero output: the norm's scale is zero, or without a norm the kernel.
  """

  features: int
  kernel_size: int
  kernel_init: Callable
  bias_init: Callable
  strides: int = 1
  norm: str = 'batch'
  zero_init: bool = False
  dtype: Any = None

  @nn.compact
  def __call__(self, x, train: bool):
    pad = self.kernel_size // 2
    zero_kernel = self.zero_init and self.norm == 'none'
    x = nn.Conv(self.features, (self.kernel_size,) * 2, strides=self.strides, padding=[(pad, pad)] * 2,
                use_bias=self.norm == 'none', dtype=self.dtype,
                kernel_init=nn.initializers.zeros if zero_kernel else self.kernel_init,
                bias_init=self.bias_init)(x)
    extra = {'scale_init': nn.initializers.zeros} if self.zero_init else {}
    norm = layers.normalization(self.norm, train, dtype=self.dtype, **extra)
    return x if norm is None else norm(x)


class ResidualBlock(nn.Module):
  """Basic (two 3x3 convs) or bottleneck (1x1 down, 3x3, 1x1 up by 4) branch plus a shortcut, then act.

  The shortcut is a strided 1x1 conv + norm when the shape changes, else the identity.
  """

  features: int
  kernel_init: Callable
  bias_init: Callable
  bottleneck: bool = False
  strides: int = 1
  norm: str = 'batch'
  activation: str = 'relu'
  zero_init_residual: bool = False
  dtype: Any = None

  @nn.compact
  def __call__(self, x, train: bool):
    conv = dict(kernel_init=self.kernel_init, bias_init=self.bias_init, norm=self.norm, dtype=self.dtype)
    if self.bottleneck:
      plan = [(self.features, 1, 1), (self.features, 3, self.strides), (4 * self.features, 1, 1)]
    else:
      plan = [(self.features, 3, self.strides), (self.features, 3, 1)]
    y = x
    for index, (features, kernel_size, strides) in enumerate(plan):
      last = index == len(plan) - 1
      y = ConvNorm(features, kernel_size, strides=strides, zero_init=last and self.zero_init_residual,
                   **conv)(y, train)
      if not last:
        y = layers.Activation(self.activation)(y)
    if x.shape != y.shape:
      x = ConvNorm(y.shape[-1], 1, strides=self.strides, name='shortcut', **conv)(x, train)
    return layers.Activation(self.activation)(x + y)


class ResNet(nn.Module):
  """Stem -> 4 stages of residual blocks (width doubling, stride 2 from the second) -> avg pool -> dropout
  -> dense."""

  num_classes: int
  stage_depths: Sequence[int]
  kernel_init: Callable
  bias_init: Callable
  bottleneck: bool = False
  width: int = 64
  stem: str = 'auto'
  norm: str = 'batch'
  activation: str = 'relu'
  dropout: float = 0.0
  zero_init_residual: bool = False
  dtype: Any = None
  remat: str = 'none'  # model.remat, on each residual block (layers.remat).

  @nn.compact
  def __call__(self, x, train: bool = False):
    imagenet = self.stem == 'imagenet' or (self.stem == 'auto' and min(x.shape[1:3]) >= AUTO_IMAGENET_SIDE)
    conv = dict(kernel_init=self.kernel_init, bias_init=self.bias_init, norm=self.norm, dtype=self.dtype)
    x = ConvNorm(self.width, 7 if imagenet else 3, strides=2 if imagenet else 1, name='stem', **conv)(
        x, train)
    x = layers.Activation(self.activation)(x)
    if imagenet:
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    block = layers.remat(ResidualBlock, self.remat, train_argnum=2)
    for stage, depth in enumerate(self.stage_depths):
      for index in range(depth):
        # Named as Flax would name them without remat, so parameter paths do not depend on it.
        x = block(self.width * 2 ** stage, bottleneck=self.bottleneck,
                  strides=2 if stage > 0 and index == 0 else 1, activation=self.activation,
                  zero_init_residual=self.zero_init_residual,
                  name=f'ResidualBlock_{sum(self.stage_depths[:stage]) + index}', **conv)(x, train)
    x = x.mean(axis=(1, 2))
    if self.dropout > 0:
      x = layers.Dropout(self.dropout, deterministic=not train)(x)
    return nn.Dense(self.num_classes, kernel_init=self.kernel_init, bias_init=self.bias_init,
                    dtype=self.dtype, name='head')(x).astype(jnp.float32)


# name -> (blocks per stage, bottleneck).
RESNETS = {
    'resnet18': ((2, 2, 2, 2), False),
    'resnet34': ((3, 4, 6, 3), False),
    'resnet50': ((3, 4, 6, 3), True),
}

"""The block every model is made of: dense/conv -> norm -> activation -> dropout (note 004's order)."""

from collections.abc import Callable
from typing import Any

import flax.linen as nn

from jaxtrain.models import layers


class Block(nn.Module):
  """A Dense layer (kernel_size=0) or a same-padded Conv, then norm, activation and (spatial) dropout.

  `dtype` is the compute dtype (None: float32); parameters are float32 either way.
  """

  features: int
  kernel_init: Callable
  bias_init: Callable
  kernel_size: int = 0
  norm: str = 'none'
  activation: str = 'relu'
  dropout: float = 0.0
  spatial_dropout: bool = False
  dtype: Any = None

  @nn.compact
  def __call__(self, x, train: bool):
    # A norm that follows the layer makes its bias redundant.
    use_bias = self.norm == 'none'
    if self.kernel_size:
      x = nn.Conv(self.features, (self.kernel_size, self.kernel_size), use_bias=use_bias,
                  kernel_init=self.kernel_init, bias_init=self.bias_init, dtype=self.dtype)(x)
    else:
      x = nn.Dense(self.features, use_bias=use_bias, kernel_init=self.kernel_init,
                   bias_init=self.bias_init, dtype=self.dtype)(x)
    norm = layers.normalization(self.norm, train, dtype=self.dtype)
    if norm is not None:
      x = norm(x)
    x = layers.Activation(self.activation)(x)
    if self.dropout > 0:
      # Spatial dropout zeroes whole feature maps: neighbouring pixels are too correlated for unit dropout.
      broadcast = (1, 2) if self.spatial_dropout and x.ndim == 4 else ()
      x = layers.Dropout(self.dropout, broadcast_dims=broadcast, deterministic=not train)(x)
    return x

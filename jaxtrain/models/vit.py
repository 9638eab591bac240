"""Vision Transformer (Dosovitskiy et al. 2020): patches -> tokens -> pre-norm encoder -> pooled -> dense.

Pre-norm (LayerNorm before attention and MLP, a final LayerNorm after the last block) keeps the residual
path an identity, which is what lets deep transformers train without warmup tricks; LayerNorm is part of
the architecture, so `model.norm` does not apply here.
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxtrain.config import ConfigError
from jaxtrain.models import layers

# How the tokens become one vector: the class token's final state, their mean, or a learned weighting.
POOLINGS = ('token', 'avg', 'attention')


class EncoderBlock(nn.Module):
  """x + attention(LN(x)), then x + MLP(LN(x)); dropout on each branch's output."""

  num_heads: int
  mlp_dim: int
  kernel_init: Callable
  bias_init: Callable
  activation: str = 'gelu'
  dropout: float = 0.0
  dtype: Any = None

  @nn.compact
  def __call__(self, x, train: bool):
    dense = dict(kernel_init=self.kernel_init, bias_init=self.bias_init, dtype=self.dtype)
    y = nn.LayerNorm(dtype=self.dtype)(x)
    # The softmax runs in float32 even in bf16: its sums over many tokens lose too much in 8 mantissa bits.
    y = nn.MultiHeadDotProductAttention(self.num_heads, force_fp32_for_softmax=True, **dense)(y)
    x = x + layers.Dropout(self.dropout, deterministic=not train)(y)
    y = nn.LayerNorm(dtype=self.dtype)(x)
    y = nn.Dense(self.mlp_dim, **dense)(y)
    y = layers.Activation(self.activation)(y)
    y = layers.Dropout(self.dropout, deterministic=not train)(y)
    y = nn.Dense(x.shape[-1], **dense)(y)
    return x + layers.Dropout(self.dropout, deterministic=not train)(y)


# Tensor parallelism (parallel.mesh.model, Megatron-style): attention split by heads (query, key and value by
# their head axis, the output projection by its head rows) and the MLP's first kernel by columns, its second
# by rows.
MODEL_AXIS_RULES = (
    (r'(query|key|value)/kernel$', (None, 'model', None)), (r'(query|key|value)/bias$', ('model', None)),
    (r'MultiHeadDotProductAttention_\d+/out/kernel$', ('model', None, None)),
    (r'EncoderBlock_\d+/Dense_0/kernel$', (None, 'model')), (r'EncoderBlock_\d+/Dense_0/bias$', ('model',)),
    (r'EncoderBlock_\d+/Dense_1/kernel$', ('model', None)),
)


class ViT(nn.Module):
  """ViT-B/16 is width=768, num_layers=12, num_heads=12, mlp_dim=3072, patch_size=16, pooling='token'."""

  num_classes: int
  kernel_init: Callable
  bias_init: Callable
  patch_size: int = 4
  width: int = 64
  num_layers: int = 4
  num_heads: int = 4
  mlp_dim: int = 256
  activation: str = 'gelu'
  dropout: float = 0.0
  pooling: str = 'token'
  dtype: Any = None
  remat: str = 'none'  # model.remat, on each encoder block (layers.remat).

  @nn.compact
  def __call__(self, x, train: bool = False):
    height, width = x.shape[1:3]
    if height % self.patch_size or width % self.patch_size:
      raise ConfigError(f'model.patch_size={self.patch_size} does not divide the image size '
                        f'{height}x{width}; choose a divisor of both sides')
    dense = dict(kernel_init=self.kernel_init, bias_init=self.bias_init, dtype=self.dtype)
    # A strided conv with kernel = stride = patch is the linear projection of each flattened patch.
    x = nn.Conv(self.width, (self.patch_size,) * 2, strides=self.patch_size, padding='VALID',
                name='embedding', **dense)(x)
    x = x.reshape(x.shape[0], -1, self.width)
    if self.pooling == 'token':
      token = self.param('cls', nn.initializers.zeros, (1, 1, self.width))
      x = jnp.concatenate([jnp.broadcast_to(token.astype(x.dtype), (x.shape[0], 1, self.width)), x], 1)
    position = self.param('pos_embedding', nn.initializers.normal(0.02), (1, *x.shape[1:]))
    x = layers.Dropout(self.dropout, deterministic=not train)(x + position.astype(x.dtype))
    block = layers.remat(EncoderBlock, self.remat, train_argnum=2)
    for i in range(self.num_layers):
      x = block(self.num_heads, self.mlp_dim, activation=self.activation, dropout=self.dropout,
                name=f'EncoderBlock_{i}', **dense)(x, train)
    x = nn.LayerNorm(dtype=self.dtype, name='encoder_norm')(x)
    if self.pooling == 'token':
      x = x[:, 0]
    elif self.pooling == 'avg':
      x = x.mean(axis=1)
    else:
      x = layers.AttentionPool()(x)
    return nn.Dense(self.num_classes, name='head', **dense)(x).astype(jnp.float32)

"""A decoder-only Transformer (GPT-2, Radford et al. 2019): tokens -> pre-norm causal blocks -> logits.

Training sequences are packed: several documents share one row, `segments` says which document each token
belongs to (0 = padding) and `positions` restarts at 0 with each document. The attention mask keeps every
token inside its own document, so packing changes the speed of training but not what the model learns.

With `decode=True` the blocks keep the keys and values of the tokens seen so far (the 'cache' collection,
as flax's MultiHeadDotProductAttention does), so generating a token attends to the cache instead of
recomputing the whole prefix; see jaxtrain/generation.py.
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxtrain.config import ConfigError, lookup
from jaxtrain.models import layers

# 'learned': a table of max_len position vectors added to the embeddings (GPT-2). 'rotary': RoPE (Su et al.
# 2021) rotates each head's queries and keys by their positions, so attention sees only relative offsets.
POSITIONS = ('learned', 'rotary')
ROTARY_BASE = 10_000.0


def rotate(x, positions):
  """RoPE on (batch, T, heads, head_dim) in float32: pairs (i, i + head_dim/2) turn by position * freq_i.

  Computed in float32 whatever x's dtype: in bf16 the angles of positions in the hundreds lose whole radians.
  """
  half = x.shape[-1] // 2
  freqs = ROTARY_BASE ** (-jnp.arange(half, dtype=jnp.float32) / half)
  angles = positions[..., None, None].astype(jnp.float32) * freqs  # (batch, T, 1, half)
  sin, cos = jnp.sin(angles), jnp.cos(angles)
  first, second = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  return jnp.concatenate([first * cos - second * sin, second * cos + first * sin], -1).astype(x.dtype)


class CausalSelfAttention(nn.Module):
  """Multi-head self-attention with GPT-2's parameters: one fused qkv Dense and an output Dense.

  `mask` (batch, 1, T, keys) says which keys each query sees; the caller builds it, since only the whole
  model knows the segments and, when decoding, the cache index. With `decode`, the keys and values are
  written at `cache_index` into a max_len-long cache and the queries attend to the whole cache.
  """

  num_heads: int
  kernel_init: Callable
  bias_init: Callable
  max_len: int = 256
  rotary: bool = False
  dtype: Any = None
  decode: bool = False

  @nn.compact
  def __call__(self, x, mask, positions, cache_index=None):
    batch, length, width = x.shape
    head_dim = width // self.num_heads
    dense = dict(kernel_init=self.kernel_init, bias_init=self.bias_init, dtype=self.dtype)
    qkv = nn.Dense(3 * width, name='qkv', **dense)(x).reshape(batch, length, 3, self.num_heads, head_dim)
    query, key, value = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    if self.rotary:
      query, key = rotate(query, positions), rotate(key, positions)
    if self.decode:
      # The cache is allocated at max_len whatever the tokens `init` saw, so one init serves any prompt.
      shape = (batch, self.max_len, self.num_heads, head_dim)
      cached_key = self.variable('cache', 'cached_key', jnp.zeros, shape, key.dtype)
      cached_value = self.variable('cache', 'cached_value', jnp.zeros, shape, value.dtype)
      if cache_index is not None:
        start = (0, cache_index, 0, 0)
        key = cached_key.value = jax.lax.dynamic_update_slice(cached_key.value, key, start)
        value = cached_value.value = jax.lax.dynamic_update_slice(cached_value.value, value, start)
    # The fused API computes the logits and their softmax in float32 even for bf16 inputs: sums over many
    # tokens lose too much in 8 mantissa bits.
    y = jax.nn.dot_product_attention(query, key, value, mask=mask)
    return nn.Dense(width, name='out', **dense)(y.reshape(batch, length, width))


class FeedForward(nn.Module):
  """Dense(mlp_dim) -> activation -> Dense(width): the per-token half of a block."""

  mlp_dim: int
  kernel_init: Callable
  bias_init: Callable
  activation: str = 'gelu'
  dtype: Any = None

  @nn.compact
  def __call__(self, x):
    dense = dict(kernel_init=self.kernel_init, bias_init=self.bias_init, dtype=self.dtype)
    y = layers.Activation(self.activation)(nn.Dense(self.mlp_dim, name='fc', **dense)(x))
    return nn.Dense(x.shape[-1], name='proj', **dense)(y)


class Block(nn.Module):
  """x + attention(LN(x)), then x + MLP(LN(x)); dropout on each branch's output (GPT-2's resid_pdrop)."""

  num_heads: int
  mlp_dim: int
  kernel_init: Callable
  bias_init: Callable
  max_len: int = 256
  activation: str = 'gelu'
  dropout: float = 0.0
  rotary: bool = False
  dtype: Any = None
  decode: bool = False

  @nn.compact
  def __call__(self, x, mask, positions, cache_index, train: bool):
    inits = dict(kernel_init=self.kernel_init, bias_init=self.bias_init, dtype=self.dtype)
    y = nn.LayerNorm(dtype=self.dtype, name='ln_1')(x)
    y = CausalSelfAttention(self.num_heads, max_len=self.max_len, rotary=self.rotary, decode=self.decode,
                            name='attention', **inits)(y, mask, positions, cache_index)
    x = x + layers.Dropout(self.dropout, deterministic=not train)(y)
    y = nn.LayerNorm(dtype=self.dtype, name='ln_2')(x)
    y = FeedForward(self.mlp_dim, activation=self.activation, name='mlp', **inits)(y)
    return x + layers.Dropout(self.dropout, deterministic=not train)(y)


# Tensor parallelism (parallel.mesh.model, Megatron-style): the first matmul of attention and of the MLP split
# by columns over the 'model' axis, the second by rows, so each block needs one all-reduce per pair.
MODEL_AXIS_RULES = (
    (r'attention/qkv/kernel$', (None, 'model')), (r'attention/qkv/bias$', ('model',)),
    (r'attention/out/kernel$', ('model', None)),
    (r'mlp/fc/kernel$', (None, 'model')), (r'mlp/fc/bias$', ('model',)),
    (r'mlp/proj/kernel$', ('model', None)),
)


class GPT(nn.Module):
  """GPT-2 small is num_classes=50257, max_len=1024, width=768, num_layers=12, num_heads=12, mlp_dim=3072.

  `num_classes` is the vocabulary size: the zoo passes every model its number of outputs under that name.
  With `tie_embeddings` the logits are the final states dotted with the token embeddings, as in GPT-2: it
  saves a vocabulary-sized matrix (38.6M parameters, a quarter of the untied small model), and rare tokens'
  embeddings learn from every prediction, not only from the few times they are the input.

  Decoding: `init` with decode=True (on tokens of any length up to max_len) returns, besides the params,
  an empty 'cache': zeros, with `cache_index` 0. Each `apply(..., mutable=['cache'])` then takes the next
  chunk of tokens (the prompt, then one token per step), writes their keys and values at `cache_index`,
  lets them attend to the cached tokens before them and advances the index. Nothing stops a chunk from
  running past max_len inside jit (the writes would clamp): the caller checks, as generation.sample does.
  """

  num_classes: int
  kernel_init: Callable
  bias_init: Callable
  max_len: int = 256
  width: int = 128
  num_layers: int = 4
  num_heads: int = 4
  mlp_dim: int = 512
  activation: str = 'gelu'
  dropout: float = 0.0
  positions: str = 'learned'
  tie_embeddings: bool = True
  dtype: Any = None
  decode: bool = False
  remat: str = 'none'  # model.remat, on each block (layers.remat); decoding never differentiates.

  @nn.compact
  def __call__(self, tokens, segments=None, positions=None, train: bool = False):
    """tokens, segments, positions: int (batch, T) -> float32 logits (batch, T, num_classes).

    segments: each token's document (> 0), 0 for padding; None: one document per row. positions: each
    token's place in its document; None: 0..T-1, or when decoding the cache index onwards.
    """
    batch, length = tokens.shape
    self._check(length)
    rotary = self.positions == 'rotary'
    if segments is None:
      segments = jnp.ones((batch, length), jnp.int32)
    # The first `init` with decode=True creates the cache and runs as a plain forward pass; later calls
    # find it and attend to it.
    cached = self.decode and self.has_variable('cache', 'cache_index')
    cache_index = None
    if self.decode:
      index = self.variable('cache', 'cache_index', lambda: jnp.array(0, jnp.int32))
      # The cached tokens' documents, 0 where nothing is written yet: the mask then needs no other test.
      cached_segments = self.variable('cache', 'cached_segments', jnp.zeros, (batch, self.max_len),
                                      jnp.int32)
    if cached:
      cache_index = index.value
      query_slots = cache_index + jnp.arange(length)
      key_slots = jnp.arange(self.max_len)
      key_segments = cached_segments.value = jax.lax.dynamic_update_slice(
          cached_segments.value, segments.astype(jnp.int32), (0, cache_index))
      index.value = cache_index + length
    else:
      query_slots = key_slots = jnp.arange(length)
      key_segments = segments
    if positions is None:
      positions = jnp.broadcast_to(query_slots, (batch, length))
    # Causal, within one document, and never a padding key (a padding query then sees no key at all: its
    # output is an average of whatever, and its logits are not trained).
    mask = ((key_slots[None, None, :] <= query_slots[None, :, None])
            & (key_segments[:, None, :] == segments[:, :, None]) & (key_segments[:, None, :] != 0))
    mask = mask[:, None]  # One mask for all heads.

    embed = nn.Embed(self.num_classes, self.width, embedding_init=nn.initializers.normal(0.02),
                     dtype=self.dtype, name='embed')
    x = embed(tokens)
    if not rotary:
      table = self.param('pos_embedding', nn.initializers.normal(0.02), (self.max_len, self.width))
      x = x + jnp.take(table, positions, axis=0).astype(x.dtype)
    x = layers.Dropout(self.dropout, deterministic=not train)(x)
    block = layers.remat(Block, 'none' if self.decode else self.remat, train_argnum=5)
    for i in range(self.num_layers):
      x = block(self.num_heads, self.mlp_dim, kernel_init=self.kernel_init, bias_init=self.bias_init,
            max_len=self.max_len, activation=self.activation, dropout=self.dropout, rotary=rotary,
            dtype=self.dtype, decode=self.decode, name=f'block_{i}')(
                    x, mask, positions if rotary else None, cache_index, train)
    x = nn.LayerNorm(dtype=self.dtype, name='ln_final')(x)
    if self.tie_embeddings:
      logits = embed.attend(x)
    else:
      logits = nn.Dense(self.num_classes, kernel_init=self.kernel_init, bias_init=self.bias_init,
                        dtype=self.dtype, name='head')(x)
    return logits.astype(jnp.float32)

  def _check(self, length: int) -> None:
    lookup(POSITIONS, 'model.positions', self.positions)
    if length > self.max_len:
      raise ConfigError(f'the sequences have {length} tokens but model.max_len={self.max_len}; raise '
                        'model.max_len to at least data.seq_len')
    if self.width % self.num_heads:
      raise ConfigError(f'model.width={self.width} must divide by model.num_heads={self.num_heads}: '
                        'each head attends with width / num_heads features')
    if self.positions == 'rotary' and (self.width // self.num_heads) % 2:
      raise ConfigError(f"model.positions='rotary' turns pairs of features, but each head has an odd "
                        f'{self.width // self.num_heads} (model.width / model.num_heads)')

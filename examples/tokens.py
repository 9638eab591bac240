"""A user's own model, data and loss, outside the jaxtrain package: token sequences classified by an NNX
model, named from a config by import path (configs/tokens_nnx.py) or passed to `jaxtrain.fit` as objects.

The task: each sequence holds 12 token ids from a vocabulary of 32; its label is the residue (token % 3)
that occurs most often. An embedding averaged over the sequence sees the counts, so the task is learnable
but not trivially: chance accuracy is about 1/3.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import jaxtrain

VOCAB, LENGTH, CLASSES = 32, 12, 3


class TokenNet(nnx.Module):
  """Embed -> mean over the sequence -> dropout -> Linear -> BatchNorm -> relu -> Linear."""

  def __init__(self, vocab: int = VOCAB, width: int = 32, num_classes: int = CLASSES, dropout: float = 0.1, *,
               rngs: nnx.Rngs):
    self.embed = nnx.Embed(vocab, width, rngs=rngs)
    self.dropout = nnx.Dropout(dropout, rngs=rngs)
    self.hidden = nnx.Linear(width, width, rngs=rngs)
    self.norm = nnx.BatchNorm(width, rngs=rngs)
    self.head = nnx.Linear(width, num_classes, rngs=rngs)

  def __call__(self, tokens):
    x = self.dropout(self.embed(tokens).mean(axis=1))
    return self.head(nnx.relu(self.norm(self.hidden(x))))


def make(num_examples: int, seed: int) -> dict:
  """{'tokens': int32 (n, 12), 'label': int32 (n,)}: the majority residue class of each sequence."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, VOCAB, size=(num_examples, LENGTH))
  counts = np.stack([(tokens % CLASSES == c).sum(axis=1) for c in range(CLASSES)], axis=1)
  counts = counts + rng.uniform(0, 0.5, counts.shape)  # Ties broken at random.
  return {'tokens': tokens.astype(np.int32), 'label': counts.argmax(axis=1).astype(np.int32)}


def load() -> jaxtrain.data.Arrays:
  """The data object `data.name='examples.tokens:load'` names: 2,048 train, 512 eval and 512 test."""
  return jaxtrain.data.Arrays(train=make(2048, 0), eval=make(512, 1), test=make(512, 2))


def focal_loss(logits, batch, gamma: float = 2.0):
  """Focal loss (Lin et al. 2017), one value per example: cross-entropy down-weighted where confident."""
  log_p = jnp.take_along_axis(jax.nn.log_softmax(logits), batch['label'][:, None], axis=1)[:, 0]
  return -((1 - jnp.exp(log_p)) ** gamma) * log_p


def accuracy(logits, batch):
  return {'accuracy': (logits.argmax(-1) == batch['label']).astype(jnp.float32),
          'cross_entropy': optax.softmax_cross_entropy_with_integer_labels(logits, batch['label'])}


FOCAL = jaxtrain.Task(loss=focal_loss, metrics=accuracy)

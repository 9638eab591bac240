"""Text from a trained language model (`generate`, --mode generate), and the sampler under it: prefill the
prompt into the KV cache, then one jitted loop of one-token steps.

Without a cache each new token reruns the model over the whole sequence, O(T^2) work per token and O(T^3)
for a generation; with one, a step computes the new token's keys and values only and attends to the cached
ones, O(T) per token. The whole generation (prefill and loop) is one jitted function, compiled once per
prompt length, max_tokens, greedy-or-not and top_k; the params, seed, temperature and eos are traced.
"""

import functools
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxtrain import build
from jaxtrain.config import ConfigError
from jaxtrain.data import tokenization
from jaxtrain.models.gpt import GPT

# Applying a model never calls its initializers, but they are fields, and jit tells models apart by their
# fields: a model rebuilt from the same config has new initializer closures and would compile again. The
# sampler swaps them for this one function, so equal architectures share one compiled sampler.
_UNUSED_INIT = nn.initializers.zeros


def generate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, prompt: str | None = None, *,
             max_tokens: int | None = None, temperature: float | None = None, top_k: int | None = None,
             seed: int | None = None) -> str:
  """The text the language model trained in `workdir` writes after `prompt` (default: the `generate.*`
  config keys; seed: the run's). Temperature 0 is greedy and deterministic. Reads the newest checkpoint,
  with the moving average of the parameters when the run keeps one (optim.ema_decay); writes nothing."""
  c = config.generate
  exp = build.prepare(config, pathlib.Path(workdir))
  module = exp.program.model.module
  if not isinstance(module, GPT):
    raise ConfigError(f"--mode generate needs a language model (model.name='gpt'), not "
                      f'model.name={config.model.name!r}')
  tokenizer = tokenization.tokenizer(config.data.tokenizer)
  prompt = c.prompt if prompt is None else prompt
  ids = np.asarray(tokenizer.encode(prompt), np.int32) if prompt else np.asarray([tokenizer.eos_id], np.int32)
  state, _ = build.trained_state(exp, pathlib.Path(workdir))
  params = state.ema if config.optim.ema_decay and config.optim.ema_eval else state.params
  tokens = sample(module, params, ids, max_tokens=c.max_tokens if max_tokens is None else max_tokens,
                  temperature=c.temperature if temperature is None else temperature,
                  top_k=c.top_k if top_k is None else top_k, seed=config.seed if seed is None else seed,
                  eos_id=tokenizer.eos_id)
  return tokenizer.decode(tokens)


def sample(model: GPT, params, prompt: np.ndarray, *, max_tokens: int, temperature: float = 1.0,
           top_k: int = 0, seed: int = 0, eos_id: int | None = None) -> np.ndarray:
  """The int32 ids that follow `prompt` (1-D ints): max_tokens of them, or up to and with the first eos_id.

  `params` is the 'params' collection of `model` (a decode=False model: the sampler makes its decoding
  clone). temperature 0 is greedy (argmax, no randomness); top_k > 0 samples among the k most likely tokens
  only. Token i is drawn with fold_in(PRNGKey(seed), i): the same seed gives the same text.
  """
  prompt = np.asarray(prompt)
  if prompt.ndim != 1 or prompt.size == 0:
    raise ConfigError(f'the prompt must be a non-empty 1-D array of token ids, not of shape {prompt.shape}')
  if max_tokens < 0 or temperature < 0 or not 0 <= top_k <= model.num_classes:
    raise ConfigError(f'max_tokens={max_tokens} and temperature={temperature} must be >= 0 and '
                      f'top_k={top_k} in [0, {model.num_classes}] (0: no top-k)')
  if prompt.size + max_tokens > model.max_len:
    raise ConfigError(f'the prompt has {prompt.size} tokens and max_tokens={max_tokens}: '
                      f'{prompt.size + max_tokens} > model.max_len={model.max_len}; shorten the prompt, '
                      'lower max_tokens or use a model with a longer max_len')
  if max_tokens == 0:
    return np.zeros(0, np.int32)
  decoder = model.clone(decode=True, dropout=0.0, kernel_init=_UNUSED_INIT, bias_init=_UNUSED_INIT)
  tokens = np.asarray(_generate(decoder, params, jnp.asarray(prompt, jnp.int32), int(max_tokens),
                                temperature == 0, int(top_k), jnp.float32(max(temperature, 1e-6)),
                                jax.random.PRNGKey(seed), jnp.int32(-1 if eos_id is None else eos_id)))
  if eos_id is not None and (hits := np.flatnonzero(tokens == eos_id)).size:
    tokens = tokens[:hits[0] + 1]
  return tokens


def _pick(logits, key, greedy: bool, top_k: int, temperature):
  """The next token from float32 logits (num_classes,)."""
  if greedy:
    return jnp.argmax(logits).astype(jnp.int32)
  if top_k:
    kth = jax.lax.top_k(logits, top_k)[0][-1]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  return jax.random.categorical(key, logits / temperature).astype(jnp.int32)


@functools.partial(jax.jit, static_argnums=(0, 3, 4, 5))
def _generate(decoder: GPT, params, prompt, max_tokens: int, greedy: bool, top_k: int, temperature, root,
              eos_id):
  """max_tokens ids after `prompt`; once eos_id is drawn the loop stops and the rest stays eos_id."""
  # The empty cache is all zeros (cache_index 0, no segments written): its shapes are enough, and
  # eval_shape finds them without initializing any parameter.
  shapes = jax.eval_shape(decoder.init, jax.random.PRNGKey(0), jnp.zeros((1, 1), jnp.int32))['cache']
  cache = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

  def step(cache, tokens, i):
    logits, variables = decoder.apply({'params': params, 'cache': cache}, tokens[None], mutable=['cache'])
    token = _pick(logits[0, -1], jax.random.fold_in(root, i), greedy, top_k, temperature)
    return variables['cache'], token

  cache, token = step(cache, prompt, 0)  # Prefill: the whole prompt in one call.
  out = jnp.full((max_tokens,), eos_id, jnp.int32).at[0].set(token)

  def cond(state):
    i, _, _, _, done = state
    return (i < max_tokens) & ~done

  def body(state):
    i, token, cache, out, _ = state
    cache, token = step(cache, token[None], i)
    return i + 1, token, cache, out.at[i].set(token), token == eos_id

  state = (jnp.int32(1), token, cache, out, token == eos_id)
  return jax.lax.while_loop(cond, body, state)[3]

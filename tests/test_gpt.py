"""The GPT model and its sampler: GPT-2's parameter count, causality, packed documents, the KV cache.

Models are tiny (width 32, two blocks), built once per kind of positions and applied through one cached jit
per model, at shapes the tests share: compiling, not computing, is what costs here. The parameter count of
GPT-2 small is found by eval_shape alone.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtrain import generation
from jaxtrain.config import ConfigError
from jaxtrain.models import layers
from jaxtrain.models.gpt import GPT

VOCAB, MAX_LEN, BATCH, LENGTH = 61, 32, 2, 12
PROMPT, NEW = 4, 8  # Every sampling test: a prompt of 4 tokens and 8 new ones, one compile per sampler.


def gpt(**overrides) -> GPT:
  # Wide initializers: logits that differ by more than rounding, so argmaxes do not tie.
  options = dict(num_classes=VOCAB, kernel_init=layers.initializer('normal(0.2)', 'model.kernel_init'),
                 bias_init=layers.bias_initializer('normal(0.1)'), max_len=MAX_LEN, width=32, num_layers=2,
                 num_heads=4, mlp_dim=64)
  return GPT(**{**options, **overrides})


@functools.cache
def built(positions: str = 'learned'):
  model = gpt(positions=positions)
  return model, jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, LENGTH), jnp.int32))['params']


@functools.cache
def jitted_apply(model: GPT):
  return jax.jit(model.apply, static_argnames='train')


def forward(model, params, *args, **kwargs) -> np.ndarray:
  return np.asarray(jitted_apply(model)({'params': params}, *args, **kwargs))


@functools.cache
def jitted_decode(model: GPT):
  """(params, cache, tokens, [segments, positions]) -> (logits, {'cache': the advanced cache})."""
  decoder = model.clone(decode=True)
  return jax.jit(lambda params, cache, *chunk: decoder.apply({'params': params, 'cache': cache}, *chunk,
                                                              mutable=['cache']))


def empty_cache(model: GPT, batch: int):
  """The cache `init` returns (test_init_returns_an_empty_cache), from shapes alone: nothing to compile."""
  shapes = jax.eval_shape(model.clone(decode=True).init, jax.random.PRNGKey(0), jnp.zeros((batch, 1), int))
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes['cache'])


def tokens(seed: int, shape=(BATCH, LENGTH)) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, VOCAB, shape).astype(np.int32)


@pytest.fixture(params=['learned', 'rotary'])
def model_and_params(request):
  return built(request.param)


def test_gpt2_small_has_124m_parameters():
  model = GPT(num_classes=50257, kernel_init=layers.initializer('normal(0.02)', 'model.kernel_init'),
              bias_init=layers.bias_initializer('zeros'), max_len=1024, width=768, num_layers=12,
              num_heads=12, mlp_dim=3072, tie_embeddings=True, positions='learned')
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))['params']
  assert sum(leaf.size for leaf in jax.tree.leaves(shapes)) == 124_439_808
  assert set(shapes) == {'embed', 'pos_embedding', 'ln_final', *(f'block_{i}' for i in range(12))}
  block = shapes['block_0']
  assert set(block) == {'ln_1', 'attention', 'ln_2', 'mlp'}
  assert block['attention']['qkv']['kernel'].shape == (768, 2304)
  assert set(block['mlp']) == {'fc', 'proj'}


def test_untied_embeddings_add_a_head_and_rotary_no_position_table():
  shapes = jax.eval_shape(gpt(tie_embeddings=False, positions='rotary').init, jax.random.PRNGKey(0),
                          jnp.zeros((1, LENGTH), jnp.int32))['params']
  assert shapes['head']['kernel'].shape == (32, VOCAB)
  assert 'pos_embedding' not in shapes


def test_a_token_changes_no_logit_before_it(model_and_params):
  model, params = model_and_params
  x = tokens(0)
  t = 5
  changed = x.copy()
  changed[:, t] = (changed[:, t] + 1) % VOCAB
  before, after = forward(model, params, x), forward(model, params, changed)
  assert before.shape == (BATCH, LENGTH, VOCAB) and before.dtype == np.float32
  np.testing.assert_array_equal(before[:, :t], after[:, :t])
  assert np.abs(before[:, t:] - after[:, t:]).max(axis=(0, 2)).min() > 1e-4  # Every later position moves.


def test_packed_documents_do_not_attend_across_the_boundary(model_and_params):
  model, params = model_and_params
  first, second, padding = 4, 5, 3  # Two documents and padding: one row of LENGTH tokens.
  x = tokens(1)
  segments = np.array([[1] * first + [2] * second + [0] * padding] * BATCH, np.int32)
  positions = np.array([[*range(first), *range(second), *range(padding)]] * BATCH, np.int32)
  packed = forward(model, params, x, segments, positions)
  # Each document alone, at the start of a row: what follows it cannot matter, by causality.
  alone = forward(model, params, np.concatenate([x[:, first:], x[:, :first]], 1))
  np.testing.assert_allclose(packed[:, first:first + second], alone[:, :second], atol=1e-5)
  np.testing.assert_allclose(packed[:, :first], forward(model, params, x)[:, :first], atol=1e-5)


def test_init_returns_an_empty_cache():
  decoder = built()[0].clone(decode=True)
  cache = jax.jit(decoder.init)(jax.random.PRNGKey(0), jnp.zeros((BATCH, MAX_LEN), jnp.int32))['cache']
  assert cache['block_0']['attention']['cached_key'].shape == (BATCH, MAX_LEN, 4, 8)
  shapes = functools.partial(jax.tree.map, lambda a: a.shape)
  assert shapes(cache) == shapes(empty_cache(decoder, BATCH))
  assert all(not np.asarray(leaf).any() for leaf in jax.tree.leaves(cache))  # Index 0, nothing written.


def test_prefill_and_decode_with_the_cache_equal_the_full_forward_pass(model_and_params):
  model, params = model_and_params
  x = tokens(2)
  decode = jitted_decode(model)
  logits, variables = decode(params, empty_cache(model, BATCH), x[:, :PROMPT])
  chunks = [logits]
  for t in range(PROMPT, LENGTH):
    logits, variables = decode(params, variables['cache'], x[:, t:t + 1])
    chunks.append(logits)
  assert int(variables['cache']['cache_index']) == LENGTH
  np.testing.assert_allclose(np.concatenate(chunks, 1), forward(model, params, x), atol=1e-5)


def test_a_left_padded_prompt_decodes_as_the_unpadded_one(model_and_params):
  """Prompts of different lengths share a batch: padding (segment 0) is cached but never attended to."""
  model, params = model_and_params
  x, pad = tokens(3), 3
  full = forward(model, params, x)
  prompt = np.concatenate([np.zeros((BATCH, pad), np.int32), x[:, :PROMPT]], 1)
  segments = np.array([[0] * pad + [1] * PROMPT] * BATCH, np.int32)
  positions = np.array([[0] * pad + list(range(PROMPT))] * BATCH, np.int32)
  decode = jitted_decode(model)
  logits, variables = decode(params, empty_cache(model, BATCH), prompt, segments, positions)
  np.testing.assert_allclose(logits[:, pad:], full[:, :PROMPT], atol=1e-5)
  logits, _ = decode(params, variables['cache'], x[:, PROMPT:PROMPT + 1], np.ones((BATCH, 1), np.int32),
                     np.full((BATCH, 1), PROMPT, np.int32))
  np.testing.assert_allclose(logits[:, 0], full[:, PROMPT], atol=1e-5)


def greedy_by_full_passes(model, params, prompt) -> np.ndarray:
  """NEW forward passes over the row so far, zeros after it: by causality they do not change its logits."""
  row = np.zeros((BATCH, LENGTH), np.int32)
  row[:, :PROMPT] = prompt
  for t in range(PROMPT, PROMPT + NEW):
    row[:, t] = forward(model, params, row)[0, t - 1].argmax()
  return row[0, PROMPT:]


def test_greedy_sampling_is_the_argmax_continuation(model_and_params):
  model, params = model_and_params
  prompt = tokens(4, (PROMPT,))
  greedy = generation.sample(model, params, prompt, max_tokens=NEW, temperature=0.0, seed=1)
  assert greedy.dtype == np.int32 and greedy.shape == (NEW,)
  np.testing.assert_array_equal(greedy, generation.sample(model, params, prompt, max_tokens=NEW,
                                                          temperature=0.0, seed=2))
  np.testing.assert_array_equal(greedy, greedy_by_full_passes(model, params, prompt))


def test_sampling_follows_the_seed_top_k_and_eos():
  model, params = built()
  prompt = tokens(5, (PROMPT,))
  draw = [generation.sample(model, params, prompt, max_tokens=NEW, temperature=1.5, seed=seed)
          for seed in (0, 0, 1)]
  np.testing.assert_array_equal(draw[0], draw[1])
  assert not np.array_equal(draw[0], draw[2])
  eos = int(draw[0][4])
  stopped = generation.sample(model, params, prompt, max_tokens=NEW, temperature=1.5, seed=0, eos_id=eos)
  np.testing.assert_array_equal(stopped, draw[0][:np.flatnonzero(draw[0] == eos)[0] + 1])
  greedy = generation.sample(model, params, prompt, max_tokens=NEW, temperature=0.0)
  top_1 = generation.sample(model, params, prompt, max_tokens=NEW, temperature=1.0, top_k=1, seed=3)
  np.testing.assert_array_equal(top_1, greedy)
  # A model rebuilt from the same options (new initializer closures) reuses the compiled sampler.
  size = generation._generate._cache_size()
  generation.sample(gpt(), params, prompt, max_tokens=NEW, temperature=1.5, seed=5)
  assert generation._generate._cache_size() == size


def test_sample_rejects_prompts_that_do_not_fit():
  model = gpt()
  with pytest.raises(ConfigError, match='> model.max_len=32'):
    generation.sample(model, None, np.arange(30), max_tokens=3)
  with pytest.raises(ConfigError, match='non-empty'):
    generation.sample(model, None, np.zeros(0, np.int32), max_tokens=3)


def test_sequences_longer_than_max_len_fail_with_the_fix():
  with pytest.raises(ConfigError, match=r'33 tokens but model.max_len=32; raise model.max_len'):
    jax.eval_shape(gpt().init, jax.random.PRNGKey(0), jnp.zeros((1, MAX_LEN + 1), jnp.int32))
  with pytest.raises(ConfigError, match='num_heads'):
    jax.eval_shape(gpt(num_heads=5).init, jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))


def test_dropout_needs_a_key_in_training_and_is_off_at_eval():
  params = built()[1]
  model = gpt(dropout=0.3)
  x = tokens(6)
  evaluation = forward(model, params, x)
  np.testing.assert_array_equal(evaluation, forward(*built(), x))
  with pytest.raises(Exception, match='dropout'):
    jax.eval_shape(functools.partial(model.apply, train=True), {'params': params}, x)
  trained = forward(model, params, x, train=True, rngs={'dropout': jax.random.PRNGKey(1)})
  assert np.abs(trained - evaluation).max() > 1e-3


def test_bfloat16_computes_float32_logits_close_to_float32():
  model, params = built()
  x = tokens(7)
  logits = forward(model.clone(dtype=jnp.bfloat16), params, x)
  assert logits.dtype == np.float32
  reference = forward(model, params, x)
  assert np.abs(logits - reference).max() < 0.1 * np.abs(reference).max()

"""A language model end to end (configs/text_gpt.py, shrunk): text in, perplexity out, generation from the
workdir by API and CLI, the doctor and the LR finder on it, and one-line errors for text mistakes."""

import json
import math
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import CONFIGS, ROOT

import jaxtrain
from jaxtrain import tasks

# A GPT small enough to train in seconds on Python's help text (byte tokens).
SMALL = {'data.seq_len': 32, 'model.max_len': 48, 'model.width': 32, 'model.num_layers': 1,
         'model.num_heads': 2, 'model.mlp_dim': 64, 'data.batch_size': 16, 'optim.warmup_steps': 5,
         'train.num_steps': 40, 'train.eval_every_steps': 40, 'checkpoint.every_steps': 40,
         'generate.max_tokens': 12}


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('gpt')
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  overrides = {**SMALL, 'data.data_dir': data_dir, 'train.progress_bar': False,
               'compile_cache.enabled': False}
  config = jaxtrain.load_config(CONFIGS / 'text_gpt.py', overrides)
  return config, workdir, jaxtrain.fit(config, workdir), overrides


def test_a_small_gpt_learns_python_docs(trained):
  _, _, run, _ = trained
  final = run.summary['final']
  assert final['eval/perplexity'] < 40 < 257  # Chance is the vocabulary: 256 bytes and the eos.
  assert final['eval/bits_per_token'] == pytest.approx(math.log2(final['eval/perplexity']))
  first = run.history[0]
  assert first['train/loss'] > math.log(final['eval/perplexity'])
  assert first['train/tokens_per_sec'] == pytest.approx(first['train/examples_per_sec'] * 32)


def test_generation_is_deterministic_when_greedy_and_matches_the_cli(trained):
  config, workdir, _, overrides = trained
  greedy = [jaxtrain.generate(config, workdir, 'The ', temperature=0) for _ in range(2)]
  assert greedy[0] == greedy[1] and 0 < len(greedy[0].encode()) <= 12
  sampled = {jaxtrain.generate(config, workdir, 'The ', temperature=1.0, seed=seed) for seed in range(4)}
  assert len(sampled) > 1  # Sampling follows the seed.
  result = subprocess.run(
      [sys.executable, '-m', 'jaxtrain.main', '--config', str(CONFIGS / 'text_gpt.py'),
       f'--workdir={workdir}', '--mode=generate', '--config.generate.prompt=The ',
       '--config.generate.temperature=0',
       *(f'--config.{key}={value}' for key, value in overrides.items())],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.rstrip('\n') == 'The ' + greedy[0]  # The prompt, then what the model wrote.


def test_perplexity_weighs_every_token_once():
  """Two sequences with 1 and 3 real targets: perplexity is exp of the mean over the 4 tokens, not of the
  mean of the two per-sequence means."""
  task = tasks.build(jaxtrain.load_config(CONFIGS / 'text_gpt.py').task)
  logits = jnp.log(jnp.asarray([[[0.5, 0.5], [0.5, 0.5], [0.5, 0.5]],
                                [[0.9, 0.1], [0.9, 0.1], [0.1, 0.9]]]))
  batch = {'targets': jnp.asarray([[0, -1, -1], [0, 0, 1]])}
  sums = task.sums(logits, batch, jnp.asarray([True, True]))
  token_losses = [-math.log(0.5), -math.log(0.9), -math.log(0.9), -math.log(0.9)]
  summary = tasks.summarize({key: np.asarray(value) for key, value in sums.items()})
  assert summary['perplexity'] == pytest.approx(math.exp(np.mean(token_losses)), rel=1e-5)
  assert summary['loss'] == pytest.approx((token_losses[0] + np.mean(token_losses[1:])) / 2, rel=1e-5)


def test_doctor_and_lr_find_work_on_a_language_model(trained, tmp_path):
  config, _, _, _ = trained
  config = jaxtrain.load_config(CONFIGS / 'text_gpt.py', {
      **trained[3], 'doctor.overfit_steps': 30, 'doctor.lr_find_steps': 20, 'doctor.probe_examples': 32})
  report = jaxtrain.doctor(config, tmp_path / 'doctor')
  initial = next(c for c in report['checks'] if c['name'] == 'initial_loss')
  assert initial['status'] == 'pass' and abs(initial['value'] - math.log(257)) < 0.3
  assert next(c for c in report['checks'] if c['name'] == 'output_layer')['status'] == 'pass'
  config.lr_find.num_steps = 30
  assert 1e-6 < jaxtrain.lr_find(config, tmp_path / 'lr')['suggested_lr'] < 10


@pytest.mark.parametrize('override, message', [
    ('--config.model.max_len=16', 'the sequences have 32 tokens but model.max_len=16; raise model.max_len'),
    ('--config.data.name=text:/nowhere/*.txt', "data.name='text:/nowhere/*.txt' matches no file"),
    ('--config.data.tokenizer=sentencepiece:/nowhere.model', "data.tokenizer='sentencepiece:/nowhere.model'"),
])
def test_text_mistakes_exit_2_with_one_line_and_write_nothing(trained, tmp_path, override, message):
  overrides = trained[3]
  result = subprocess.run(
      [sys.executable, '-m', 'jaxtrain.main', '--config', str(CONFIGS / 'text_gpt.py'),
       f'--workdir={tmp_path / "run"}', *(f'--config.{k}={v}' for k, v in overrides.items()), override],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 2, result.stderr[-2000:]
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith('error: ') and message in last, last
  assert not (tmp_path / 'run').exists()


def test_generate_refuses_a_model_that_is_not_a_language_model(make_config, tmp_path):
  config = make_config('digits_mlp', **{'train.num_steps': 2})
  jaxtrain.fit(config, tmp_path)
  with pytest.raises(jaxtrain.ConfigError, match="--mode generate needs a language model"):
    jaxtrain.generate(config, tmp_path, 'hi')
  assert json.loads((tmp_path / 'summary.json').read_text())['steps'] == 2

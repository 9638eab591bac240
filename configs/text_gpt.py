"""A small GPT (4 pre-norm blocks of width 128, byte-level) trained on Python's own help text, offline.

  python -m jaxtrain.main --config configs/text_gpt.py --workdir runs/text_gpt
  python -m jaxtrain.main --config configs/text_gpt.py --workdir runs/text_gpt --mode generate \\
      --config.generate.prompt='The with statement'

The corpus is `pydoc_data.topics` (the text of `help()`'s topics, ~465 KB, part of every CPython install),
tokenized once into bytes and packed into sequences of 128 tokens; the last tenth is validation. Expected:
validation perplexity about 3.7 (1.9 bits per byte; chance is 257, the vocabulary) after 1,000 steps, in
about 6 minutes on 2 CPU cores (measured 2026-12-01: 3.72, 6 min 33 s for the whole command).
"""

from jaxtrain import config as config_lib


def get_config():
  config = config_lib.defaults()
  config.data.name = 'python_docs'  # Or 'text:<glob>' for your own files, 'tfds:tiny_shakespeare', ...
  config.data.tokenizer = 'bytes'
  config.data.seq_len = 128
  config.data.validation_fraction = 0.1
  config.data.normalize = ()  # Token ids are ids, not intensities.
  config.data.batch_size = 32
  config.data.eval_batch_size = 64
  config.model.name = 'gpt'
  config.model.inputs = ('tokens', 'segments', 'positions')
  config.model.max_len = 128
  config.model.width = 128
  config.model.num_layers = 4
  config.model.num_heads = 4
  config.model.mlp_dim = 512
  config.model.activation = 'gelu'
  config.model.dropout = 0.1
  config.model.positions = 'learned'
  config.task.name = 'language_modeling'
  # The doctor memorizes 4 sequences (512 tokens) in its 100 steps; 32 need far more (note 002: overfit a
  # batch of "as little as two" examples).
  config.doctor.overfit_examples = 4
  config.optim.name = 'adamw'
  config.optim.lr = 3e-3
  config.optim.weight_decay = 0.1
  config.optim.clip_norm = 1.0
  config.optim.schedule = 'cosine'
  config.optim.warmup_steps = 100
  config.train.num_steps = 1000
  config.train.eval_every_steps = 250
  config.train.log_every_steps = 100
  config.checkpoint.every_steps = 250
  config.generate.max_tokens = 100  # With the prompt, at most model.max_len tokens.
  return config

"""A small Vision Transformer on MNIST: 4x4 patches (49 tokens), 6 pre-norm blocks of width 128, AdamW.

  python -m jaxtrain.main --config configs/mnist_vit.py --config.data.data_dir=~/tensorflow_datasets

Needs MNIST prepared in data.data_dir (the tests run it on tfds.testing.mock_data). Expected: about 0.98 test
accuracy after 10 epochs.
"""

import pathlib

from jaxtrain.config import load_config


def get_config():
  config = load_config(pathlib.Path(__file__).with_name('mnist_cnn.py'))
  config.model.name = 'vit'
  config.model.patch_size = 4
  config.model.width = 128
  config.model.num_layers = 6
  config.model.num_heads = 4
  config.model.mlp_dim = 256
  config.model.dropout = 0.1
  config.model.vit_pooling = 'token'
  config.optim.name = 'adamw'
  config.optim.lr = 1e-3
  config.optim.weight_decay = 0.05
  config.optim.clip_norm = 1.0
  config.optim.warmup_steps = 500
  config.train.num_epochs = 10
  return config

"""A two-layer MLP on scikit-learn's digits, with the default job's data and optimizer (offline, seconds).

  python -m jaxtrain.main --config configs/digits_mlp.py

Expected: test accuracy about 0.97-0.98 after 40 epochs; outputs in runs/digits_mlp/.
"""

import pathlib

from jaxtrain.config import load_config


def get_config():
  config = load_config(pathlib.Path(__file__).with_name('digits_cnn.py'))
  config.model.name = 'mlp'
  config.model.features = (256, 128)
  config.model.norm = 'none'
  config.model.dropout = 0.2
  config.train.num_epochs = 40
  return config

"""Pretraining for the fine-tune recipe: the default CNN on digits 0-4 only (all of their training data).

  python -m jaxtrain.main --config configs/digits_pretrain.py

Expected: test accuracy about 0.99 on digits 0-4; outputs in runs/digits_pretrain/ (where
configs/digits_finetune.py starts from).
"""

import pathlib

from jaxtrain.config import load_config


def get_config():
  config = load_config(pathlib.Path(__file__).with_name('digits_cnn.py'))
  config.data.classes = (0, 1, 2, 3, 4)
  config.train.num_epochs = 20
  return config

"""ResNet-18 (CIFAR stem) on CIFAR-10 with crop+flip augmentation, SGD + Nesterov, cosine decay, EMA.

  python -m jaxtrain.main --config configs/cifar10_resnet18.py --config.data.data_dir=~/tensorflow_datasets

Needs CIFAR-10 prepared in data.data_dir (the tests run it on tfds.testing.mock_data). Expected: about 0.95
test accuracy after 100 epochs on a GPU (an epoch is ~1 minute on a modern GPU, hours on a laptop CPU).
Try it offline for a few steps: --config.train.num_steps=5 inside `tfds.testing.mock_data`
"""

import pathlib

from jaxtrain.config import load_config


def get_config():
  config = load_config(pathlib.Path(__file__).with_name('digits_cnn.py'))
  config.data.name = 'cifar10'
  config.data.batch_size = 128
  config.data.eval_batch_size = 500
  config.data.validation_fraction = 0.0
  config.data.augment = 'crop_flip'
  config.model.name = 'resnet18'
  config.model.stem = 'cifar'
  config.model.width = 64
  config.model.norm = 'batch'
  config.model.dropout = 0.0
  config.model.zero_init_residual = True
  config.model.head_pooling = 'avg'
  config.optim.name = 'nesterov'
  config.optim.lr = 0.1
  config.optim.momentum = 0.9
  config.optim.weight_decay = 5e-4
  config.optim.schedule = 'cosine'
  config.optim.warmup_steps = 390
  config.optim.ema_decay = 0.999
  config.train.num_epochs = 100
  config.train.log_every_steps = 100
  return config

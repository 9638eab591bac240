"""The default CNN on MNIST through TFDS (needs MNIST in data.data_dir; the tests use mock data).

  python -m jaxtrain.main --config configs/mnist_cnn.py --config.data.data_dir=~/tensorflow_datasets

Expected: test accuracy about 0.99 after 3 epochs; outputs in runs/mnist_cnn/.
"""

import pathlib

from jaxtrain.config import load_config


def get_config():
  config = load_config(pathlib.Path(__file__).with_name('digits_cnn.py'))
  config.data.name = 'mnist'
  config.data.batch_size = 128
  config.data.eval_batch_size = 1000
  config.data.validation_fraction = 0.0
  config.model.head_features = (256,)
  config.optim.warmup_steps = 200
  config.train.num_epochs = 3
  config.train.log_every_steps = 100
  return config

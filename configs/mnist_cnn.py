"""A LeNet-style CNN on MNIST through TFDS (needs MNIST in data.data_dir; the tests use mock data).

  python -m jaxtrain.main --config configs/mnist_cnn.py --config.data.data_dir=~/tensorflow_datasets

Expected: test accuracy about 0.99 after 3 epochs; outputs in runs/mnist_cnn/.
"""

from jaxtrain.config import defaults


def get_config():
  config = defaults()
  config.data.name = 'mnist'
  config.data.batch_size = 128
  config.data.eval_batch_size = 1000
  config.model.name = 'cnn'
  config.model.features = (32, 64)
  config.model.head_features = (256,)
  config.model.norm = 'batch'
  config.model.dropout = 0.1
  config.optim.name = 'adam'
  config.optim.lr = 1e-3
  config.optim.schedule = 'cosine'
  config.optim.warmup_steps = 200
  config.train.num_epochs = 3
  config.train.log_every_steps = 100
  return config

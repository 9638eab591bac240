"""The default job: a small LeNet-style CNN on scikit-learn's digits (offline, about a minute on 2 CPU cores).

  python -m jaxtrain.main --config configs/digits_cnn.py

Expected: test accuracy >= 0.97 (about 0.98-0.99) after 30 epochs; outputs in runs/digits_cnn/.
"""

from jaxtrain.config import defaults


def get_config():
  config = defaults()
  config.data.name = 'digits'
  config.data.batch_size = 32
  config.data.validation_fraction = 0.1
  config.model.name = 'cnn'
  config.model.features = (32, 64)
  config.model.head_features = (128,)
  config.model.norm = 'batch'
  config.model.dropout = 0.1
  config.optim.name = 'adam'
  config.optim.lr = 1e-3
  config.optim.schedule = 'cosine'
  config.optim.warmup_steps = 50
  config.train.num_epochs = 30
  config.train.log_every_steps = 20
  return config

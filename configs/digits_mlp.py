"""A two-layer MLP on scikit-learn's digits (offline, well under a minute on a CPU).

  python -m jaxtrain.main --config configs/digits_mlp.py

Expected: test accuracy about 0.96-0.98 after 40 epochs; outputs in runs/digits_mlp/.
"""

from jaxtrain.config import defaults


def get_config():
  config = defaults()
  config.data.name = 'digits'
  config.data.batch_size = 32
  config.data.validation_fraction = 0.1
  config.model.name = 'mlp'
  config.model.features = (256, 128)
  config.model.dropout = 0.2
  config.optim.name = 'adam'
  config.optim.lr = 1e-3
  config.optim.schedule = 'cosine'
  config.train.num_epochs = 40
  config.train.log_every_steps = 20
  return config

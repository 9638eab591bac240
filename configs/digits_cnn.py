"""The default job: a small LeNet-style CNN on scikit-learn's digits (offline, seconds on 2 CPU cores).

  python -m jaxtrain.main --config configs/digits_cnn.py

Target: test accuracy >= 0.97 after 30 epochs (1,200 steps); measured 0.997. Wall time for the whole
command on 2 CPU cores (measured 2026-12-05): 16 s the first time (preparing the digits and compiling),
9.5 s once the compilation cache is filled. Stopping at the target instead,
--config.early_stopping.target='eval/accuracy>=0.97', stops at step 400 (test accuracy 0.989) after 5.8 s
with the cache filled (summary.json: target_reached_step, target_reached_s). Outputs in runs/digits_cnn/.
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

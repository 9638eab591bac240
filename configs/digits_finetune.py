"""Transfer learning (note 003): fine-tune the digits 0-4 CNN on digits 5-9 with 10% of their train data.

  python -m jaxtrain.main --config configs/digits_pretrain.py
  python -m jaxtrain.main --config configs/digits_finetune.py
  python -m jaxtrain.main --config configs/digits_finetune.py --workdir runs/digits_scratch \
      --config.init_from='' --config.optim.freeze='()' --config.optim.lr_multipliers='()'

The second command loads every matching weight and BatchNorm statistic of runs/digits_pretrain (the log
shows the table), freezes the first conv block and trains the rest with the head at 10x the learning rate;
the third trains the same model on the same ~65 examples from scratch. Measured (2 CPU cores): test accuracy
on digits 5-9 0.934 fine-tuned, 0.950 from scratch: on 8x8 digits a small CNN learns 5 classes from 65
examples about as well without the 0-4 features; the recipe shows the mechanics, not a gain.
"""

import pathlib

from jaxtrain.config import load_config


def get_config():
  config = load_config(pathlib.Path(__file__).with_name('digits_cnn.py'))
  config.data.classes = (5, 6, 7, 8, 9)
  config.data.train_fraction = 0.1
  config.data.batch_size = 16
  config.init_from = 'runs/digits_pretrain'
  config.optim.freeze = ('params/Block_0/.*',)
  config.optim.lr_multipliers = ('params/head/.*=10',)
  config.optim.warmup_steps = 0
  config.train.num_epochs = 40
  return config

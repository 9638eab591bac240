"""Your own model, data and loss from the command line, named by import path (examples/tokens.py).

  python -m jaxtrain.main --config configs/tokens_nnx.py

An NNX model (examples.tokens:TokenNet, built with model.kwargs and nnx.Rngs(seed)) on int32 token ids that
reach nnx.Embed as integers, trained with a focal loss and reporting accuracy. Expect eval/accuracy above 0.9
after 600 steps (about 10 s on 2 CPU cores); chance is about 0.33.
"""

from jaxtrain import config as config_lib


def get_config():
  config = config_lib.defaults()
  config.model.name = 'examples.tokens:TokenNet'
  config.model.kwargs = {'width': 32, 'dropout': 0.1}
  config.model.inputs = ('tokens',)
  config.data.name = 'examples.tokens:load'
  config.data.normalize = ()  # Token ids are ids, not intensities.
  config.task.name = 'examples.tokens:FOCAL'
  config.optim.lr = 3e-3
  config.train.num_steps = 600
  config.train.eval_every_steps = 200
  config.checkpoint.monitor = 'eval/accuracy'
  config.checkpoint.mode = 'max'
  return config

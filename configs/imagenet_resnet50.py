"""ResNet-50 (ImageNet stem) on ImageNet-2012 at 224x224: random-resized-crop + flip, SGD momentum with
label smoothing, bf16 compute and float32 parameters, 5 warm-up epochs then cosine decay.

  python -m jaxtrain.main --config configs/imagenet_resnet50.py --config.data.data_dir=/data/tfds

ImageNet must be downloaded by hand into `<data_dir>/downloads/manual` (TFDS's manual download). Expected:
about 0.76 top-1 after 90 epochs on 8 GPUs with `--config.data.batch_size=1024 --config.optim.lr=0.4`. The
splits stay on disk (data.in_memory=false): 8 Grain worker processes decode the JPEGs and resize them to
image_size on the host, batch by batch, and the random-resized crops are made on the device; memory does not
grow with the data set. The tests run a few steps on tfds.testing.mock_data at a small image size.
"""

import pathlib

from jaxtrain.config import load_config


def get_config():
  config = load_config(pathlib.Path(__file__).with_name('digits_cnn.py'))
  config.data.name = 'imagenet2012'
  config.data.image_size = 224
  config.data.batch_size = 256
  config.data.eval_batch_size = 500
  config.data.validation_fraction = 0.0
  config.data.augment = 'random_resized_crop'
  config.data.in_memory = 'false'  # About 190 GB decoded at 224x224.
  config.data.workers = 8
  config.model.name = 'resnet50'
  config.model.stem = 'imagenet'
  config.model.norm = 'batch'
  config.model.dropout = 0.0
  config.model.zero_init_residual = True
  config.model.head_pooling = 'avg'
  config.model.dtype = 'bfloat16'
  config.task.label_smoothing = 0.1
  config.optim.name = 'momentum'
  config.optim.lr = 0.1
  config.optim.weight_decay = 5e-5
  config.optim.schedule = 'cosine'
  config.optim.warmup_steps = 25_000
  config.train.num_epochs = 90
  config.train.log_every_steps = 100
  config.train.eval_every_steps = 5_000
  config.checkpoint.every_steps = 5_000
  return config

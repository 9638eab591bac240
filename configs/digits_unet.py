"""U-Net segmentation of the embedded digits: each pixel is background or the digit it belongs to
(11 classes), trained with per-pixel cross-entropy; reports pixel accuracy and mean IoU. Offline.

  python -m jaxtrain.main --config configs/digits_unet.py

Expected: test/mean_iou about 0.96 and pixel accuracy about 0.99, in well under a minute on a laptop CPU.
"""

import pathlib

from jaxtrain.config import load_config


def get_config():
  config = load_config(pathlib.Path(__file__).with_name('digits_cnn.py'))
  config.data.name = 'digits_segmentation'
  config.task.name = 'segmentation'
  config.model.name = 'unet'
  config.model.features = (32, 64)
  config.model.norm = 'batch'
  config.model.dropout = 0.0
  config.optim.lr = 3e-3
  config.train.num_epochs = 20
  return config

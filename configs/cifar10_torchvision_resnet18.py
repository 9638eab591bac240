"""Fine-tune torchvision's ImageNet ResNet-18 on CIFAR-10: the pretrained body, a new 10-class head.

  # Once, anywhere with torch: the weights torchvision itself downloads for resnet18(weights='DEFAULT').
  python -c "import torchvision; torchvision.models.resnet18(weights='DEFAULT')"
  cp ~/.cache/torch/hub/checkpoints/resnet18-f37072fd.pth ~/weights/
  python -m jaxtrain.main --config configs/cifar10_torchvision_resnet18.py \
      --config.data.data_dir=~/tensorflow_datasets

jaxtrain reads the .pth (or a .safetensors) without PyTorch. `init_from` loads every parameter and
BatchNorm statistic but the head, whose 1000 ImageNet classes become CIFAR-10's 10 (the log shows the
table); the head learns at 10x the rate of the body, which starts from features that already work. The
zoo's ResNet-18 with model.stem='imagenet' is torchvision's network exactly (tests/test_weights.py:
logits within 1e-4). Inputs are normalized with CIFAR-10's own statistics, which BatchNorm's running
averages adapt to within the first epoch. A few epochs suffice: fine-tuning is a short schedule.
"""

import pathlib

from jaxtrain.config import load_config


def get_config():
  config = load_config(pathlib.Path(__file__).with_name('cifar10_resnet18.py'))
  config.init_from = 'torchvision:resnet18:~/weights/resnet18-f37072fd.pth'
  config.model.stem = 'imagenet'  # torchvision's 7x7/2 conv and max pooling, whose weights are loaded.
  config.model.zero_init_residual = False
  config.optim.lr = 0.01
  config.optim.lr_multipliers = ('params/head/.*=10',)
  config.optim.warmup_steps = 100
  config.optim.ema_decay = 0.0
  config.train.num_epochs = 5
  return config

"""Models by name. A new model is one entry in `MODELS`: a function (model config, num_classes) -> module."""

import flax.linen as nn

from jaxtrain.config import lookup
from jaxtrain.models import layers
from jaxtrain.models.classifiers import CNN, MLP


def _common(cfg) -> dict:
  layers.check_activation(cfg.activation)
  layers.normalization(cfg.norm, train=False)  # Validates the name.
  return dict(
      features=tuple(cfg.features),
      kernel_init=layers.initializer(cfg.kernel_init, 'model.kernel_init', cfg.activation),
      bias_init=layers.bias_initializer(cfg.bias_init),
      activation=cfg.activation, norm=cfg.norm, dropout=cfg.dropout)


def _mlp(cfg, num_classes: int) -> nn.Module:
  return MLP(num_classes=num_classes, **_common(cfg))


def _cnn(cfg, num_classes: int) -> nn.Module:
  lookup(layers.POOLINGS, 'model.pooling', cfg.pooling)
  lookup(layers.HEAD_POOLINGS, 'model.head_pooling', cfg.head_pooling)
  return CNN(num_classes=num_classes, head_features=tuple(cfg.head_features),
             kernel_size=cfg.kernel_size, spatial_dropout=cfg.spatial_dropout, pooling=cfg.pooling,
             head_pooling=cfg.head_pooling, **_common(cfg))


MODELS = {'mlp': _mlp, 'cnn': _cnn}


def build(model_config, num_classes: int) -> nn.Module:
  """The configured model; raises ConfigError for an unknown name or option."""
  return lookup(MODELS, 'model.name', model_config.name)(model_config, num_classes)


__all__ = ['CNN', 'MLP', 'MODELS', 'build']

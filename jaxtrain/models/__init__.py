"""Models by name. A new model is one entry in `MODELS`: a function (model config, num_classes) -> module.

Every model takes (x, train) and returns float32 logits (gpt takes (tokens, segments, positions, train) and
its "classes" are the vocabulary); options are checked here, when the model is built, so a bad name fails
before anything is compiled.
"""

import flax.linen as nn

from jaxtrain.config import ConfigError, lookup
from jaxtrain.models import gpt, layers, resnet, vit
from jaxtrain.models.classifiers import CNN, MLP
from jaxtrain.models.gpt import GPT
from jaxtrain.models.resnet import ResNet
from jaxtrain.models.unet import UNet
from jaxtrain.models.vit import ViT


def _layer_options(cfg) -> dict:
  """The options every model takes: initializers, activation, dropout and compute dtype."""
  layers.check_activation(cfg.activation)
  return dict(
      kernel_init=layers.initializer(cfg.kernel_init, 'model.kernel_init', cfg.activation),
      bias_init=layers.bias_initializer(cfg.bias_init),
      activation=cfg.activation, dropout=cfg.dropout, dtype=layers.compute_dtype(cfg.dtype))


def _remat(cfg) -> str:
  lookup(layers.REMAT_POLICIES, 'model.remat', cfg.remat)
  return cfg.remat


def _common(cfg, blocks: bool = False) -> dict:
  """The options of the layered models; `blocks`: the model has blocks for model.remat to checkpoint (a
  remat setting elsewhere is a mistake, not a silent no-op)."""
  if not blocks and cfg.remat != 'none':
    raise ConfigError(f'model.remat={cfg.remat!r} checkpoints the blocks of resnet*, vit and gpt; '
                      f'model.name={cfg.name!r} has none: use --config.model.remat=none')
  layers.normalization(cfg.norm, train=False)  # Validates the name.
  return dict(features=tuple(cfg.features), norm=cfg.norm, **_layer_options(cfg))


def _mlp(cfg, num_classes: int) -> nn.Module:
  return MLP(num_classes=num_classes, **_common(cfg))


def _cnn(cfg, num_classes: int, stage_depths: tuple[int, ...] | None = None) -> nn.Module:
  lookup(layers.POOLINGS, 'model.pooling', cfg.pooling)
  lookup(layers.HEAD_POOLINGS, 'model.head_pooling', cfg.head_pooling)
  return CNN(num_classes=num_classes, head_features=tuple(cfg.head_features),
             kernel_size=cfg.kernel_size, spatial_dropout=cfg.spatial_dropout, pooling=cfg.pooling,
             head_pooling=cfg.head_pooling, stage_depths=stage_depths, **_common(cfg))


def _vgg(cfg, num_classes: int) -> nn.Module:
  depths = tuple(cfg.stage_depths)
  if len(depths) != len(cfg.features) or min(depths) < 1:
    raise ConfigError(f'model.stage_depths={depths} must give a number >= 1 of convs for each of the '
                      f'{len(cfg.features)} stages in model.features={tuple(cfg.features)}')
  return _cnn(cfg, num_classes, depths)


def _resnet(name: str):
  depths, bottleneck = resnet.RESNETS[name]

  def build(cfg, num_classes: int) -> nn.Module:
    lookup(resnet.STEMS, 'model.stem', cfg.stem)
    options = _common(cfg, blocks=True)
    del options['features']  # The widths are model.width doubled per stage.
    return ResNet(num_classes=num_classes, stage_depths=depths, bottleneck=bottleneck, width=cfg.width,
                  stem=cfg.stem, zero_init_residual=cfg.zero_init_residual, remat=_remat(cfg), **options)
  return build


def _vit(cfg, num_classes: int) -> nn.Module:
  lookup(vit.POOLINGS, 'model.vit_pooling', cfg.vit_pooling)
  if cfg.width % cfg.num_heads:
    raise ConfigError(f'model.width={cfg.width} must divide by model.num_heads={cfg.num_heads}: '
                      'each head attends with width / num_heads features')
  return ViT(num_classes=num_classes, patch_size=cfg.patch_size, width=cfg.width,
             num_layers=cfg.num_layers, num_heads=cfg.num_heads, mlp_dim=cfg.mlp_dim,
             pooling=cfg.vit_pooling, remat=_remat(cfg), **_layer_options(cfg))


def _gpt(cfg, num_classes: int) -> nn.Module:
  lookup(gpt.POSITIONS, 'model.positions', cfg.positions)  # The other options are checked on the tokens.
  options = _layer_options(cfg)
  if cfg.kernel_init == 'auto':  # GPT-2's N(0, 0.02), which its embeddings use too.
    options['kernel_init'] = nn.initializers.normal(0.02)
  return GPT(num_classes=num_classes, max_len=cfg.max_len, width=cfg.width, num_layers=cfg.num_layers,
             num_heads=cfg.num_heads, mlp_dim=cfg.mlp_dim, positions=cfg.positions,
             tie_embeddings=cfg.tie_embeddings, remat=_remat(cfg), **options)


def _unet(cfg, num_classes: int) -> nn.Module:
  lookup(layers.POOLINGS, 'model.pooling', cfg.pooling)
  return UNet(num_classes=num_classes, kernel_size=cfg.kernel_size, spatial_dropout=cfg.spatial_dropout,
              pooling=cfg.pooling, **_common(cfg))


MODELS = {'mlp': _mlp, 'cnn': _cnn, 'vgg': _vgg, 'vit': _vit, 'unet': _unet, 'gpt': _gpt,
          **{name: _resnet(name) for name in resnet.RESNETS}}


ZOO = (CNN, GPT, MLP, ResNet, UNet, ViT)  # The classes `MODELS` builds (vgg is a CNN).
# (parameter path regex, PartitionSpec entries) of the models that split over parallel.mesh.model.
MODEL_AXIS_RULES = (*gpt.MODEL_AXIS_RULES, *vit.MODEL_AXIS_RULES)


def is_zoo(module) -> bool:
  """A module of the zoo's own classes: its `dropout` field and activation layers are known."""
  return isinstance(module, ZOO)


def build(model_config, num_classes: int) -> nn.Module:
  """The configured model; raises ConfigError for an unknown name or option."""
  return lookup(MODELS, 'model.name', model_config.name)(model_config, num_classes)


__all__ = ['CNN', 'GPT', 'MLP', 'MODELS', 'MODEL_AXIS_RULES', 'ResNet', 'UNet', 'ViT', 'ZOO', 'build',
           'is_zoo']

"""torchvision's ResNet-18/34/50 and ViT-B/16 state_dicts as the variables of the zoo's `ResNet` and `ViT`.

The zoo models follow torchvision's layouts (v1.5 ResNets, pre-norm ViT), so a conversion is renaming plus
the layout changes between the frameworks: PyTorch keeps a conv kernel as (out, in, h, w) and a linear one
as (out, in), Flax as (h, w, in, out) and (in, out); attention's fused q/k/v projection becomes Flax's
three DenseGeneral kernels of shape (width, heads, head_dim). `ARCHITECTURES[name].model` is the zoo
config that builds the matching model; its logits then equal torchvision's (tests/test_weights.py).
"""

import dataclasses
from collections.abc import Callable

import numpy as np

from jaxtrain.config import ConfigError


class StateDict:
  """A torchvision state_dict that names the missing key, and the keys left over, in a ConfigError."""

  def __init__(self, weights: dict, model_name: str):
    self.weights, self.model_name, self.used = weights, model_name, set()

  def __contains__(self, key: str) -> bool:
    return key in self.weights

  def __call__(self, key: str) -> np.ndarray:
    if key not in self.weights:
      raise ConfigError(f"the weights have no {key!r}, which torchvision's {self.model_name} has: give "
                        f'a {self.model_name} state_dict, or the torchvision name of the model they are')
    self.used.add(key)
    return self.weights[key]

  def check_all_used(self) -> None:
    unused = [key for key in self.weights if key not in self.used and not key.endswith('num_batches_tracked')]
    if unused:
      raise ConfigError(f"the weights hold {unused[0]!r} (and {len(unused) - 1} more), which torchvision's "
                        f'{self.model_name} has not: give the torchvision name of the model they are')


def _conv(kernel: np.ndarray) -> np.ndarray:
  return kernel.transpose(2, 3, 1, 0)


def _conv_norm(take: StateDict, flat: dict, path: str, conv: str, norm: str) -> None:
  """A conv without bias and its BatchNorm: the zoo's ConvNorm."""
  flat[f'params/{path}/Conv_0/kernel'] = _conv(take(f'{conv}.weight'))
  flat[f'params/{path}/BatchNorm_0/scale'] = take(f'{norm}.weight')
  flat[f'params/{path}/BatchNorm_0/bias'] = take(f'{norm}.bias')
  flat[f'batch_stats/{path}/BatchNorm_0/mean'] = take(f'{norm}.running_mean')
  flat[f'batch_stats/{path}/BatchNorm_0/var'] = take(f'{norm}.running_var')


def _dense(take: StateDict, flat: dict, path: str, linear: str) -> None:
  flat[f'params/{path}/kernel'] = take(f'{linear}.weight').T
  flat[f'params/{path}/bias'] = take(f'{linear}.bias')


def _layer_norm(take: StateDict, flat: dict, path: str, norm: str) -> None:
  flat[f'params/{path}/scale'] = take(f'{norm}.weight')
  flat[f'params/{path}/bias'] = take(f'{norm}.bias')


def _resnet(stage_depths: tuple[int, ...], bottleneck: bool) -> Callable[[StateDict], dict]:
  def convert(take: StateDict) -> dict:
    flat = {}
    _conv_norm(take, flat, 'stem', 'conv1', 'bn1')
    block = 0
    for stage, depth in enumerate(stage_depths):
      for index in range(depth):
        source, target = f'layer{stage + 1}.{index}', f'ResidualBlock_{block}'
        for conv in range(3 if bottleneck else 2):
          _conv_norm(take, flat, f'{target}/ConvNorm_{conv}', f'{source}.conv{conv + 1}',
                     f'{source}.bn{conv + 1}')
        if f'{source}.downsample.0.weight' in take:
          _conv_norm(take, flat, f'{target}/shortcut', f'{source}.downsample.0', f'{source}.downsample.1')
        block += 1
    _dense(take, flat, 'head', 'fc')
    return flat
  return convert


def _vit(num_layers: int, num_heads: int) -> Callable[[StateDict], dict]:
  def convert(take: StateDict) -> dict:
    flat = {'params/embedding/kernel': _conv(take('conv_proj.weight')),
            'params/embedding/bias': take('conv_proj.bias'),
            'params/cls': take('class_token'),
            'params/pos_embedding': take('encoder.pos_embedding')}
    for index in range(num_layers):
      source, target = f'encoder.layers.encoder_layer_{index}', f'EncoderBlock_{index}'
      attention = f'params/{target}/MultiHeadDotProductAttention_0'
      _layer_norm(take, flat, f'{target}/LayerNorm_0', f'{source}.ln_1')
      width = take(f'{source}.self_attention.out_proj.weight').shape[0]
      head_dim = width // num_heads
      # PyTorch's in_proj is [query; key; value] stacked by rows, each (out, in) with out = heads x head_dim.
      kernels = np.split(take(f'{source}.self_attention.in_proj_weight'), 3)
      biases = np.split(take(f'{source}.self_attention.in_proj_bias'), 3)
      for name, kernel, bias in zip(('query', 'key', 'value'), kernels, biases, strict=True):
        flat[f'{attention}/{name}/kernel'] = kernel.T.reshape(width, num_heads, head_dim)
        flat[f'{attention}/{name}/bias'] = bias.reshape(num_heads, head_dim)
      flat[f'{attention}/out/kernel'] = take(f'{source}.self_attention.out_proj.weight').T.reshape(
          num_heads, head_dim, width)
      flat[f'{attention}/out/bias'] = take(f'{source}.self_attention.out_proj.bias')
      _layer_norm(take, flat, f'{target}/LayerNorm_1', f'{source}.ln_2')
      _dense(take, flat, f'{target}/Dense_0', f'{source}.mlp.0')
      _dense(take, flat, f'{target}/Dense_1', f'{source}.mlp.3')
    _layer_norm(take, flat, 'encoder_norm', 'encoder.ln')
    _dense(take, flat, 'head', 'heads.head')
    return flat
  return convert


@dataclasses.dataclass(frozen=True)
class Architecture:
  """A torchvision model: the zoo's config keys that build the same network, and its state_dict's
  conversion to that network's flat {'params/...' or 'batch_stats/...': array}."""

  model: dict
  convert: Callable[[StateDict], dict]


def _resnet_model(name: str) -> dict:
  return {'name': name, 'width': 64, 'stem': 'imagenet', 'norm': 'batch', 'activation': 'relu'}


ARCHITECTURES = {
    'resnet18': Architecture(_resnet_model('resnet18'), _resnet((2, 2, 2, 2), bottleneck=False)),
    'resnet34': Architecture(_resnet_model('resnet34'), _resnet((3, 4, 6, 3), bottleneck=False)),
    'resnet50': Architecture(_resnet_model('resnet50'), _resnet((3, 4, 6, 3), bottleneck=True)),
    # torchvision's MLP uses the exact (erf) GELU; the tanh approximation moves ViT-B's logits by ~1e-3.
    'vit_b_16': Architecture({'name': 'vit', 'patch_size': 16, 'width': 768, 'num_layers': 12,
                              'num_heads': 12, 'mlp_dim': 3072, 'vit_pooling': 'token',
                              'activation': 'gelu_exact'}, _vit(num_layers=12, num_heads=12)),
}

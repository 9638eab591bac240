"""Pretrained weights: torchvision's models imported without PyTorch, fine-tuned from, and exported.

The fixtures (tests/fixtures/torchvision/, made by its make.py with torch) hold the logits torchvision's
own models compute with seeded weights that tests/synthetic_weights.py regenerates here.
"""

import json
import re
import subprocess
import sys

import jax
import numpy as np
import pytest
import synthetic_weights
import tensorflow_datasets as tfds
from conftest import ROOT

import jaxtrain
from jaxtrain import config as config_lib
from jaxtrain import models, weights
from jaxtrain.weights import files

FIXTURES = ROOT / 'tests' / 'fixtures' / 'torchvision'


def _fixture(name: str) -> tuple[dict, dict]:
  fixture = json.loads((FIXTURES / f'{name}.json').read_text())
  return fixture, synthetic_weights.state_dict(fixture['state_dict'], fixture['seed'])


def _zoo_model(name: str, num_classes: int = 1000):
  model_config = config_lib.defaults().model
  model_config.update(weights.torchvision_model(name))
  return models.build(model_config, num_classes)


def test_reads_torch_save_files_without_torch():
  assert 'torch' not in sys.modules
  read = files.read(FIXTURES / 'tensors.pth')
  expected = np.load(FIXTURES / 'tensors.npz')
  assert sorted(read) == sorted(expected)  # The checkpoint's 'state_dict' wrapper is taken off.
  for key in expected:  # Views into one storage, a transpose, float16, bfloat16 and int64, bit for bit.
    np.testing.assert_array_equal(np.asarray(read[key], expected[key].dtype), expected[key])
  assert read['half'].dtype == np.float16 and read['bf16'].dtype.name == 'bfloat16'
  shapes = files.read(FIXTURES / 'tensors.pth', shapes_only=True)
  assert {k: v.shape for k, v in shapes.items()} == {k: v.shape for k, v in expected.items()}
  assert all(v.strides == (0,) * v.ndim for v in shapes.values())  # No weight was read.


def test_rejects_pickles_that_would_run_code(tmp_path):
  import pickle
  import zipfile
  path = tmp_path / 'evil.pth'
  with zipfile.ZipFile(path, 'w') as archive:
    archive.writestr('evil/data.pkl', pickle.dumps({'weight': subprocess.Popen}))
  with pytest.raises(config_lib.ConfigError, match='subprocess.Popen, which a state_dict does not hold'):
    files.read(path)


@pytest.mark.parametrize('name', ['resnet18', 'resnet34', 'resnet50', 'vit_b_16'])
def test_zoo_logits_match_torchvision(name, tmp_path):
  fixture, state_dict = _fixture(name)
  if name == 'resnet18':  # From a file, as users give them; the others from the mapping itself.
    files.write(state_dict, tmp_path / 'resnet18.safetensors')
    state_dict = tmp_path / 'resnet18.safetensors'
  variables = weights.from_torchvision(name, state_dict)
  model = _zoo_model(name)
  images = synthetic_weights.images(fixture['input_seed'], tuple(fixture['input_shape']))
  logits = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, images.transpose(0, 2, 3, 1))
  np.testing.assert_allclose(logits, np.array(fixture['logits']), rtol=0, atol=1e-4)
  # Every variable the zoo model has, in its shape, and nothing else.
  shapes = jax.tree.map(np.shape, variables)
  assert shapes == jax.tree.map(np.shape, jax.eval_shape(model.init, jax.random.key(0), images[:1].transpose(
      0, 2, 3, 1)))


def test_weights_of_another_model_name_what_differs():
  _, resnet34 = _fixture('resnet34')
  error = config_lib.ConfigError
  with pytest.raises(error, match="'layer1.2.conv1.weight'.*which torchvision's resnet18 has not"):
    weights.from_torchvision('resnet18', resnet34)
  with pytest.raises(error, match="no 'layer1.0.conv3.weight', which torchvision's resnet50"):
    weights.from_torchvision('resnet50', resnet34)
  with pytest.raises(error, match='the torchvision model=.resnet101. is not known; choose one '
                                  'of: resnet18, resnet34, resnet50, vit_b_16'):
    weights.from_torchvision('resnet101', resnet34)


def test_bad_weight_files_fail_before_anything_is_written(make_config, tmp_path):
  _, state_dict = _fixture('resnet18')
  state_dict['conv1.weight'] = state_dict['conv1.weight'][:, :, :3, :3]  # A 3x3 stem: not this model's.
  files.write(state_dict, tmp_path / 'bad.safetensors')
  bad = f'torchvision:resnet18:{tmp_path}/bad.safetensors'
  cases = {
      (bad, 'imagenet'):
          'params/stem/Conv_0/kernel is (3, 3, 3, 64) in the file but (7, 7, 1, 64) in the model',
      (bad, 'cifar'): "builds with model.stem='imagenet', not 'cifar': set --config.model.stem=imagenet",
      (f'torchvision:resnet152:{tmp_path}/bad.safetensors', 'imagenet'): "model='resnet152' is not known",
      (f'torchvision:resnet18:{tmp_path}/missing.pth', 'imagenet'): 'missing.pth\' does not exist',
      ('torchvision:resnet18', 'imagenet'): 'should read torchvision:<model>:<file>',
  }
  for (init_from, stem), message in cases.items():
    config = make_config('cifar10_torchvision_resnet18', **{'data.name': 'digits', 'init_from': init_from,
                                                            'model.stem': stem})
    with pytest.raises(config_lib.ConfigError, match=re.escape(message)):
      jaxtrain.fit(config, tmp_path / 'run')
    assert not (tmp_path / 'run').exists()


def test_cli_reports_a_weight_file_of_another_model_in_one_line(tmp_path, data_dir):
  _, resnet34 = _fixture('resnet34')
  files.write(resnet34, tmp_path / 'resnet34.safetensors')
  result = subprocess.run(
      [sys.executable, '-m', 'jaxtrain.main',
       '--config', str(ROOT / 'configs' / 'cifar10_torchvision_resnet18.py'),
       '--config.data.name=digits', f'--config.data.data_dir={data_dir}', f'--workdir={tmp_path}/run',
       f'--config.init_from=torchvision:resnet18:{tmp_path}/resnet34.safetensors'],
      capture_output=True, text=True, timeout=300)
  assert result.returncode == 2, result.stderr
  errors = [line for line in result.stderr.splitlines() if line.startswith('error:')]
  assert len(errors) == 1 and errors[0].startswith('error: init_from='), result.stderr
  assert "'layer1.2." in errors[0] and "which torchvision's resnet18 has not" in errors[0]
  assert 'Traceback' not in result.stderr and not (tmp_path / 'run').exists()


def test_transfer_config_fine_tunes_torchvision_weights(make_config, tmp_path):
  """configs/cifar10_torchvision_resnet18.py on mock CIFAR-10: torchvision's body loaded, a 10-class head."""
  _, state_dict = _fixture('resnet18')
  files.write(state_dict, tmp_path / 'resnet18.safetensors')
  pretrained = weights.from_torchvision('resnet18', tmp_path / 'resnet18.safetensors')
  config = make_config('cifar10_torchvision_resnet18', **{
      'init_from': f'torchvision:resnet18:{tmp_path}/resnet18.safetensors', 'train.num_steps': 1,
      'data.batch_size': 8, 'data.eval_batch_size': 16, 'optim.warmup_steps': 0,
      'optim.freeze': ('params/(stem|ResidualBlock_[0-6])/.*',)})
  with tfds.testing.mock_data(num_examples=16):
    run = jaxtrain.fit(config, tmp_path / 'run')
  params = run.state.params
  assert params['head']['kernel'].shape == (512, 10)  # Re-initialized for 10 classes ...
  for block in ('stem', 'ResidualBlock_3'):  # ... the frozen body is torchvision's, bit for bit.
    jax.tree.map(np.testing.assert_array_equal, params[block], pretrained['params'][block])
  kernel = lambda p: p['ResidualBlock_7']['ConvNorm_0']['Conv_0']['kernel']  # noqa: E731
  assert not np.array_equal(kernel(params), kernel(pretrained['params']))  # The rest trained.


def test_saved_variables_load_back_and_start_a_run(make_config, tmp_path):
  """weights.save / load round trip, and init_from=<file>.safetensors on another image size: a ViT's
  position embeddings are resampled, its class token's entry kept."""
  model = models.build(make_config('mnist_vit').model, 10)
  variables = jax.device_get(model.init(jax.random.key(0), np.zeros((1, 8, 8, 1), np.float32)))
  weights.save(variables, tmp_path / 'vit.safetensors')
  jax.tree.map(np.testing.assert_array_equal, weights.load(tmp_path / 'vit.safetensors'), variables)
  wanted = jax.eval_shape(model.init, jax.random.key(0), np.zeros((1, 16, 16, 1), np.float32))
  loaded = weights.initial_variables(str(tmp_path / 'vit.safetensors'), wanted)
  positions = loaded['params']['pos_embedding']
  assert positions.shape == wanted['params']['pos_embedding'].shape
  np.testing.assert_array_equal(positions[:, 0], variables['params']['pos_embedding'][:, 0])
  np.testing.assert_allclose(positions[:, 1:].mean(), variables['params']['pos_embedding'][:, 1:].mean(),
                             atol=0.01)

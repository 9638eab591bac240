"""Data parallel on 8 simulated CPU devices: single, pmap, mesh and FSDP train alike; clear errors."""

import json
import os
import subprocess
import sys

import pytest
from conftest import CONFIGS, ROOT

pytestmark = pytest.mark.xdist_group('test_parallel')  # One worker builds the module fixture.

# Runs in a subprocess: the device count is fixed when JAX starts.
STRATEGIES_SCRIPT = '''
import json, sys
import jax
import jaxtrain

def device_bytes(tree):
  """Bytes of `tree` held by the first device."""
  first = jax.devices()[0]
  return sum(shard.data.nbytes for leaf in jax.tree.leaves(tree) for shard in leaf.addressable_shards
             if shard.device == first)

strategies = {
    'single': {'parallel.strategy': 'single'},
    'pmap': {'parallel.strategy': 'pmap'},
    'mesh': {'parallel.strategy': 'mesh'},
    'fsdp': {'parallel.strategy': 'mesh', 'parallel.mesh.data': 4, 'parallel.mesh.fsdp': 2},
}
out = {}
for name, overrides in strategies.items():
  config = jaxtrain.load_config(sys.argv[1], {
      'data.data_dir': sys.argv[2], 'train.num_steps': 20, 'train.log_every_steps': 1,
      'train.progress_bar': False, 'model.dropout': 0.2, 'optim.name': 'momentum', 'optim.lr': 0.05,
      'diagnostics.report': False, **overrides})
  run = jaxtrain.fit(config)
  kernel = run.state.params['Block_1']['Conv_0']['kernel']
  out[name] = {'losses': [r['train/loss'] for r in run.history if 'train/loss' in r],
               'grad_norms': [r['train/grad_norm'] for r in run.history if 'train/loss' in r],
               'kernel_spec': str(kernel.sharding.spec), 'state_bytes': device_bytes(run.state),
               'test_accuracy': run.summary['final']['test/accuracy']}
print(json.dumps(out))
'''


def run_on_8_devices(*args, optimized: bool = False) -> subprocess.CompletedProcess:
  """`optimized`: with XLA's optimizations (tests/conftest.py), for runs where 8 simulated devices on the
  machine's cores make the steps cost more than their compilation."""
  env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=8',
         **({'JAX_DISABLE_MOST_OPTIMIZATIONS': '0'} if optimized else {})}
  return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=600)


@pytest.fixture(scope='module')
def strategies(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp('tfds')
  result = run_on_8_devices('-c', STRATEGIES_SCRIPT, str(CONFIGS / 'digits_cnn.py'), str(data_dir),
                            optimized=True)
  assert result.returncode == 0, result.stderr
  return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize('name', ['pmap', 'mesh', 'fsdp'])
def test_every_strategy_trains_like_one_device(strategies, name):
  """BatchNorm over the global batch and dropout keyed by example make the split invisible. (SGD with
  momentum: unlike Adam, it would show a gradient off by a factor.)"""
  single, other = strategies['single']['losses'], strategies[name]['losses']
  assert len(single) == len(other) == 20
  for a, b in zip(single, other, strict=True):
    assert abs(a - b) <= 1e-5 * max(1.0, abs(a))
  for a, b in zip(strategies['single']['grad_norms'], strategies[name]['grad_norms'], strict=True):
    assert abs(a - b) <= 1e-4 * max(1.0, abs(a))
  assert single[-1] < single[0]
  assert abs(strategies[name]['test_accuracy'] - strategies['single']['test_accuracy']) <= 1 / 360


def test_fsdp_shards_large_kernels_and_holds_less_per_device(strategies):
  assert strategies['fsdp']['kernel_spec'] == "P(None, None, None, 'fsdp')"
  assert strategies['mesh']['kernel_spec'] == 'P()'
  assert strategies['fsdp']['state_bytes'] < 0.7 * strategies['mesh']['state_bytes']


@pytest.mark.parametrize('overrides, message', [
    (['--config.parallel.strategy=mesh', '--config.parallel.mesh.data=3'],
     'parallel.mesh data=3 x fsdp=1 x model=1 does not divide the 8 devices'),
    (['--config.parallel.strategy=mesh', '--config.parallel.mesh.data=2', '--config.parallel.mesh.fsdp=2'],
     'uses 4 devices but there are 8'),
    (['--config.parallel.strategy=mesh', '--config.parallel.mesh.fsdp=-1', '--config.parallel.mesh.data=-1'],
     'has -1 on several axes'),
    (['--config.parallel.strategy=pmap', '--config.data.batch_size=36'],
     'data.batch_size=36 does not divide evenly across the 8 data-parallel devices'),
], ids=['indivisible-mesh', 'mesh-too-small', 'two-minus-ones', 'indivisible-batch'])
def test_device_mistakes_exit_2_with_one_error_line(tmp_path, overrides, message):
  result = run_on_8_devices('-m', 'jaxtrain.main', '--config', str(CONFIGS / 'digits_cnn.py'),
                            f'--workdir={tmp_path / "run"}', f'--config.data.data_dir={tmp_path / "tfds"}',
                            '--config.train.num_steps=2', *overrides)
  assert result.returncode == 2, result.stderr
  errors = [line for line in result.stderr.splitlines() if line.startswith('error:')]
  assert len(errors) == 1 and message in errors[0], result.stderr
  assert not (tmp_path / 'run').exists()


# Tensor parallelism: data=2 x model=4 against one device, on small GPT and ViT models.
TENSOR_PARALLEL_SCRIPT = '''
import json, sys
import jax
import numpy as np
import jaxtrain

def first_device_bytes(leaf):
  return sum(s.data.nbytes for s in leaf.addressable_shards if s.device == jax.devices()[0])

rng = np.random.default_rng(0)
tokens = {'tokens': rng.integers(1, 32, (256, 16)).astype(np.int32)}
text = jaxtrain.data.Arrays(train={**tokens, 'targets': np.roll(tokens['tokens'], -1, axis=1)},
                            eval={**tokens, 'targets': np.roll(tokens['tokens'], -1, axis=1)})
images = jaxtrain.data.Arrays(train={'image': rng.normal(size=(256, 16, 16, 3)).astype(np.float32),
                                     'label': rng.integers(0, 4, 256).astype(np.int32)})
models = {
    'gpt': (text, {'model.name': 'gpt', 'model.inputs': ('tokens',), 'task.name': 'language_modeling',
                   'model.max_len': 16, 'model.num_heads': 4}),
    'vit': (images, {'model.name': 'vit', 'model.patch_size': 4, 'model.num_heads': 4,
                     'data.validation_fraction': 0.25}),
}
out = {}
for name, (arrays, overrides) in models.items():
  for strategy, mesh in (('single', {'parallel.strategy': 'single'}),
                         ('tensor', {'parallel.strategy': 'mesh', 'parallel.mesh.data': 2,
                                     'parallel.mesh.model': 4})):
    config = jaxtrain.config.defaults()
    jaxtrain.config.override(config, {
        'model.width': 32, 'model.num_layers': 2, 'model.mlp_dim': 64, 'model.dropout': 0.1,
        'data.normalize': (), 'data.batch_size': 16, 'train.num_steps': 8, 'train.log_every_steps': 1,
        'train.progress_bar': False, 'optim.name': 'momentum', 'optim.lr': 0.05, 'diagnostics.report': False,
        'compile_cache.enabled': False, **overrides, **mesh})
    run = jaxtrain.fit(config, data=arrays)
    block = run.state.params['block_0' if name == 'gpt' else 'EncoderBlock_0']
    split = block['mlp']['fc']['kernel'] if name == 'gpt' else block['Dense_0']['kernel']
    out[f'{name}/{strategy}'] = {
        'losses': [r['train/loss'] for r in run.history if 'train/loss' in r],
        'split_spec': str(split.sharding.spec), 'split_bytes': first_device_bytes(split),
        'params_bytes': sum(first_device_bytes(x) for x in jax.tree.leaves(run.state.params))}
print(json.dumps(out))
'''


@pytest.fixture(scope='module')
def tensor_parallel():
  result = run_on_8_devices('-c', TENSOR_PARALLEL_SCRIPT)
  assert result.returncode == 0, result.stderr
  return json.loads(result.stdout.strip().splitlines()[-1])


def test_tensor_parallel_trains_like_one_device_and_splits_the_kernels(tensor_parallel):
  for name in ('gpt', 'vit'):
    single, tensor = tensor_parallel[f'{name}/single'], tensor_parallel[f'{name}/tensor']
    assert len(single['losses']) == len(tensor['losses']) == 8
    for a, b in zip(single['losses'], tensor['losses'], strict=True):
      assert abs(a - b) <= 1e-4 * max(1.0, abs(a)), name
    assert tensor['split_spec'] == "P(None, 'model')" and single['split_spec'] == 'P()'
    assert tensor['split_bytes'] * 4 == single['split_bytes']  # A quarter of the kernel per device.
    assert tensor['params_bytes'] < 0.5 * single['params_bytes']  # Most parameters are in the split kernels.

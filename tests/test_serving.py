"""Predictions from a trained run and its export (jaxtrain/serving.py): by API and CLI, the exported
program reloaded by a plain JAX process that never imports jaxtrain, and one-line errors for wrong input."""

import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from conftest import CONFIGS, ROOT

import jaxtrain
from jaxtrain import build, serving

pytestmark = pytest.mark.xdist_group('test_serving')


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  data_dir, workdir = str(tmp_path_factory.mktemp('tfds')), tmp_path_factory.mktemp('run')
  overrides = {'data.data_dir': data_dir, 'train.num_steps': 30, 'train.progress_bar': False,
               'compile_cache.enabled': False, 'diagnostics.report': False, 'data.eval_batch_size': 64}
  config = jaxtrain.load_config(CONFIGS / 'digits_mlp.py', overrides)
  run = jaxtrain.fit(config, workdir)
  split = build.prepare(config, None).splits.eval
  return config, workdir, run, np.asarray(split['image']), np.asarray(split['label']), overrides


def cli(trained, *args):
  config, workdir, _, _, _, overrides = trained
  command = [sys.executable, '-m', 'jaxtrain.main', '--config', str(CONFIGS / 'digits_mlp.py'),
             f'--workdir={workdir}', *(f'--config.{k}={v}' for k, v in overrides.items()), *args]
  return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, env=os.environ)


def test_predict_normalizes_pads_and_matches_the_evaluation(trained):
  config, workdir, run, images, labels, _ = trained
  assert len(images) % config.data.eval_batch_size  # The last batch is padded.
  outputs = jaxtrain.predict(config, workdir, images)
  assert outputs.shape == (len(images), 10)
  assert np.mean(outputs.argmax(-1) == labels) == pytest.approx(run.summary['final']['eval/accuracy'])
  np.testing.assert_allclose(jaxtrain.predict(config, workdir, {'image': images[:5]}), outputs[:5],
                             rtol=1e-5, atol=1e-5)


def test_cli_predict_writes_predictions_npy(trained, tmp_path):
  config, workdir, _, images, _, _ = trained
  np.save(tmp_path / 'inputs.npy', images[:7])
  result = cli(trained, '--mode=predict', f'--config.predict.input={tmp_path / "inputs.npy"}')
  assert result.returncode == 0, result.stderr
  written = np.load(workdir / serving.PREDICTIONS_FILE)
  np.testing.assert_allclose(written, jaxtrain.predict(config, workdir, images[:7]), rtol=1e-5, atol=1e-5)


def test_export_reloads_in_plain_jax_with_the_same_outputs(trained, tmp_path):
  config, workdir, run, images, _, _ = trained
  result = cli(trained, '--mode=export')
  assert result.returncode == 0, result.stderr
  np.save(tmp_path / 'inputs.npy', images[:9])
  script = textwrap.dedent(f'''
      import json, sys
      import jax, numpy as np
      exported = jax.export.deserialize(open({str(workdir / "export" / "model.bin")!r}, 'rb').read())
      meta = json.load(open({str(workdir / "export" / "meta.json")!r}))
      inputs = np.load({str(tmp_path / "inputs.npy")!r}).astype(meta['inputs'][0]['dtype'])
      np.save({str(tmp_path / "outputs.npy")!r}, np.asarray(exported.call(inputs)))
      assert not any(name.startswith('jaxtrain') for name in sys.modules)
  ''')
  reloaded = subprocess.run([sys.executable, '-c', script], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300)
  assert reloaded.returncode == 0, reloaded.stderr
  np.testing.assert_allclose(np.load(tmp_path / 'outputs.npy'), jaxtrain.predict(config, workdir, images[:9]),
                             rtol=1e-5, atol=1e-5)
  # The weights themselves, as safetensors: the run's parameters, bit for bit.
  exported = jaxtrain.weights.load(workdir / 'export' / serving.VARIABLES_FILE)
  jax.tree.map(np.testing.assert_array_equal, exported['params'], jax.device_get(run.state.params))


def test_wrong_inputs_are_one_line_errors(trained, tmp_path):
  config, workdir, _, images, _, _ = trained
  expected = r"predict input 'image' has shape \(4, 8, 8\), but the model was trained on \(batch, 8, 8, 1\)"
  with pytest.raises(jaxtrain.ConfigError, match=expected):
    jaxtrain.predict(config, workdir, images[:4, ..., 0])
  np.save(tmp_path / 'wrong.npy', images[:3, :4])
  for args, message in [
      ((f'--config.predict.input={tmp_path / "wrong.npy"}',), "predict input 'image' has shape"),
      ((), '--mode predict needs the inputs'),
      ((f'--config.predict.input={tmp_path / "none.npy"}',), 'cannot be read as .npy')]:
    result = cli(trained, '--mode=predict', *args)
    errors = [line for line in result.stderr.splitlines() if line.startswith('error:')]
    assert result.returncode == 2 and len(errors) == 1 and message in errors[0], result.stderr

"""Data parallel on simulated CPU devices: same losses as one device, clear error on indivisible batches."""

import json
import os
import subprocess
import sys

from conftest import CONFIGS, ROOT


def train_losses(tmp_path, name: str, devices: int, data_dir: str) -> list[float]:
  """Trains 20 steps in a subprocess (the device count is fixed when JAX starts)."""
  workdir = tmp_path / name
  command = [sys.executable, '-m', 'jaxtrain.main', '--config', str(CONFIGS / 'digits_cnn.py'),
             f'--workdir={workdir}', f'--config.data.data_dir={data_dir}',
             '--config.train.num_steps=20', '--config.train.log_every_steps=1',
             '--config.train.progress_bar=False', '--config.model.dropout=0.2']
  env = {**os.environ, 'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices}'}
  result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr
  records = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  return [r['train/loss'] for r in records if 'train/loss' in r]


def test_eight_device_mesh_matches_one_device(tmp_path, data_dir):
  """BatchNorm over the global batch and dropout keyed by step make the split invisible."""
  single = train_losses(tmp_path, 'single', 1, data_dir)
  mesh = train_losses(tmp_path, 'mesh', 8, data_dir)
  assert len(single) == len(mesh) == 20
  for a, b in zip(single, mesh, strict=True):
    assert abs(a - b) <= 1e-5 * max(1.0, abs(a))
  assert single[-1] < single[0]

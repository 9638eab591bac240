"""Seeing a run (jaxtrain/perf.py, callbacks/profiler.py): the compiled step's FLOPs and memory before step
1, MFU against a device's peak, a one-line error for a step that cannot fit, and a profiler trace of the
configured steps."""

import gzip
import json
import os
import subprocess
import sys
import types

import pytest
from conftest import CONFIGS, ROOT

import jaxtrain
from jaxtrain import perf
from jaxtrain import state as state_lib


@pytest.mark.parametrize('kind, dtype, expected', [
    ('NVIDIA H100 80GB HBM3', 'bfloat16', 989e12),
    ('NVIDIA H100 PCIe', 'bfloat16', 756e12),
    ('NVIDIA H200', 'float32', 495e12),
    ('NVIDIA A100-SXM4-40GB', 'float32', 156e12),
    ('NVIDIA L4', 'bfloat16', 121e12),
    ('TPU v5 lite', 'bfloat16', 197e12),
    ('TPU v5', 'bfloat16', 459e12),
    ('TPU v6 lite', 'bfloat16', 918e12),
    ('cpu', 'float32', None),
])
def test_peak_flops_by_device_kind(kind, dtype, expected):
  assert perf.peak_flops(types.SimpleNamespace(device_kind=kind), dtype) == expected
  assert perf.peak_flops(types.SimpleNamespace(device_kind=kind), dtype, override=2e12) == 2e12


def test_a_run_reports_its_step_flops_memory_and_mfu_and_traces_the_asked_steps(make_config, tmp_path):
  config = make_config(**{'perf.peak_flops': 1e11, 'profile.start_step': 3, 'profile.num_steps': 2})
  run = jaxtrain.fit(config, tmp_path)
  figures = run.summary['perf']
  num_params = state_lib.num_params(run.state.params)
  assert figures['memory']['params'] == 4 * num_params  # float32, one device.
  assert figures['memory']['opt_state'] >= 2 * figures['memory']['params']  # Adam's two moments.
  assert figures['memory']['total'] >= figures['memory']['temporaries'] > 0
  # A convolution's forward and backward: a few times 2 x MACs of the batch; the count is XLA's own.
  assert 1e7 < figures['step_flops'] < 1e9 and figures['peak_flops'] == 1e11
  for record in (r for r in run.history if 'train/loss' in r):
    assert record['train/mfu'] == pytest.approx(record['train/steps_per_sec'] * figures['step_flops'] / 1e11)

  traces = list((tmp_path / 'profile').rglob('*.trace.json.gz'))
  assert len(traces) == 1 and list((tmp_path / 'profile').rglob('*.xplane.pb'))
  events = json.loads(gzip.decompress(traces[0].read_bytes()))['traceEvents']
  assert sorted(int(e['args']['step_num']) for e in events if e.get('name') == 'train') == [3, 4]


def test_no_mfu_on_a_cpu_without_a_peak(make_config, tmp_path):
  run = jaxtrain.fit(make_config(**{'train.num_steps': 10}), tmp_path)
  assert run.summary['perf']['peak_flops'] is None
  assert not any('train/mfu' in r for r in run.history)


def test_a_step_that_cannot_fit_stops_before_step_one_with_the_figures(data_dir, tmp_path):
  command = [sys.executable, '-m', 'jaxtrain.main', '--config', str(CONFIGS / 'digits_cnn.py'),
             f'--workdir={tmp_path}', f'--config.data.data_dir={data_dir}',
             '--config.train.progress_bar=False', '--config.perf.device_memory=1000000',
             '--config.train.num_steps=10']
  result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, env=os.environ)
  assert result.returncode == 2
  errors = [line for line in result.stderr.splitlines() if line.startswith('error:')]
  assert len(errors) == 1, result.stderr
  assert 'GiB per device but the device has 0.000931 GiB' in errors[0]
  for named in ('temporaries', 'data.batch_size', 'optim.accumulate_steps', 'parallel.mesh.fsdp'):
    assert named in errors[0], named
  assert not (tmp_path / 'checkpoints').exists() or not any((tmp_path / 'checkpoints').iterdir())
  assert not (tmp_path / 'metrics.jsonl').read_text()  # Stopped before step 1: no record.

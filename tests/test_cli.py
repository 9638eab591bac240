"""The command line: bad input exits 2 with one `error:` line naming the key, and damages nothing."""

import hashlib
import json
import os
import pathlib
import subprocess
import sys

import pytest
from conftest import CONFIGS, ROOT

import jaxtrain

pytestmark = pytest.mark.xdist_group('test_cli')  # One worker builds the module fixture.

QUICK = ['--config.train.num_steps=10', '--config.train.progress_bar=False',
         '--config.train.log_every_steps=5']


def cli(*args, workdir, data_dir, env=None):
  command = [sys.executable, '-m', 'jaxtrain.main', *args, f'--workdir={workdir}']
  if data_dir and not any(a.startswith('--config.data.data_dir') for a in args):
    command.append(f'--config.data.data_dir={data_dir}')
  return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300,
                        env={**os.environ, **(env or {})})


def snapshot(workdir: pathlib.Path) -> dict:
  return {str(p.relative_to(workdir)): hashlib.md5(p.read_bytes()).hexdigest()
          for p in sorted(workdir.rglob('*')) if p.is_file()}


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """A small finished run whose files the bad commands must leave untouched."""
  root = tmp_path_factory.mktemp('cli')
  data_dir, workdir = root / 'tfds', root / 'run'
  result = cli('--config', str(CONFIGS / 'digits_cnn.py'), *QUICK, workdir=workdir,
               data_dir=data_dir)
  assert result.returncode == 0, result.stderr
  return workdir, data_dir


# What the command line itself parses: a key, a value's type, the mode; and one error of each later kind
# (a checkpoint that does not fit, a data set that is not there), to prove every kind reaches `error:`.
CLI_BAD = [
    (['--config.optim.lrr=1'], "unknown config key 'optim.lrr'; did you mean 'optim.lr'"),
    (['--config.optim.lr=abc'], 'optim.lr'),
    (['--config.train.num_steps=1.5'], 'train.num_steps'),
    (['--config.optim.lr=-0.1'], 'optim.lr=-0.1 is out of range'),
    (['--config.model.features=(16,)'],
     'params/Block_0/BatchNorm_0/bias has shape (32,) in the checkpoint but (16,) in the config'),
    (['--mode=dance'], "--mode='dance' is not known; choose one of: train, eval"),
    (['--config.data.name=mnist', '--config.data.data_dir=/nonexistent/tfds'],
     "data set 'mnist' is not prepared"),
]

# The same checks run for `jaxtrain.fit` (build.prepare), so the rest is tested in-process: each would cost
# a process start (3 s) on the command line, which the cases above already prove.
FIT_BAD = [
    ({'model.dropout': 1.0}, 'model.dropout=1.0 is out of range'),
    ({'data.batch_size': 0}, 'data.batch_size=0 is out of range'),
    ({'optim.name': 'adamax'}, "optim.name='adamax' is not known; choose one of: adadelta"),
    ({'optim.schedule': 'poly'}, "optim.schedule='poly' is not known"),
    ({'model.activation': 'swish'}, "model.activation='swish' is not known"),
    ({'model.kernel_init': 'he_foo'}, "model.kernel_init='he_foo' is not known"),
    ({'model.bias_init': 'normal(x)'}, 'model.bias_init'),
    ({'model.name': 'resnet'}, "model.name='resnet' is not known; choose one of: cnn, gpt, mlp, "),
    ({'data.name': 'imagenet'}, "data.name='imagenet' is not known"),
    ({'model.norm': 'group'}, "model.norm='group' is not known"),
    ({'train.num_steps': 0, 'train.num_epochs': 0}, 'neither train.num_epochs nor train.num_steps is set'),
    ({'data.batch_size': 100000}, 'data.batch_size=100000 is larger than'),
    ({'data.validation_fraction': 1.0}, 'data.validation_fraction'),
    ({'parallel.strategy': 'tpu'}, "parallel.strategy='tpu' is not known"),
    ({'model.bias_init': 'he_normal'}, "model.bias_init='he_normal' needs a weight matrix"),
    ({'checkpoint.monitor': 'eval/acc'},
     "checkpoint.monitor='eval/acc' is not a metric this run reports; "
     'choose one of: eval/accuracy, eval/loss'),
    ({'optim.name': 'sgd'},
     'opt_state/0/count (shape ()) is in the checkpoint but not in the configured state'),
    ({'model.activation': 'tanh'}, "holds a run with model.activation='relu'"),
    ({'checkpoint.restore_from': '/nonexistent'}, "checkpoint.restore_from='/nonexistent' holds no"),
    ({'train.nonfinite': 'ignore'}, "choose 'halt' or 'skip'"),
    ({'early_stopping.patience': 2, 'checkpoint.keep_best': 0}, 'checkpoint.keep_best=0 keeps none'),
    ({'seed': 1}, 'holds a run with seed=0'),
]


@pytest.mark.parametrize('args, message', CLI_BAD, ids=[' '.join(a) for a, _ in CLI_BAD])
def test_bad_input_exits_2_with_one_error_line_and_damages_nothing(trained, args, message):
  workdir, data_dir = trained
  before = snapshot(workdir)
  result = cli('--config', str(CONFIGS / 'digits_cnn.py'), *QUICK[1:], *args, workdir=workdir,
               data_dir=data_dir)
  assert result.returncode == 2, result.stderr
  errors = [line for line in result.stderr.splitlines() if line.startswith('error:')]
  assert len(errors) == 1, result.stderr
  assert message in errors[0]
  assert snapshot(workdir) == before


@pytest.mark.parametrize('overrides, message', FIT_BAD, ids=[str(o) for o, _ in FIT_BAD])
def test_bad_input_to_fit_is_one_config_error_and_damages_nothing(trained, overrides, message):
  workdir, data_dir = trained
  before = snapshot(workdir)
  quick = {'train.progress_bar': False, 'train.log_every_steps': 5, 'data.data_dir': str(data_dir),
           'compile_cache.enabled': False}  # As QUICK[1:] above; JAX's cache stays the tests' (conftest).
  with pytest.raises(jaxtrain.ConfigError) as error:
    jaxtrain.fit(jaxtrain.load_config(CONFIGS / 'digits_cnn.py', {**quick, **overrides}), workdir)
  assert message in str(error.value) and '\n' not in str(error.value)
  assert snapshot(workdir) == before


def test_rerunning_a_finished_run_with_other_settings_keeps_its_config(trained):
  workdir, data_dir = trained
  before = snapshot(workdir)
  result = cli('--config', str(CONFIGS / 'digits_cnn.py'), *QUICK, '--config.optim.lr=0.5',
               workdir=workdir, data_dir=data_dir)
  assert result.returncode == 0, result.stderr
  assert snapshot(workdir) == before


def test_missing_config_file_and_file_as_workdir(tmp_path):
  result = cli('--config', 'configs/nope.py', workdir=tmp_path / 'w', data_dir=None)
  assert result.returncode == 2
  assert result.stderr.strip().endswith("config file 'configs/nope.py' does not exist; "
                                        'try configs/digits_cnn.py')
  not_a_dir = tmp_path / 'file'
  not_a_dir.write_text('keep me')
  result = cli('--config', str(CONFIGS / 'digits_cnn.py'), *QUICK, workdir=not_a_dir,
               data_dir=tmp_path / 'tfds')
  assert result.returncode == 2 and 'is a file' in result.stderr
  assert not_a_dir.read_text() == 'keep me'


def test_batch_not_divisible_by_device_count(tmp_path):
  result = cli('--config', str(CONFIGS / 'digits_cnn.py'), *QUICK, '--config.data.batch_size=30',
               workdir=tmp_path / 'w', data_dir=tmp_path / 'tfds',
               env={'XLA_FLAGS': '--xla_force_host_platform_device_count=4'})
  assert result.returncode == 2
  assert 'data.batch_size=30 does not divide evenly across the 4 data-parallel devices' in result.stderr
  assert not (tmp_path / 'w').exists()


def test_train_then_eval_reports_the_same_metrics(trained):
  workdir, data_dir = trained
  summary = json.loads((workdir / 'summary.json').read_text())
  result = cli('--config', str(CONFIGS / 'digits_cnn.py'), *QUICK, '--mode=eval', workdir=workdir,
               data_dir=data_dir)
  assert result.returncode == 0, result.stderr
  metrics = json.loads(result.stdout.strip().splitlines()[-1])
  assert metrics['step'] == 10
  for key, value in summary['final'].items():
    assert metrics[key] == pytest.approx(value, abs=1e-6)


def test_eval_without_a_trained_run_is_an_error(tmp_path):
  result = cli('--config', str(CONFIGS / 'digits_cnn.py'), *QUICK, '--mode=eval',
               workdir=tmp_path / 'empty', data_dir=tmp_path / 'tfds')
  assert result.returncode == 2 and 'train it first' in result.stderr


def test_python_overrides_are_checked_like_the_command_line():
  with pytest.raises(jaxtrain.ConfigError, match="did you mean 'optim.lr'"):
    jaxtrain.load_config(CONFIGS / 'digits_cnn.py', {'optim.lrr': 1.0})
  with pytest.raises(jaxtrain.ConfigError, match='optim.lr=.*wrong type'):
    jaxtrain.load_config(CONFIGS / 'digits_cnn.py', {'optim.lr': 'fast'})
  config = jaxtrain.load_config(CONFIGS / 'digits_mlp.py', {'model.features': [64], 'optim.lr': 1})
  assert config.model.features == (64,) and config.optim.lr == 1.0

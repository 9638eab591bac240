"""W&B and MLflow behind the writer interface (callbacks/trackers.py): W&B in offline mode, MLflow on a real
local SQLite store read back through its client; a resumed run continues the same tracked run."""

import json

import pytest

import jaxtrain
from jaxtrain import config as config_lib
from jaxtrain.callbacks import trackers


def train_records(workdir) -> list[dict]:
  lines = (workdir / 'metrics.jsonl').read_text().splitlines()
  return [r for r in map(json.loads, lines) if 'train/loss' in r]


def test_mlflow_run_holds_every_record_and_continues_on_resume(make_config, tmp_path):
  from mlflow.tracking import MlflowClient

  config = make_config('digits_mlp', **{'logging.writers': ('mlflow',), 'logging.project': 'tests'})
  jaxtrain.fit(config, tmp_path)
  run_id = json.loads((tmp_path / trackers.TRACKERS_FILE).read_text())['mlflow']
  client = MlflowClient(tracking_uri=f'sqlite:///{tmp_path / trackers.MLFLOW_DB}')
  assert client.get_run(run_id).data.params['optim.lr'] == str(config.optim.lr)
  assert client.get_experiment(client.get_run(run_id).info.experiment_id).name == 'tests'

  config.train.num_steps = 40  # Resumed in the same workdir: the same MLflow run, no step twice.
  jaxtrain.fit(config, tmp_path)
  assert json.loads((tmp_path / trackers.TRACKERS_FILE).read_text())['mlflow'] == run_id
  history = sorted(client.get_metric_history(run_id, 'train/loss'), key=lambda m: m.step)
  expected = train_records(tmp_path)
  assert [m.step for m in history] == [r['step'] for r in expected] == [10, 20, 30, 40]
  assert [m.value for m in history] == pytest.approx([r['train/loss'] for r in expected])
  assert client.get_metric_history(run_id, 'eval/accuracy')


def test_wandb_offline_run_is_written_in_the_workdir(make_config, tmp_path, monkeypatch):
  monkeypatch.setenv('WANDB_SILENT', 'true')
  config = make_config('digits_mlp', **{'logging.writers': ('wandb',), 'logging.wandb_mode': 'offline'})
  jaxtrain.fit(config, tmp_path)
  run_id = json.loads((tmp_path / trackers.TRACKERS_FILE).read_text())['wandb']
  (run_file,) = (tmp_path / 'wandb').glob(f'offline-run-*-{run_id}/run-{run_id}.wandb')
  # The run's records (what `wandb sync` uploads); wandb has no reader for them in Python, so the keys and
  # the JSON values it stores are looked up in the file.
  logged = run_file.read_bytes()
  for record in train_records(tmp_path):
    assert json.dumps(record['train/loss']).encode() in logged
  assert b'eval/accuracy' in logged and b'optim' in logged  # The metrics and the config.


def test_tracker_mistakes_are_config_errors(make_config, monkeypatch):
  with pytest.raises(jaxtrain.ConfigError, match="logging.writers.*'neptune'.*choose one of: mlflow, wandb"):
    config_lib.validate(make_config(**{'logging.writers': ('neptune',)}))
  monkeypatch.setitem(config_lib.TRACKERS, 'wandb', 'a_package_that_is_not_installed')
  with pytest.raises(jaxtrain.ConfigError, match=r"pip install -e '\.\[wandb\]'"):
    config_lib.validate(make_config(**{'logging.writers': ('wandb',)}))

"""Experiment trackers behind the writer interface (`write(record)`, `close()`): Weights & Biases and MLflow,
chosen with `logging.writers` and fed the same records as metrics.jsonl and TensorBoard.

Neither is a dependency: `pip install -e '.[wandb]'` or `'.[mlflow]'`; a tracker named without its package
is a ConfigError before anything is written (config.validate). A run resumed in the same workdir continues
the same tracked run: the W&B and MLflow run ids are kept in the workdir (`trackers.json`).
"""

import json
import math
import pathlib
import time

import ml_collections

from jaxtrain.config import flatten

TRACKERS_FILE = 'trackers.json'
MLFLOW_DB = 'mlflow.db'
_BATCH = 100  # MLflow takes at most 100 params per log_batch call.


def _scalars(record: dict) -> dict:
  return {key: float(value) for key, value in record.items()
          if key not in ('step', 'epoch') and isinstance(value, int | float) and math.isfinite(value)}


def _ids(workdir: pathlib.Path) -> dict:
  path = workdir / TRACKERS_FILE
  return json.loads(path.read_text()) if path.exists() else {}


def _keep_id(workdir: pathlib.Path, name: str, run_id: str) -> None:
  ids = _ids(workdir)
  if ids.get(name) != run_id:
    (workdir / TRACKERS_FILE).write_text(json.dumps({**ids, name: run_id}, indent=2) + '\n')


class WandbWriter:
  """One W&B run per workdir (`logging.project`, `logging.wandb_mode`: online, offline or disabled)."""

  def __init__(self, workdir: pathlib.Path, config: ml_collections.ConfigDict):
    import wandb  # noqa: PLC0415 - an optional tracker, imported only when asked for.

    self._run = wandb.init(project=config.logging.project, name=workdir.name, dir=str(workdir),
                           id=_ids(workdir).get('wandb'), resume='allow', mode=config.logging.wandb_mode,
                           config=config.to_dict())
    _keep_id(workdir, 'wandb', self._run.id)

  def write(self, record: dict) -> None:
    self._run.log({**_scalars(record), 'epoch': record.get('epoch', 0.0)}, step=record['step'])

  def close(self) -> None:
    self._run.finish()


class MLflowWriter:
  """One MLflow run per workdir in `logging.mlflow_uri` (default: workdir/mlflow.db, SQLite: MLflow 3 keeps
  its file store in maintenance only), in the experiment `logging.project`; the config's keys are its
  params."""

  def __init__(self, workdir: pathlib.Path, config: ml_collections.ConfigDict):
    from mlflow.entities import Param  # noqa: PLC0415 - an optional tracker, imported only when asked for.
    from mlflow.tracking import MlflowClient  # noqa: PLC0415

    uri = config.logging.mlflow_uri or f'sqlite:///{(workdir / MLFLOW_DB).resolve()}'
    self._client = MlflowClient(tracking_uri=uri)
    run_id = _ids(workdir).get('mlflow')
    if run_id is None:
      experiment = self._client.get_experiment_by_name(config.logging.project)
      experiment_id = (experiment.experiment_id if experiment
                       else self._client.create_experiment(config.logging.project))
      run_id = self._client.create_run(experiment_id, run_name=workdir.name).info.run_id
      params = [Param(key, str(value)[:500]) for key, value in flatten(config.to_dict()).items()]
      for start in range(0, len(params), _BATCH):
        self._client.log_batch(run_id, params=params[start:start + _BATCH])
    self._run_id = run_id
    _keep_id(workdir, 'mlflow', run_id)

  def write(self, record: dict) -> None:
    from mlflow.entities import Metric  # noqa: PLC0415 - imported by __init__ already.

    now = int(time.time() * 1000)
    metrics = [Metric(key, value, now, record['step']) for key, value in _scalars(record).items()]
    self._client.log_batch(self._run_id, metrics=metrics)

  def close(self) -> None:
    self._client.set_terminated(self._run_id)


WRITERS = {'wandb': WandbWriter, 'mlflow': MLflowWriter}


def build(workdir: pathlib.Path, config: ml_collections.ConfigDict) -> list:
  """The writers `logging.writers` names."""
  return [WRITERS[name](workdir, config) for name in config.logging.writers]

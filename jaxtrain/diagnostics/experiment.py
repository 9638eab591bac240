"""What a diagnostic runs on: the run's validated pieces (`build.prepare`) and its normalization, read-only.

Diagnostics never write a workdir's checkpoints, metrics or normalization.json: the statistics a workdir
already holds are read (so the doctor sees the inputs training sees), otherwise computed and kept in memory.
"""

import json
import math
import pathlib

import ml_collections

from jaxtrain import build, data


def prepare(config: ml_collections.ConfigDict | None, workdir: str | pathlib.Path | None, *, model=None,
            data_source=None, task=None):
  """(experiment, normalization statistics, workdir), all checked before any file is written (like `fit`);
  a None workdir becomes a temporary directory."""
  workdir = pathlib.Path(workdir) if workdir else None
  config = build.with_objects(config, model, data_source, task)
  exp = build.prepare(config, workdir, model=model, data_source=data_source, task=task)
  stored = workdir / data.STATS_FILE if workdir else None
  if stored and stored.exists():
    normalization = json.loads(stored.read_text())
  else:
    normalization = data.compute_stats(exp.splits.train, config.data.stats_max_examples,
                                       tuple(config.data.normalize))
  return exp, normalization, workdir or build.temporary_workdir()


def _strict(value):
  """JSON has no NaN or Infinity: a non-finite number is written as the string 'nan', 'inf' or '-inf'."""
  if isinstance(value, float) and not math.isfinite(value):
    return str(value)
  if isinstance(value, dict):
    return {k: _strict(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_strict(v) for v in value]
  return value


def write_json(path: pathlib.Path, content: dict) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(_strict(content), indent=2, allow_nan=False) + '\n')


def batches(exp, normalization: dict, batch_size: int):
  """The training stream from step 0 (the batches a fresh run starts with), normalized as in training."""
  return data.iterate(data.train_batches(exp.splits.train, normalization, batch_size, exp.config.seed))

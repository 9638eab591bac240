"""Ensembles (note 003): the averaged predicted probabilities of several runs, or of a run's snapshots.

`--mode eval` reports, beside the run's own metrics, `<split>/ensemble_accuracy` (argmax of the mean
probabilities), `<split>/ensemble_loss` (its cross-entropy) and `<split>/member_accuracy` (the mean of the
members' accuracies) for the eval and test splits. Members are `ensemble.members` (workdirs), else a
population's workdir/members/*, else the run's snapshots/ (snapshot ensemble). Each member uses its own
config and normalization statistics, so runs with other seeds or hyperparameters can be combined as long as
they read the same data set.
"""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from jaxtrain import build, checkpoint, data, evaluation
from jaxtrain import config as config_lib
from jaxtrain import state as state_lib
from jaxtrain.callbacks import snapshots
from jaxtrain.experiments import population, transfer

RESULT_FILE = 'ensemble.json'


def _members(config, workdir: pathlib.Path) -> list[tuple]:
  """[(config, checkpoint folder, step or None, normalization folder)] of the ensemble; [] when none."""
  if config.ensemble.members:
    return [(transfer.source_config(m, 'ensemble.members'), checkpoint.checkpoint_dir(pathlib.Path(m)), None,
             pathlib.Path(m)) for m in config.ensemble.members]
  folders = sorted((workdir / population.MEMBERS_DIR).glob('m*'), key=lambda p: int(p.name[1:]))
  if folders:
    return [(transfer.source_config(m), checkpoint.checkpoint_dir(m), None, m) for m in folders]
  snaps = workdir / snapshots.SNAPSHOT_DIR
  if snaps.is_dir():
    steps = checkpoint.Checkpointer(snaps, config.checkpoint, read_only=True).steps()
    return [(config, snaps, step, workdir) for step in steps]
  return []


def _probabilities(member_config, folder, step, stats_dir, **objects) -> tuple[dict, dict]:
  """({split: (n, C) probabilities}, {split: (n,) labels}) of one member on the eval and test splits;
  `objects`: the model, data_source and task a run was trained with, passed to jaxtrain.evaluate."""
  exp = build.prepare(member_config, None, **objects)
  if exp.program.task.name != 'classification':
    raise config_lib.ConfigError(f'ensembles average class probabilities; task.name='
                                 f"{exp.program.task.name!r} is not 'classification'")
  ckpt = checkpoint.Checkpointer(folder, member_config.checkpoint, read_only=True)
  restored = ckpt.restore(exp.abstract_state(), step)
  ckpt.close()
  if restored is None:
    raise config_lib.ConfigError(f'no readable checkpoint in {str(folder)!r} for the ensemble')
  state = restored.state
  if member_config.optim.ema_decay > 0 and member_config.optim.ema_eval:
    state = state.replace(params=state.ema)
  stats = json.loads((stats_dir / data.STATS_FILE).read_text())
  predict = jax.jit(lambda s, batch: jax.nn.softmax(exp.program.model.apply(
      state_lib.variables(s), batch, train=False)))
  probs, labels = {}, {}
  for name, split in (('eval', exp.splits.eval), ('test', exp.splits.test)):
    outs, ys = [], []
    for batch in data.iterate(data.eval_batches(split, stats, member_config.data.eval_batch_size)):
      mask = np.asarray(batch['mask'])
      outs.append(np.asarray(predict(state, {k: jnp.asarray(v) for k, v in batch.items()}))[mask])
      ys.append(np.asarray(batch[exp.program.task.label])[mask])
    probs[name], labels[name] = np.concatenate(outs), np.concatenate(ys)
  return probs, labels


def ensemble_metrics(members: list[tuple], **objects) -> dict:
  """Ensemble and mean member metrics over `members` (see `_members`)."""
  results = [_probabilities(*member, **objects) for member in members]
  metrics = {'ensemble/members': len(results)}
  for split in ('eval', 'test'):
    labels = results[0][1][split]
    if any(len(r[1][split]) != len(labels) or (r[1][split] != labels).any() for r in results):
      raise config_lib.ConfigError('the ensemble members do not read the same examples; give runs on one '
                                   'data set (same data.name, validation_fraction and classes)')
    member_probs = np.stack([r[0][split] for r in results])
    mean = member_probs.mean(axis=0)
    metrics[f'{split}/ensemble_accuracy'] = float((mean.argmax(-1) == labels).mean())
    metrics[f'{split}/ensemble_loss'] = float(-np.log(mean[np.arange(len(labels)), labels] + 1e-12).mean())
    accuracies = (member_probs.argmax(-1) == labels).mean(axis=1)
    metrics[f'{split}/member_accuracy'] = float(accuracies.mean())
    metrics[f'{split}/member_accuracies'] = [float(a) for a in accuracies]
  return metrics


def evaluate(config, workdir: pathlib.Path, **objects) -> dict:
  """`--mode eval`: the run's metrics (when the workdir holds a run) plus the ensemble's (when there is
  one); a ConfigError when there is neither. `objects`: the run's model, data_source and task objects."""
  members = _members(config, workdir)
  if not members:
    return evaluation.evaluate_workdir(config, workdir, **objects)
  own = (evaluation.evaluate_workdir(config, workdir, **objects)
         if (workdir / checkpoint.CHECKPOINT_DIR).is_dir() else {})
  metrics = {**own, **ensemble_metrics(members, **objects)}
  if jax.process_index() == 0:  # The ensemble's result, kept where its command pointed (written last).
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / RESULT_FILE).write_text(json.dumps(metrics, indent=2) + '\n')
  return metrics

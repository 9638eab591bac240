"""Evaluation over whole splits (the task's metric sums per padded batch, added on the device, one fetch),
of a finished workdir, and the learning-curve diagnosis of its history."""

import logging
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxtrain import build, data, history, tasks
from jaxtrain.diagnostics import curves

log = logging.getLogger('jaxtrain')


def split_metrics(exp, state, stats: dict, split: str, eval_step=None) -> dict:
  """`{split/name: mean}` of the task's metrics over every example of `exp.splits.<split>` (padding masked
  out); sums stay on the device until one fetch at the end."""
  return metrics_of(exp, state, stats, getattr(exp.splits, split), split, eval_step)


def metrics_of(exp, state, stats: dict, examples, prefix: str, eval_step=None) -> dict:
  """`{prefix/name: mean}` over every example of `examples` (a split, or a part of one). `eval_step`
  (state, batch) -> sums replaces the run's own (a baseline's outputs, a diagnostic's model)."""
  eval_step = eval_step or exp.program.eval_step
  batches = data.eval_batches(examples, stats, exp.config.data.eval_batch_size, exp.strategy.process_shard)
  totals = None
  for batch in data.iterate(batches, workers=data.workers(examples, exp.config.data.workers)):
    sums = eval_step(state, exp.strategy.place_batch(batch))
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  totals = jax.device_get(totals)
  if np.ndim(totals['count']):  # A population: one set of sums per member, reported as '<name>/m<i>'.
    return {f'{prefix}/{key}/m{i}': value for i in range(len(totals['count']))
            for key, value in tasks.summarize(jax.tree.map(lambda x, i=i: x[i], totals)).items()}
  return {f'{prefix}/{key}': value for key, value in tasks.summarize(totals).items()}


def final_metrics(exp, state, stats: dict, evaluation: dict | None = None) -> dict:
  """Eval-split and test-split metrics of `state` (the test split is evaluated only here). `evaluation` is
  the eval split's metrics of `state` when the loop has just computed them."""
  final = {k: v for k, v in (evaluation or split_metrics(exp, state, stats, 'eval')).items()
           if k.startswith('eval/')}
  if exp.splits.eval_name == 'test' or exp.splits.test is exp.splits.eval:
    return {**final, **{k.replace('eval/', 'test/'): v for k, v in final.items()}}
  return {**final, **split_metrics(exp, state, stats, 'test')}


def diagnose(history: list[dict]) -> list[dict]:
  """The learning-curve diagnosis (overfitting, plateau, ...) of a run's history, logged as it is made."""
  findings = curves.diagnose(history)
  for finding in findings:
    log.info('Learning curves: %s (%s); %s', finding['name'], finding['evidence'], finding['advice'])
  return findings


def evaluate_workdir(config: ml_collections.ConfigDict, workdir: pathlib.Path, *, model=None,
                     data_source=None, task=None) -> dict:
  """Eval- and test-split metrics of the newest checkpoint in `workdir`; writes nothing."""
  exp = build.prepare(config, workdir, model=model, data_source=data_source, task=task)
  state, stats = build.trained_state(exp, workdir)
  metrics = final_metrics(exp, state, stats)
  return {'step': int(jax.device_get(state.step)), **metrics,
          'diagnosis': diagnose(history.read_metrics(workdir))}

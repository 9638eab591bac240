"""What `fit` adds to a run's results under `diagnostics.report` (on by default): plots/batch.png when a run
starts; at the end, the baselines next to the final metrics, the confusion matrix (summary.json and
plots/confusion.png) and plots/examples.png.

The input-independent baseline costs a second training, so a run does not train it: the doctor does, and
a run reports the one in its workdir's doctor.json when there is one.
"""

import json
import logging
import pathlib
from collections.abc import Callable

from jaxtrain.diagnostics import baselines, plots, predictions, views

log = logging.getLogger('jaxtrain')

DOCTOR_FILE = 'doctor.json'  # Written by the doctor (diagnostics/doctor.py), read here.


def at_start(exp, state, stats: dict, workdir: pathlib.Path, draw: Callable) -> None:
  """`draw(function, *args)` draws a figure (`figure_process.Figures.draw`: in the background)."""
  views.write_batch(exp, state, stats, workdir, draw)


def at_end(exp, state, stats: dict, final: dict, workdir: pathlib.Path, draw: Callable | None
           ) -> tuple[dict, list]:
  """({'baselines': ..., 'confusion': ...} for summary.json, findings to add to its diagnosis). Every
  process computes (the passes over the eval split are collective); the primary one, whose `draw` is not
  None, draws the plots."""
  found = {}
  constant = baselines.constant(exp, stats)
  if constant is not None:
    found[baselines.name(exp.program.task)] = constant
  doctor_report = workdir / DOCTOR_FILE
  if doctor_report.exists():
    found.update(json.loads(doctor_report.read_text()).get('baselines', {}))
  finding = baselines.finding(final, found)
  if finding:
    log.warning('Baselines: %s; %s', finding['evidence'], finding['advice'])
  added = {'baselines': found} if found else {}
  predicted = predictions.split_predictions(exp, state, stats)
  num_classes = exp.splits.num_classes
  if 'prediction' in predicted and num_classes <= predictions.MAX_CONFUSION_CLASSES:
    counts = predictions.confusion(predicted['label'], predicted['prediction'], num_classes)
    added['confusion'] = counts.tolist()
    if draw:
      draw(plots.confusion, counts, workdir / views.CONFUSION_PLOT)
  if draw:
    views.write_examples(exp, predicted, workdir, draw)
  return added, [finding] if finding else []

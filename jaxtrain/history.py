"""A run's history: metrics.jsonl read back (written by callbacks/writers.py) and its curves as a figure."""

import dataclasses
import json
import math
import pathlib
from typing import Any

METRICS_FILE = 'metrics.jsonl'
SUMMARY_FILE = 'summary.json'
CURVES_FILE = 'plots/curves.png'  # Written at the end of every run.
CURVES_SIZE = (10, 3.5)


@dataclasses.dataclass
class Run:
  """What `fit` returns: the metrics history, the final state and summary.json's content."""

  workdir: pathlib.Path
  history: list[dict]
  state: Any
  summary: dict
  model: Any = None  # The run's model.Model: `module()` puts the trained weights into it.

  def module(self):
    """The trained model, ready to call: a new NNX module holding the trained weights (the one passed to
    fit is unchanged), or the Linen module bound to them."""
    return self.model.with_variables({'params': self.state.params, 'batch_stats': self.state.batch_stats})

  def plot(self, path: str | pathlib.Path | None = None):
    """Loss and accuracy curves (train vs eval), saved to workdir/plots/curves.png; shows in notebooks."""
    return plot_history(self.history, pathlib.Path(path or self.workdir / CURVES_FILE))

  def __repr__(self) -> str:
    final = ', '.join(f'{k}={v:.4g}' for k, v in self.summary.get('final', {}).items())
    return f'Run({str(self.workdir)!r}, steps={self.summary.get("steps")}, {final})'


def read_metrics(workdir: pathlib.Path) -> list[dict]:
  path = workdir / METRICS_FILE
  if not path.exists():
    return []
  records = []
  for line in path.read_text().splitlines():
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError:  # Half a line from a killed process; MetricWriter cuts it.
      continue
  return records


CURVES = ('loss', 'accuracy')  # One panel each, train against eval.


def curve_points(history: list[dict]) -> dict[str, tuple[list, list]]:
  """{'train/loss': (steps, values), ...}: the points the curves figure draws (finite ones), and only
  those, which is what travels to the figure process."""
  points = {}
  for metric in CURVES:
    for split in ('train', 'eval'):
      key = f'{split}/{metric}'
      pairs = [(r['step'], r[key]) for r in history if key in r and math.isfinite(r[key])]
      points[key] = ([step for step, _ in pairs], [value for _, value in pairs])
  return points


def plot_history(history: list[dict], path: pathlib.Path | None = None):
  """Loss and accuracy curves, train vs eval; saved to `path` when given. Returns the figure.

  pyplot is imported here, not at import time, and its backend is left as it is: matplotlib picks a
  headless one itself where there is no display, and a notebook keeps its inline one.
  """
  import matplotlib.pyplot as plt  # noqa: PLC0415 - matplotlib costs ~0.5 s to import; only plots need it.

  fig = plt.figure(figsize=CURVES_SIZE)
  _draw_curves(fig, curve_points(history), path)
  plt.close(fig)
  return fig


def write_curves(points: dict[str, tuple[list, list]], path: pathlib.Path) -> None:
  """plots/curves.png from `curve_points(history)`, without pyplot, which would load the backend a notebook
  names (MPLBACKEND) in the figure process (diagnostics/figure_process.py), where fit draws it."""
  import matplotlib.figure  # noqa: PLC0415 - as above.

  _draw_curves(matplotlib.figure.Figure(figsize=CURVES_SIZE), points, path)


def _draw_curves(fig, points: dict[str, tuple[list, list]], path: pathlib.Path | None) -> None:
  axes = fig.subplots(1, len(CURVES))
  # Fixed margins that fit the labels: `tight_layout` would draw the figure once more to measure them, which
  # cProfile put at 0.35 s of a 1.7 s 20-step fit on a 2-core CPU (the plot every run writes).
  fig.subplots_adjust(left=0.08, right=0.98, bottom=0.14, top=0.96, wspace=0.22)
  for ax, metric in zip(axes, CURVES, strict=True):
    for split in ('train', 'eval'):
      steps, values = points[f'{split}/{metric}']
      if steps:
        ax.plot(steps, values, label=split, marker='o' if split == 'eval' else None, markersize=3)
    ax.set_xlabel('step')
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend()
  axes[0].set_yscale('log')
  if path is not None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)

"""Where metrics go: metrics.jsonl (appended, never rewritten), TensorBoard, a progress bar, PNG plots."""

import json
import math
import pathlib
import sys

import matplotlib

if 'ipykernel' not in sys.modules:  # Files, not windows; a notebook keeps its inline backend.
  matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import tqdm.auto  # noqa: E402
from tensorboardX import SummaryWriter  # noqa: E402

METRICS_FILE = 'metrics.jsonl'


def _in_notebook() -> bool:
  return 'ipykernel' in sys.modules


def _kind(record: dict) -> tuple:
  """What a record logs ('train', 'eval', 'test'...), so one step's train and eval records stay apart."""
  return (record['step'], tuple(sorted({key.split('/')[0] for key in record if '/' in key})))


def _drop_partial_line(path: pathlib.Path) -> None:
  """A process killed mid-write leaves half a line; cut it so the next record starts on its own line."""
  if not path.exists() or path.stat().st_size == 0:
    return
  text = path.read_bytes()
  if not text.endswith(b'\n'):
    with path.open('r+b') as f:
      f.truncate(text.rfind(b'\n') + 1)


class MetricWriter:
  """Writes each logged dict `{'step', 'epoch', 'train/loss', ...}` to every sink at once.

  A resumed run replays the steps after its checkpoint bit-identically, so records already in `logged`
  (the history read from metrics.jsonl) are not written again: the file gets no duplicated steps.
  """

  def __init__(self, workdir: pathlib.Path, total_steps: int, initial_step: int, progress_bar: bool,
               logged: list[dict] = (), primary: bool = True):
    self._logged = {_kind(record) for record in logged}
    self._primary = primary  # Of several processes, only the first writes (the others' records are equal).
    if primary:
      _drop_partial_line(workdir / METRICS_FILE)
      self._jsonl = (workdir / METRICS_FILE).open('a')
      self._tb = SummaryWriter(str(workdir / 'tb'))
    show = primary and progress_bar and (sys.stdout.isatty() or _in_notebook())
    self._bar = tqdm.auto.tqdm(total=total_steps, initial=initial_step, unit='step',
                               dynamic_ncols=True, disable=not show)

  def write(self, record: dict) -> None:
    if not self._primary or _kind(record) in self._logged:
      return
    self._jsonl.write(json.dumps(record) + '\n')
    self._jsonl.flush()
    for key, value in record.items():
      if key not in ('step', 'epoch') and isinstance(value, (int, float)):
        self._tb.add_scalar(key, value, record['step'])
    shown = {k.split('/')[-1] if k.startswith('train/') else k: f'{v:.4g}'
             for k, v in record.items() if k in ('train/loss', 'train/steps_per_sec', 'eval/accuracy')}
    if shown:
      self._bar.set_postfix(shown, refresh=False)

  def advance(self, steps: int) -> None:
    self._bar.update(steps)

  def close(self) -> None:
    self._bar.close()
    if self._primary:
      self._jsonl.close()
      self._tb.close()


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


def _series(history: list[dict], key: str):
  points = [(r['step'], r[key]) for r in history if key in r and math.isfinite(r[key])]
  return [p[0] for p in points], [p[1] for p in points]


def plot_history(history: list[dict], path: pathlib.Path | None = None):
  """Loss and accuracy curves, train vs eval; saved to `path` when given. Returns the figure."""
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
  for ax, metric in zip(axes, ('loss', 'accuracy'), strict=True):
    for split in ('train', 'eval'):
      steps, values = _series(history, f'{split}/{metric}')
      if steps:
        ax.plot(steps, values, label=split, marker='o' if split == 'eval' else None, markersize=3)
    ax.set_xlabel('step')
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend()
  axes[0].set_yscale('log')
  fig.tight_layout()
  if path is not None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
  plt.close(fig)
  return fig

"""Where records go: one writer interface (`write(record)`, `close()`), as CLU's MetricWriter, with
metrics.jsonl (appended, never rewritten), TensorBoard and the progress bar as interchangeable sinks, and
`WriteMetrics`, the callback that sends every log and eval record to them."""

import importlib.util
import json
import logging
import math
import pathlib
import sys

import tqdm

from jaxtrain.engine import Callback
from jaxtrain.history import METRICS_FILE

log = logging.getLogger('jaxtrain')


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


class JsonlWriter:
  """metrics.jsonl: one JSON object per record, flushed as written."""

  def __init__(self, workdir: pathlib.Path):
    _drop_partial_line(workdir / METRICS_FILE)
    self._file = (workdir / METRICS_FILE).open('a')

  def write(self, record: dict) -> None:
    self._file.write(json.dumps(record) + '\n')
    self._file.flush()

  def close(self) -> None:
    self._file.close()


class TensorBoardWriter:
  """Every finite numeric entry as a scalar at the record's step: `tensorboard --logdir runs`. Non-finite
  values are left to metrics.jsonl: tensorboardX prints a warning line for each.

  tensorboardX writes from a thread that flushes every `flush_secs`; at 1 s a run killed with -9 loses at
  most its last second of points, and `MetricWriter.default` writes those again from metrics.jsonl on
  resume (a point written twice is the same point at the same step)."""

  def __init__(self, workdir: pathlib.Path):
    self._workdir = workdir
    self._tb = _summary_writer_class()(str(workdir / 'tb'), flush_secs=1)

  def write(self, record: dict) -> None:
    for key, value in record.items():
      if key not in ('step', 'epoch') and isinstance(value, (int, float)) and math.isfinite(value):
        self._tb.add_scalar(key, value, record['step'])

  def close(self) -> None:
    # Runs on the way out of a failed run too (a full disk): an error here would replace the run's own.
    # The events are a copy of metrics.jsonl, and a resumed run writes its unflushed points again.
    try:
      self._tb.close()
    except OSError as e:
      log.warning('TensorBoard events in %s/tb were not all written: %s', self._workdir, e)


def _summary_writer_class():
  """tensorboardX's SummaryWriter, imported where a run writes (it imports protobuf) and without PyTorch.

  tensorboardX imports torch, when it is installed, only to accept torch tensors (writer.py, 0.9 s on a
  2-core CPU); scalars need none of it. While tensorboardX is imported, an absent `torch` entry in
  sys.modules reads as "not installed" (a None entry makes `import torch` raise ImportError, which it
  catches); a torch the user already imported is left as it is."""
  blocked = 'torch' not in sys.modules
  if blocked:
    sys.modules['torch'] = None
  try:
    from tensorboardX import SummaryWriter  # noqa: PLC0415 - see the docstring.
  finally:
    if blocked:
      del sys.modules['torch']
  return SummaryWriter


class ProgressBar:
  """A tqdm bar with ETA, loss and steps/s; shown only in a terminal or a notebook."""

  def __init__(self, total_steps: int, initial_step: int, show: bool):
    notebook = 'ipykernel' in sys.modules
    show = show and (sys.stdout.isatty() or notebook)
    # tqdm.auto warns (TqdmWarning) in a notebook without ipywidgets; the text bar works there too.
    if notebook and importlib.util.find_spec('ipywidgets') is not None:
      from tqdm.notebook import tqdm as bar  # noqa: PLC0415 - imports IPython's display machinery.
    else:
      bar = tqdm.tqdm
    self._bar = bar(total=total_steps, initial=initial_step, unit='step', dynamic_ncols=True,
                    disable=not show)

  def write(self, record: dict) -> None:
    shown = {k.split('/')[-1] if k.startswith('train/') else k: f'{v:.4g}'
             for k, v in record.items() if k in ('train/loss', 'train/steps_per_sec', 'eval/accuracy')}
    if shown:
      self._bar.set_postfix(shown, refresh=False)

  def advance(self, steps: int) -> None:
    self._bar.update(steps)

  def close(self) -> None:
    self._bar.close()


class MetricWriter:
  """Writes each record `{'step', 'epoch', 'train/loss', ...}` to every writer at once.

  A resumed run replays the steps after its checkpoint bit-identically, so records already in `logged`
  (the history read from metrics.jsonl) are not written again: the file gets no duplicated steps. Of
  several processes only the first writes (`primary`; the others' records are equal).
  """

  def __init__(self, writers: list, logged: list[dict] = ()):
    self.writers = writers
    self._logged = {_kind(record) for record in logged}

  @classmethod
  def default(cls, workdir: pathlib.Path, total_steps: int, initial_step: int, progress_bar: bool,
              logged: list[dict] = (), primary: bool = True, extra: list = ()) -> 'MetricWriter':
    """metrics.jsonl, TensorBoard, the progress bar and any `extra` writers. On resume, TensorBoard gets
    again the records metrics.jsonl has after the checkpoint (`initial_step`): the ones a killed process may
    not have flushed to its event file."""
    if not primary:
      return cls([], logged)
    tensorboard = TensorBoardWriter(workdir)
    for record in logged:
      if record['step'] > initial_step:
        tensorboard.write(record)
    return cls([JsonlWriter(workdir), tensorboard, ProgressBar(total_steps, initial_step, progress_bar),
                *extra], logged)

  def write(self, record: dict) -> None:
    if _kind(record) in self._logged:
      return
    for writer in self.writers:
      writer.write(record)

  def advance(self, steps: int) -> None:
    for writer in self.writers:
      if hasattr(writer, 'advance'):
        writer.advance(steps)

  def close(self) -> None:
    for writer in self.writers:
      writer.close()


class WriteMetrics(Callback):
  """Sends every log and eval record to the writers, and moves the progress bar each step."""

  def __init__(self, writer: MetricWriter):
    self.writer = writer

  def on_step(self, trainer, step: int) -> None:
    self.writer.advance(1)

  def on_log(self, trainer, step: int, record: dict) -> None:
    self.writer.write(record)

  def on_eval(self, trainer, step: int, record: dict) -> None:
    self.writer.write(record)

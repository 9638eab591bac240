"""The figure process: figures drawn by a child process come out as drawn in the run's own, its errors are
raised in the run that asked for them, one child serves every run of a process, and a run that lost its
child says so instead of hanging."""

import os
import signal
import threading

import numpy as np
import pytest
from PIL import Image

from jaxtrain import history
from jaxtrain.diagnostics import figure_process, plots

RECORDS = [{'step': s, 'train/loss': 2.0 / s, 'train/accuracy': 1 - 1 / (s + 1)} for s in range(1, 30)]


def test_figures_drawn_by_the_child_equal_those_drawn_here(tmp_path):
  images = np.random.default_rng(0).random((12, 8, 8)).astype(np.float32)
  counts = np.arange(16).reshape(4, 4)
  figures = figure_process.Figures()
  for draw, where in ((figures.draw, tmp_path / 'child'), (figure_process.now, tmp_path / 'here')):
    draw(plots.image_grid, images, [str(i) for i in range(12)], 'a batch', where / 'grid.png')
    draw(plots.confusion, counts, where / 'confusion.png')
    draw(history.write_curves, history.curve_points(RECORDS), where / 'curves.png')
  figures.wait()
  for name in ('grid.png', 'confusion.png', 'curves.png'):
    child, here = (np.asarray(Image.open(tmp_path / where / name)) for where in ('child', 'here'))
    assert child.shape == here.shape and np.array_equal(child, here), name


def test_a_figures_error_is_raised_in_the_run_and_the_child_goes_on(tmp_path):
  blocked = tmp_path / 'file'
  blocked.write_text('not a folder')
  figures = figure_process.Figures()
  figures.draw(plots.confusion, np.eye(3), blocked / 'confusion.png')  # Its folder cannot be made.
  figures.draw(plots.confusion, np.eye(3), tmp_path / 'ok.png')
  with pytest.raises(FileExistsError):
    figures.wait()
  assert (tmp_path / 'ok.png').stat().st_size > 0  # The later figure of the same run is still drawn.
  again = figure_process.Figures()
  again.draw(plots.confusion, np.eye(3), tmp_path / 'again.png')
  again.wait()
  assert again.child is figures.child and (tmp_path / 'again.png').exists()


def test_answers_nobody_waits_for_never_block_the_child():
  """Runs that fail before waiting leave their answers unread; more than a pipe holds must not stop the
  child, nor the next run that sends it a figure."""
  def failed_runs_then_one_that_waits():
    for _ in range(20):
      unwaited = figure_process.Figures()
      for _ in range(500):
        unwaited.draw(figure_process.now, len, ())
    last = figure_process.Figures()
    last.draw(figure_process.now, len, ())
    last.wait()

  worker = threading.Thread(target=failed_runs_then_one_that_waits, daemon=True)
  worker.start()
  worker.join(timeout=60)
  assert not worker.is_alive()


def test_a_run_whose_child_died_gets_an_error_not_a_hang(tmp_path):
  figures = figure_process.Figures()
  figures.child.process.kill()
  figures.child.process.wait()
  figures.draw(plots.confusion, np.eye(3), tmp_path / 'lost.png')  # Raises nothing yet: the run goes on.
  with pytest.raises(RuntimeError, match='the process drawing the figures ended'):
    figures.wait()
  replacement = figure_process.Figures()  # The next run starts a new child.
  assert replacement.child.process.pid != figures.child.process.pid
  replacement.draw(plots.confusion, np.eye(3), tmp_path / 'next.png')
  replacement.wait()
  assert (tmp_path / 'next.png').exists()


def test_the_child_imports_the_runs_jaxtrain_not_one_in_the_working_directory(tmp_path, monkeypatch):
  (tmp_path / 'jaxtrain').mkdir()  # Another checkout's package, without this module.
  (tmp_path / 'jaxtrain' / '__init__.py').write_text('raise ImportError("the wrong jaxtrain")\n')
  monkeypatch.chdir(tmp_path)
  monkeypatch.setattr(figure_process, '_child', None)  # A new child, started from here.
  figures = figure_process.Figures()
  figures.draw(plots.confusion, np.eye(3), tmp_path / 'drawn.png')
  figures.wait()
  assert (tmp_path / 'drawn.png').exists()
  figures.child.close()


def test_the_child_ignores_the_signals_a_run_handles():
  """A Ctrl-C or SLURM's SIGTERM reaches the whole process group; the run saves and stops, its child
  finishes what it was drawing and ends with the run, without a traceback of its own."""
  figures = figure_process.Figures()
  figures.draw(figure_process.now, print)  # Answered only once the child's handlers are installed.
  figures.wait()
  os.kill(figures.child.process.pid, signal.SIGINT)
  os.kill(figures.child.process.pid, signal.SIGTERM)
  figures.draw(figure_process.now, print)
  figures.wait()  # Answered after the signals: still serving.
  assert figures.child.process.poll() is None

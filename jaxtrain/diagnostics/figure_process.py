"""A run's figures drawn by a second process, while the run goes on.

Every run writes four PNG files (plots/batch.png at the start; the confusion matrix, the worst examples and
the learning curves at the end). Drawn in the run's own process they cost 1.3 s of a 4.9 s command on a
2-core CPU (benchmarks/peers.py's recipe): 0.35 s to import matplotlib and about 0.2 s per figure, all of
it holding the interpreter lock, so a thread would not overlap it. A child process importing nothing but
NumPy, matplotlib and the drawing functions does it on another core: the run sends each figure's data as
soon as it has it and waits only at its very end, for what is not drawn yet.

One child per process, started on first use and reused by every later run (a notebook, the test suite),
fed through a pipe: `(job id, function, arguments)` pickled in, `(job id, exception or None)` out. A
figure's exception is raised in the run that asked for it, as if it had drawn it itself.
"""

import atexit
import os
import pathlib
import pickle
import signal
import subprocess
import sys
import threading
from collections.abc import Callable


def now(function: Callable, *args) -> None:
  """Draws in this process: the drawing callable of the tools that do not run in the background."""
  function(*args)


class _Child:
  """The drawing process and the results it has sent back, shared by every run of this process."""

  def __init__(self):
    # The child must import this very jaxtrain, whatever folder the run was started from (another checkout's
    # jaxtrain/ there would win over it on the path): its folder first, and -P, so the working directory is
    # not searched at all.
    root = str(pathlib.Path(__file__).resolve().parents[2])
    env = {**os.environ, 'PYTHONPATH': os.pathsep.join(filter(None, [root, os.environ.get('PYTHONPATH')]))}
    self.process = subprocess.Popen([sys.executable, '-P', '-m', __name__], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, env=env)
    self.lock, self.next_id = threading.Lock(), 0
    # Answers are read as they come, so the child never blocks on a full pipe of answers nobody reads
    # (those of runs that failed before waiting) while this process blocks sending it a figure.
    self.answered, self.results, self.gone = threading.Condition(), {}, False
    threading.Thread(target=self._read_answers, daemon=True, name='jaxtrain-figures').start()

  def send(self, function: Callable, args: tuple) -> int:
    with self.lock:
      job, self.next_id = self.next_id, self.next_id + 1
      pickle.dump((job, function, args), self.process.stdin)
      self.process.stdin.flush()
      return job

  def _read_answers(self) -> None:
    while True:
      try:
        job, error = pickle.load(self.process.stdout)
      except (EOFError, pickle.UnpicklingError, OSError):  # Ended, perhaps halfway through an answer.
        job = None
      with self.answered:
        if job is None:
          self.gone = True
        else:
          self.results[job] = error
        self.answered.notify_all()
      if job is None:
        return

  def result(self, job: int) -> BaseException | None:
    with self.answered:
      self.answered.wait_for(lambda: job in self.results or self.gone)
      if job not in self.results:
        raise self.ended()
      return self.results.pop(job)

  def ended(self) -> RuntimeError:
    return RuntimeError(f'the process drawing the figures ended (exit code {self.process.wait()}); the run '
                        'is saved, its figures are not all drawn')

  def close(self) -> None:
    if not self.process.stdin.closed:
      try:
        pickle.dump(None, self.process.stdin)
        self.process.stdin.close()
      except OSError:  # It has ended already.
        pass
    try:
      self.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
      self.process.kill()


_child: _Child | None = None
_start_lock = threading.Lock()


def _shared_child() -> _Child:
  global _child
  with _start_lock:
    if _child is None or _child.process.poll() is not None:
      _child = _Child()
      atexit.register(_child.close)
    return _child


class Figures:
  """The figures of one run: `draw(function, *args)` sends a drawing (a module-level function of
  diagnostics/plots.py or history.py, and picklable arguments) to the child and returns at once; `wait()`
  returns when all of this run's figures are written, raising the first figure's error. Nothing is raised
  before `wait`, which a run calls once its results are saved: a figure never costs it its summary."""

  def __init__(self):
    self.child, self.jobs, self.lost = _shared_child(), [], None

  def draw(self, function: Callable, *args) -> None:
    try:
      self.jobs.append(self.child.send(function, args))
    except OSError:  # The child has ended (a broken pipe).
      self.lost = self.lost or self.child.ended()

  def wait(self) -> None:
    try:
      errors = [self.child.result(job) for job in self.jobs]
    except RuntimeError as e:  # The child ended before answering.
      errors = [e]
    self.jobs = []
    for error in [self.lost, *errors]:
      if error is not None:
        raise error


def _serve(jobs, results) -> None:
  """The child's loop: draws each job in turn until the parent sends None or goes away."""
  while True:
    try:
      message = pickle.load(jobs)
    except EOFError:
      return
    if message is None:
      return
    job, function, args = message
    try:
      function(*args)
      error = None
    except Exception as e:  # noqa: BLE001 - sent back and raised in the run that asked for the figure.
      error = e
    try:
      pickle.dump((job, error), results)
    except (pickle.PicklingError, TypeError, AttributeError):
      pickle.dump((job, RuntimeError(f'{type(error).__name__}: {error}')), results)
    results.flush()


if __name__ == '__main__':
  # The parent decides when this process ends (None or the pipe's end): a Ctrl-C or a scheduler's SIGTERM
  # sent to the whole process group is the run's to handle (it saves and stops), not a reason to die here.
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  signal.signal(signal.SIGTERM, signal.SIG_IGN)
  results = os.fdopen(os.dup(1), 'wb')
  os.dup2(2, 1)  # Anything a drawing prints goes to stderr, not into the results pipe.
  _serve(sys.stdin.buffer, results)
  sys.stderr.flush()
  os._exit(0)  # Every figure is written and every result sent: the parent need not wait for a teardown.

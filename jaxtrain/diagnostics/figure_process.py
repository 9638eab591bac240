"""A run's figures drawn by a second process, while the run goes on.

Every run writes four PNG files (plots/batch.png at the start; the confusion matrix, the worst examples and
the learning curves at the end). Drawn in the run's own process they cost 1.3 s of a 4.9 s command on a
2-core CPU (benchmarks/peers.py's recipe): 0.35 s to import matplotlib and about 0.2 s per figure, all of
it holding the interpreter lock, so a thread would not overlap it. A child process importing nothing but
NumPy, matplotlib and the drawing functions does it on another core: the run sends each figure's data as
soon as it has it and waits only at its very end, for what is not drawn yet.

One child per process, started on first use and reused by every later run (a notebook, the test suite).
Jobs go in through its stdin, `(job id, function, arguments)` pickled; answers come back through a pipe of
their own (not stdout, where anything the child's start-up prints would land), `(job id, the pickled
exception or None)`, read by a thread as they come. A figure's exception is raised in the run that asked
for it, at `wait`, as if it had drawn it itself.
"""

import atexit
import os
import pathlib
import pickle
import signal
import site
import subprocess
import sys
import threading
from collections.abc import Callable


def now(function: Callable, *args) -> None:
  """Draws in this process: the drawing callable of the tools that do not run in the background."""
  function(*args)


def _environment() -> dict:
  """The child must import this very jaxtrain, whatever folder the run was started from (it runs with -P,
  so not from there): a checkout's folder goes first on its path; an installed package is found in the
  site folder as here (putting that folder first would put it before the standard library)."""
  root = str(pathlib.Path(__file__).resolve().parents[2])
  if root in {*site.getsitepackages(), site.getusersitepackages()}:
    return dict(os.environ)
  return {**os.environ, 'PYTHONPATH': os.pathsep.join(filter(None, [root, os.environ.get('PYTHONPATH')]))}


class _Child:
  """The drawing process and the answers it has sent back, shared by every run of this process."""

  def __init__(self):
    answers, answers_to_write = os.pipe()
    # A session of its own: a Ctrl-C or a signal to the run's process group is the run's to handle (it saves
    # and stops); the child ends when the run closes its stdin, or exits.
    self.process = subprocess.Popen([sys.executable, '-P', '-m', __name__, str(answers_to_write)],
                                    stdin=subprocess.PIPE, pass_fds=(answers_to_write,),
                                    start_new_session=True, env=_environment())
    os.close(answers_to_write)
    self.lock, self.next_id = threading.Lock(), 0
    # Answers are read as they come, so the child never blocks on a full pipe of answers nobody reads
    # (those of runs that failed before waiting) while this process blocks sending it a figure.
    self.answered, self.results, self.gone = threading.Condition(), {}, False
    threading.Thread(target=self._read_answers, args=(os.fdopen(answers, 'rb'),), daemon=True,
                     name='jaxtrain-figures').start()

  def send(self, function: Callable, args: tuple) -> int:
    with self.lock:
      job = self.next_id
      message = pickle.dumps((job, function, args))  # Fails here, before anything is sent, if it must.
      self.next_id += 1
      try:
        self.process.stdin.write(message)
        self.process.stdin.flush()
      except BaseException:
        self.process.kill()  # Half a message would leave the child out of step: the next run starts anew.
        raise
      return job

  def _read_answers(self, answers) -> None:
    try:
      while True:
        job, error = pickle.load(answers)
        with self.answered:
          self.results[job] = _exception(error)
          self.answered.notify_all()
    except BaseException:  # noqa: BLE001 - the child ended (perhaps halfway through an answer) or is broken.
      with self.answered:
        self.gone = True
        self.answered.notify_all()
      self.process.kill()

  def result(self, job: int) -> BaseException | None:
    with self.answered:
      self.answered.wait_for(lambda: job in self.results or self.gone)
      if job not in self.results:
        raise self.ended()
      return self.results.pop(job)

  def ended(self) -> RuntimeError:
    try:
      code = self.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
      self.process.kill()
      code = 'none: killed, it had stopped answering'
    return RuntimeError(f'the process drawing the figures ended (exit code {code}); the run is saved, its '
                        'figures are not all drawn')

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


def _exception(pickled: bytes | None) -> BaseException | None:
  """The exception the child sent, or one naming it where this process cannot rebuild it."""
  if pickled is None:
    return None
  try:
    return pickle.loads(pickled)
  except Exception as e:  # noqa: BLE001 - e.g. an exception class whose __init__ takes other arguments.
    return RuntimeError(f'a figure failed with an error that could not be read back ({e})')


_child: _Child | None = None
_start_lock = threading.Lock()


def _shared_child() -> _Child:
  global _child
  with _start_lock:
    if _child is None or _child.gone or _child.process.poll() is not None:
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
    except Exception as e:  # noqa: BLE001 - arguments that cannot be pickled: raised at `wait`, as promised.
      self.lost = self.lost or e

  def wait(self) -> None:
    try:
      errors = [self.child.result(job) for job in self.jobs]
    except RuntimeError as e:  # The child ended before answering.
      errors = [e]
    self.jobs = []
    for error in [self.lost, *errors]:
      if error is not None:
        raise error


def _serve(jobs, answers) -> None:
  """The child's loop: draws each job in turn until the parent sends None or goes away."""
  while True:
    try:
      message = pickle.load(jobs)
    except Exception:  # noqa: BLE001 - the pipe's end, or a message cut short: the parent has gone.
      return
    if message is None:
      return
    job, function, args = message
    try:
      function(*args)
      error = None
    except Exception as e:  # noqa: BLE001 - sent back and raised in the run that asked for the figure.
      try:
        error = pickle.dumps(e)
      except Exception:  # noqa: BLE001 - an exception that cannot be pickled: its name and message.
        error = pickle.dumps(RuntimeError(f'{type(e).__name__}: {e}'))
    pickle.dump((job, error), answers)
    answers.flush()


if __name__ == '__main__':
  signal.signal(signal.SIGINT, signal.SIG_IGN)  # As its own session does, should a signal reach it anyway.
  signal.signal(signal.SIGTERM, signal.SIG_IGN)
  os.dup2(2, 1)  # Anything a drawing prints goes to stderr.
  _serve(sys.stdin.buffer, os.fdopen(int(sys.argv[1]), 'wb'))
  sys.stderr.flush()
  os._exit(0)  # Every figure is written and every answer sent: the parent need not wait for a teardown.

"""The non-finite guard: at every log, eval and checkpoint moment, before anything is written, a run whose
step went non-finite halts (`train.nonfinite=halt`, or too many skips in a row under 'skip') with forensics.

The train step froze the state just before the bad step (in-graph, so no step waits for the host), so that
step, its batch and its dropout key are re-run here to name the first layer (in forward order) whose output,
then the first parameter whose gradient, is not finite. The state, the batch and the config go to
`workdir/nan_dump/step_<k>/`, which `python -m jaxtrain.diagnostics.nan` replays under jax_debug_nans.
"""

import dataclasses
import json
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxtrain import checkpoint, steps
from jaxtrain.engine import Callback

DUMP_DIR = 'nan_dump'


class NonFiniteError(RuntimeError):
  """A run halted on a non-finite loss or gradient; the CLI exits 1 with its message."""


@dataclasses.dataclass(frozen=True)
class Findings:
  loss: float
  activation: str | None  # The first module (forward order) whose output is not finite.
  gradient: str | None  # The first parameter (forward order) whose gradient is not finite.

  def describe(self) -> str:
    parts = [f'loss={self.loss:.4g}']
    if self.activation:
      parts.append(f'the output of {self.activation} is the first that is not finite')
    if self.gradient:
      parts.append(f'the gradient of params/{self.gradient} is the first that is not finite')
    if not self.activation and not self.gradient:
      parts.append('the gradient norm overflowed' if np.isfinite(self.loss) else 'the loss is not finite')
    return ', '.join(parts)


def _first(bad: list[str], order: list[str], module_of) -> str | None:
  """The first of `bad` in the forward order (`order`) of its module, `module_of(path)`."""
  position = {module: i for i, module in enumerate(order)}
  return min(bad, key=lambda path: (position.get(module_of(path), len(order)), path), default=None)


def investigate(program, config: ml_collections.ConfigDict, example: dict, state, batch: dict) -> Findings:
  """Re-runs the step at `state.step` on `batch` (placed) and names where non-finite values first appear."""
  forensics = steps.make_forensics(program.model, config.optim, program.task, program.augment)
  loss, outputs, grads = jax.device_get(forensics(state, batch))
  order = program.model.forward_order(example)
  modules = [path.removesuffix('__call__/0').rstrip('/') or 'the model' for path, ok in outputs.items()
             if not ok]
  # A block's output is bad because a layer inside it is: name the innermost layer.
  modules = [m for m in modules if not any(other.startswith(m + '/') for other in modules)]
  parameters = [path for path, ok in grads.items() if not ok]
  return Findings(loss=float(loss), activation=_first(modules, order, lambda path: path),
                  gradient=_first(parameters, order, lambda path: path.rsplit('/', 1)[0]))


def dump(workdir: pathlib.Path, config: ml_collections.ConfigDict, state, batch: dict,
         findings: Findings) -> pathlib.Path:
  """Writes the failing step (state before it, its batch, the config, the findings); returns the folder."""
  step = int(jax.device_get(state.step)) + 1
  directory = workdir / DUMP_DIR / f'step_{step}'
  directory.mkdir(parents=True, exist_ok=True)
  np.savez(directory / 'batch.npz', **jax.device_get(batch))
  checkpoint.save_state(directory / 'state', state)
  (directory / 'config.json').write_text(json.dumps(config.to_dict(), indent=2) + '\n')
  (directory / 'findings.json').write_text(json.dumps(
      {'step': step, 'rng': np.asarray(jax.device_get(state.rng)).tolist(), **dataclasses.asdict(findings),
       'replay': f'python -m jaxtrain.diagnostics.nan {directory}'}, indent=2) + '\n')
  return directory


def check(exp, state, train_data, ckpt: checkpoint.Checkpointer, workdir: pathlib.Path) -> None:
  """Raises NonFiniteError when the run (`exp`, the built experiment) must halt; called only at log, eval
  and checkpoint moments, where the engine syncs anyway.

  Under 'halt' the train step froze the state just before the bad step, so that step (its batch and its
  dropout key) is re-run to name the first layer and parameter that went non-finite, and dumped for replay.
  """
  skips, done = (int(x) for x in jax.device_get((state.skips, state.step)))
  nonfinite = exp.config.train.nonfinite
  if skips == 0 or (nonfinite == 'skip' and skips < exp.config.train.max_consecutive_skips):
    return
  index = done if nonfinite == 'halt' else done - 1  # The failing step's batch index (= its state.step).
  before = state.replace(step=jnp.int32(index))
  batch = exp.strategy.place_batch(train_data[index])
  findings = investigate(exp.program, exp.config, exp.example, before, batch)
  dumped = (dump(workdir, exp.config, before, batch, findings) if jax.process_index() == 0
            else workdir / DUMP_DIR)
  saved = ckpt.steps()
  last = f'the last good checkpoint is step {saved[-1]} in {ckpt.directory}' if saved else 'no checkpoint'
  if nonfinite == 'skip':  # Skipping is on already and did not help: the cause is in the data or the model.
    streak = f'{skips} non-finite steps in a row (train.max_consecutive_skips); '
    advice = ('Skipping does not get past it: check the data for NaN/Inf (--mode doctor checks the inputs), '
              'try a lower optim.lr or optim.clip_norm=1.0, or raise train.max_consecutive_skips')
  else:
    streak, advice = '', ('Try a lower optim.lr, optim.clip_norm=1.0, or --config.train.nonfinite=skip to '
                          'drop such updates')
  raise NonFiniteError(
      f'training halted at step {index + 1}: {streak}{findings.describe()}; {last}; the step is dumped in '
      f'{dumped} (replay: python -m jaxtrain.diagnostics.nan {dumped}). {advice}')


class NonFiniteGuard(Callback):
  def before_moment(self, trainer, step: int) -> None:
    check(trainer.exp, trainer.state, trainer.train_data, trainer.ckpt, trainer.workdir)

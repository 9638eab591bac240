"""NaN replay: a step dumped by the non-finite guard (callbacks/nonfinite.py), run again under
`jax_debug_nans`, which stops at the first primitive that produced a NaN; the replay names the layer (from
the guard's findings) and the line of model or loss code that made it, and exits 1 when it reproduces one:

  python -m jaxtrain.diagnostics.nan runs/x/nan_dump/step_<k>
"""

import json
import pathlib
import sys
import traceback

import jax
import ml_collections
import numpy as np

from jaxtrain import build, checkpoint, steps
from jaxtrain.config import ConfigError

# Frames of these packages are the machinery between a line of model code and the primitive that failed.
_LIBRARIES = ('/jax/', '/jaxlib/', '/flax/', '/optax/', '/jaxtrain/steps.py', '/jaxtrain/model.py')


def _source_line(error: BaseException) -> str | None:
  """'file:line: code' of the deepest frame of the failing call that is the user's or the zoo's code."""
  frames = [frame for frame in traceback.extract_tb(error.__traceback__)
            if not any(part in frame.filename for part in _LIBRARIES)]
  if not frames:
    return None
  frame = frames[-1]
  return f'{frame.filename}:{frame.lineno}: {(frame.line or "").strip()}'


def replay(directory: pathlib.Path) -> tuple[bool, str]:
  """Runs the dumped step under jax_debug_nans: (whether a NaN was reproduced, what to tell the user)."""
  config = ml_collections.ConfigDict(json.loads((directory / 'config.json').read_text()))
  findings = json.loads((directory / 'findings.json').read_text())
  exp = build.prepare(config, None)
  state = checkpoint.load_state(directory / 'state', exp.abstract_state())
  batch = dict(np.load(directory / 'batch.npz'))
  step = steps.make_train_step(exp.program.model, exp.program.optimizer, config.optim, 'skip',
                               exp.program.task, exp.program.augment)
  jax.config.update('jax_debug_nans', True)
  try:
    jax.block_until_ready(jax.jit(step)(state, batch))
  except FloatingPointError as e:
    where = [f'in {findings["activation"]}'] if findings.get('activation') else []
    line = _source_line(e)
    where += [f'at {line}'] if line else []
    primitive = str(e).splitlines()[0]
    return True, f'step {findings["step"]}: a NaN appears {" ".join(where) or "in the step"} ({primitive})'
  finally:
    jax.config.update('jax_debug_nans', False)
  return False, (f'step {findings["step"]} ran without producing a NaN under jax_debug_nans (an inf, or a '
                 'NaN that does not reproduce)')


def main(argv: list[str]) -> int:
  if len(argv) != 2:
    print('usage: python -m jaxtrain.diagnostics.nan WORKDIR/nan_dump/step_<k>', file=sys.stderr)
    return 2
  try:
    reproduced, message = replay(pathlib.Path(argv[1]))
  except ConfigError as e:  # E.g. a run trained on objects passed to fit: they cannot be rebuilt here.
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(message)
  return 1 if reproduced else 0


if __name__ == '__main__':
  sys.exit(main(sys.argv))

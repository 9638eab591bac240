"""NaN replay: a step dumped by the non-finite guard (callbacks/nonfinite.py), run again under
`jax_debug_nans`, which stops at the first primitive that produced a NaN and prints the line of model code
it came from:

  python -m jaxtrain.diagnostics.nan runs/x/nan_dump/step_<k>
"""

import json
import pathlib
import sys

import jax
import ml_collections
import numpy as np

from jaxtrain import build, checkpoint, steps
from jaxtrain.config import ConfigError


def replay(directory: pathlib.Path) -> str:
  """Runs the dumped step under jax_debug_nans; returns the error JAX raises (where the NaN was made)."""
  config = ml_collections.ConfigDict(json.loads((directory / 'config.json').read_text()))
  exp = build.prepare(config, None)
  state = checkpoint.load_state(directory / 'state', jax.eval_shape(exp.new_state))
  batch = dict(np.load(directory / 'batch.npz'))
  step = steps.make_train_step(exp.program.model, exp.program.optimizer, config.optim, 'skip',
                               exp.program.task, exp.program.augment)
  jax.config.update('jax_debug_nans', True)
  try:
    jax.block_until_ready(jax.jit(step)(state, batch))
  except FloatingPointError as e:
    return str(e)
  finally:
    jax.config.update('jax_debug_nans', False)
  return 'the step ran without producing a NaN under jax_debug_nans (an inf, or a nondeterministic NaN)'


if __name__ == '__main__':
  if len(sys.argv) != 2:
    sys.exit('usage: python -m jaxtrain.diagnostics.nan WORKDIR/nan_dump/step_<k>')
  try:
    print(replay(pathlib.Path(sys.argv[1])))
  except ConfigError as e:  # E.g. a run trained on objects passed to fit: they cannot be rebuilt here.
    sys.exit(f'error: {e}')

"""A trained run's predictions (`predict`, --mode predict) and the run exported as a program that needs only
JAX to run (`export`, --mode export).

Both take the inputs as they are stored (raw pixels, token ids): the run's train-split normalization is
applied for them. `predict` runs the newest checkpoint (its moving average when the run evaluates that) in
padded batches of `data.eval_batch_size`, so every call has one compiled shape, and cuts the padding off.
`export` writes export/model.bin, the bytes of `jax.export.Exported.serialize()` of a function from the
raw inputs to the outputs with the weights and the normalization inside and the batch dimension symbolic,
and export/meta.json (inputs' shapes and dtypes, normalization, config). Any JAX program reloads it with
`jax.export.deserialize(bytes).call(*inputs)`, with no jaxtrain import. export/variables.safetensors holds
the weights themselves ('params/...', 'batch_stats/...'), for PyTorch, Hugging Face or init_from.
"""

import functools
import json
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax import export as jax_export

from jaxtrain import build, data, weights
from jaxtrain.config import ConfigError
from jaxtrain.state import variables

EXPORT_DIR = 'export'
MODEL_FILE = 'model.bin'
META_FILE = 'meta.json'
VARIABLES_FILE = 'variables.safetensors'
PREDICTIONS_FILE = 'predictions.npy'


def _inputs(exp, inputs) -> dict:
  """The model's input arrays by key (an array alone is the first of `model.inputs`), checked against the
  shapes the run was trained on: a ConfigError names the key, the shape given and the one expected."""
  keys = tuple(exp.config.model.inputs)
  if not isinstance(inputs, dict):
    inputs = {keys[0]: inputs}
  missing = [key for key in keys if key not in inputs]
  if missing:
    raise ConfigError(f'predict inputs lack {", ".join(missing)}; give every key of model.inputs='
                      f'{keys} (an .npz file with those names, or a dict)')
  checked = {}
  for key in keys:
    values, expected = np.asarray(inputs[key]), exp.example[key].shape[1:]
    if values.ndim != len(expected) + 1 or values.shape[1:] != expected:
      raise ConfigError(f'predict input {key!r} has shape {values.shape}, but the model was trained on '
                        f'(batch, {", ".join(map(str, expected))}); give a batch of those')
    checked[key] = values
  return checked


@functools.lru_cache(maxsize=8)
def _forward(model, use_ema: bool):
  """The model's outputs for a normalized batch, jitted once per model (compared by identity)."""
  def forward(state, batch):
    params = state.ema if use_ema else state.params
    return model.apply(variables(state.replace(params=params)), batch, train=False)
  return jax.jit(forward)


def _uses_ema(config) -> bool:
  return bool(config.optim.ema_decay > 0 and config.optim.ema_eval)


def predict(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, inputs) -> np.ndarray:
  """The trained model's outputs (logits for classifiers) for `inputs`: an array for a one-input model, or
  a dict of arrays by `model.inputs` key, stored values (not normalized). Reads; writes nothing."""
  workdir = pathlib.Path(workdir)
  exp = build.prepare(config, workdir)
  inputs = _inputs(exp, inputs)
  state, stats = build.trained_state(exp, workdir)
  forward = _forward(exp.program.model, _uses_ema(config))
  outputs = []
  for batch in data.iterate(data.eval_batches(inputs, stats, config.data.eval_batch_size)):
    real = int(batch.pop('mask').sum())
    outputs.append(np.asarray(jax.device_get(forward(state, exp.strategy.place_batch(batch))))[:real])
  return np.concatenate(outputs)


def write_predictions(config: ml_collections.ConfigDict, workdir: str | pathlib.Path,
                      path: str) -> pathlib.Path:
  """--mode predict: the outputs for the arrays in `path` (.npy: the first model input; .npz: by key) into
  workdir/predictions.npy."""
  try:
    loaded = np.load(path)
  except (OSError, ValueError) as e:
    raise ConfigError(f'predict.input={path!r} cannot be read as .npy or .npz ({e}); save the inputs with '
                      'numpy.save or numpy.savez') from None
  inputs = dict(loaded) if isinstance(loaded, np.lib.npyio.NpzFile) else loaded
  outputs = predict(config, workdir, inputs)
  target = pathlib.Path(workdir) / PREDICTIONS_FILE
  np.save(target, outputs)
  return target


def export(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> pathlib.Path:
  """--mode export: export/model.bin and export/meta.json of the trained run in `workdir`."""
  workdir = pathlib.Path(workdir)
  exp = build.prepare(config, workdir)
  state, stats = build.trained_state(exp, workdir)
  state = jax.device_get(state)
  keys = tuple(config.model.inputs)
  model, use_ema = exp.program.model, _uses_ema(config)

  def serve(*raw):
    batch = {}
    for key, values in zip(keys, raw, strict=True):
      moments = stats.get(key)
      if isinstance(moments, dict):  # The run's normalization, inside the program.
        values = (values.astype(jnp.float32) - jnp.asarray(moments['mean'], jnp.float32)) / jnp.asarray(
            moments['std'], jnp.float32)
      batch[key] = values
    return model.apply(served, batch, train=False)

  served = variables(state.replace(params=state.ema if use_ema else state.params))
  raw_example = {key: data.gather(exp.splits.train, np.arange(1))[key] for key in keys}
  batch_dim = jax_export.symbolic_shape('batch')[0]
  specs = [jax.ShapeDtypeStruct((batch_dim, *raw_example[key].shape[1:]), raw_example[key].dtype)
           for key in keys]
  exported = jax_export.export(jax.jit(serve))(*specs)
  folder = workdir / EXPORT_DIR
  folder.mkdir(exist_ok=True)
  (folder / MODEL_FILE).write_bytes(exported.serialize())
  weights.save(served, folder / VARIABLES_FILE, metadata={'model': config.model.name})
  meta = {'inputs': [{'key': key, 'shape': ['batch', *raw_example[key].shape[1:]],
                      'dtype': str(raw_example[key].dtype)} for key in keys],
          'outputs': {'shape': ['batch', *map(int, exported.out_avals[0].shape[1:])],
                      'dtype': str(exported.out_avals[0].dtype)},
          'normalization': stats, 'platforms': list(exported.platforms), 'config': config.to_dict()}
  (folder / META_FILE).write_text(json.dumps(meta, indent=2) + '\n')
  return folder

"""Temporary memory of the train step with and without model.remat, from XLA's memory analysis.

    python benchmarks/remat.py

For ResNet-18 (32x32, batch 128), ViT (CIFAR-sized, 6 blocks) and the GPT of configs/text_gpt.py
(128 tokens, batch 32), each compiled (not run) with model.remat=none, full and dots_saveable on this
machine's backend. Prints one JSON object: per model and mode, the step's temporaries and total per device
in MiB, and each mode's temporaries as a ratio of none's.
"""

import json

import jax
import numpy as np

from jaxtrain import config as config_lib
from jaxtrain import model as model_lib
from jaxtrain import models, optim, state, steps, tasks

MODELS = {
    'resnet18': ({'width': 64}, {'image': (128, 32, 32, 3)}),
    'vit': ({'width': 256, 'num_layers': 6, 'num_heads': 8, 'mlp_dim': 512, 'patch_size': 4},
            {'image': (128, 32, 32, 3)}),
    'gpt': ({'width': 128, 'num_layers': 4, 'num_heads': 4, 'mlp_dim': 512, 'max_len': 128,
             'activation': 'gelu'}, {'tokens': (32, 128)}),
}
MIB = 1 << 20


def step_memory(name: str, options: dict, shapes: dict, remat: str) -> dict:
  config = config_lib.defaults()
  config.model.update(name=name, remat=remat, **options)
  if name == 'gpt':
    config.task.name = 'language_modeling'
  num_classes = 257 if name == 'gpt' else 10
  model = model_lib.wrap(models.build(config.model, num_classes), tuple(shapes))
  batch = {key: np.zeros(shape, np.int32 if key == 'tokens' else np.float32)
           for key, shape in shapes.items()}
  first = next(iter(shapes.values()))  # The labels: one per token for the GPT, one per image otherwise.
  label, label_shape = ('targets', first[:2]) if name == 'gpt' else ('label', first[:1])
  batch[label] = np.zeros(label_shape, np.int32)
  optimizer = optim.build(config.optim, total_steps=100)
  task = tasks.build(config.task)
  example = {key: value[:1] for key, value in batch.items()}
  abstract_state = jax.eval_shape(lambda: state.create(model, optimizer.tx, example, 0))
  train_step = jax.jit(steps.make_train_step(model, optimizer, config.optim, task=task), donate_argnums=0)
  analysis = train_step.lower(abstract_state, batch).compile().memory_analysis()
  return {'temporaries_mib': analysis.temp_size_in_bytes / MIB,
          'total_mib': (analysis.argument_size_in_bytes + analysis.output_size_in_bytes
                        - analysis.alias_size_in_bytes + analysis.temp_size_in_bytes) / MIB}


def main() -> None:
  results = {}
  for name, (options, shapes) in MODELS.items():
    modes = {mode: step_memory(name, options, shapes, mode) for mode in ('none', 'full', 'dots_saveable')}
    for figures in modes.values():
      figures['temporaries_vs_none'] = figures['temporaries_mib'] / modes['none']['temporaries_mib']
    results[name] = modes
  print(json.dumps({'backend': jax.default_backend(), 'results': results}, indent=2))


if __name__ == '__main__':
  main()

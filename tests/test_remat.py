"""model.remat (jax.checkpoint on the blocks of resnet, vit and gpt): the same parameters and the same
gradients with and without it; a model without blocks refuses it. The memory it saves is measured by
benchmarks/remat.py, not here."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtrain import config as config_lib
from jaxtrain import model as model_lib
from jaxtrain import models

SMALL = {
    'resnet18': {'width': 8},
    'vit': {'width': 32, 'num_layers': 2, 'num_heads': 2, 'mlp_dim': 64, 'patch_size': 4, 'dropout': 0.1},
    'gpt': {'width': 32, 'num_layers': 2, 'num_heads': 2, 'mlp_dim': 64, 'max_len': 16, 'dropout': 0.1},
}
BATCH = {'image': np.random.default_rng(0).normal(size=(4, 16, 16, 3)).astype(np.float32),
         'tokens': np.random.default_rng(1).integers(0, 10, (4, 16)).astype(np.int32)}


def gradients(name: str, remat: str):
  cfg = config_lib.defaults().model
  cfg.update(name=name, remat=remat, **SMALL[name])
  model = model_lib.wrap(models.build(cfg, 10), ('tokens',) if name == 'gpt' else ('image',))
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), BATCH)  # Eager, each op would compile alone.

  def loss(params):  # Training mode: dropout and BatchNorm's batch statistics inside the checkpoint too.
    outputs, _ = model.apply({**variables, 'params': params}, BATCH, train=True,
                             rngs={'dropout': jax.random.PRNGKey(1)}, mutable=['batch_stats'])
    return jnp.mean(outputs ** 2)

  return jax.jit(jax.grad(loss))(variables['params'])


@pytest.mark.parametrize('name', sorted(SMALL))
def test_remat_gives_the_same_parameters_and_gradients(name):
  plain = gradients(name, 'none')
  for mode in ('full', 'dots_saveable'):
    checkpointed = gradients(name, mode)
    assert jax.tree_util.tree_structure(checkpointed) == jax.tree_util.tree_structure(plain)  # Same paths.
    for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(checkpointed), strict=True):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_remat_is_refused_where_there_are_no_blocks_and_for_an_unknown_policy():
  cfg = config_lib.defaults().model
  cfg.update(name='mlp', remat='full')
  with pytest.raises(config_lib.ConfigError, match="model.remat='full' checkpoints the blocks of resnet"):
    models.build(cfg, 10)
  cfg.update(name='vit', remat='everything')
  with pytest.raises(config_lib.ConfigError, match="model.remat='everything'"):
    models.build(cfg, 10)

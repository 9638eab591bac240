"""The package's shape: imports point one way, nobody uses another module's private names, and importing
jaxtrain leaves matplotlib alone."""

import ast
import os
import pathlib
import subprocess
import sys

from conftest import ROOT

PACKAGE = ROOT / 'jaxtrain'

# config -> registries and building blocks -> step -> build/evaluation -> engine -> callbacks -> the
# population and ensemble trainers (fit and evaluate dispatch them) -> api -> CLI, diagnostics, sweeps.
LAYERS = [
    ['config'],
    ['model', 'models', 'tasks', 'data', 'optim', 'state', 'parallel', 'checkpoint', 'compile_cache',
     'monitor', 'perf', 'weights', 'history', 'registry', 'diagnostics.stats', 'diagnostics.curves',
     'diagnostics.training', 'diagnostics.plots', 'diagnostics.figure_process', 'experiments.transfer'],
    ['steps'],
    ['build', 'evaluation', 'generation', 'serving', 'diagnostics.baselines', 'diagnostics.predictions',
     'diagnostics.views', 'diagnostics.run_report'],
    ['engine'],
    ['callbacks'],
    ['experiments.population', 'experiments.ensemble'],
    ['api'],
    ['main', 'diagnostics', 'experiments', ''],  # '' is jaxtrain/__init__.py.
]


def module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(PACKAGE).with_suffix('').parts
  return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def layer(name: str) -> int:
  """The layer of a module: its longest matching prefix in LAYERS."""
  best, level = -1, None
  for index, prefixes in enumerate(LAYERS):
    for prefix in prefixes:
      if (name == prefix or name.startswith(prefix + '.') or prefix == '') and len(prefix) > best:
        best, level = len(prefix), index
  return level


def imports(path: pathlib.Path):
  """(imported jaxtrain module, names taken from it, line) for every import of a jaxtrain module."""
  tree = ast.parse(path.read_text())
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module and node.module.split('.')[0] == 'jaxtrain':
      for alias in node.names:
        submodule = f'{node.module}.{alias.name}'
        is_module = (PACKAGE / f'{submodule[len("jaxtrain."):].replace(".", "/")}.py').exists() or (
            PACKAGE / submodule[len('jaxtrain.'):].replace('.', '/')).is_dir()
        yield (submodule if is_module else node.module), ([] if is_module else [alias.name]), node.lineno
    elif isinstance(node, ast.Import):
      for alias in node.names:
        if alias.name.split('.')[0] == 'jaxtrain':
          yield alias.name, [], node.lineno


def private_attributes(path: pathlib.Path) -> list[str]:
  """`module._name` uses where `module` is an imported jaxtrain module."""
  tree = ast.parse(path.read_text())
  modules = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith('jaxtrain'):
      modules |= {alias.asname or alias.name for alias in node.names}
  return [f'{node.value.id}.{node.attr} (line {node.lineno})' for node in ast.walk(tree)
          if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules
          and node.attr.startswith('_') and not node.attr.startswith('__')]


def test_imports_point_one_way_and_no_module_uses_private_names():
  violations = []
  for path in sorted(PACKAGE.rglob('*.py')):
    name = module_name(path)
    for imported, names, line in imports(path):
      target = imported[len('jaxtrain.'):] if imported != 'jaxtrain' else ''
      if layer(target) > layer(name):
        violations.append(f'{name} (layer {layer(name)}) imports {target} (layer {layer(target)}), '
                          f'line {line}')
      violations += [f'{name} imports the private {target}.{n}, line {line}'
                     for n in names if n.startswith('_')]
    violations += [f'{name} uses the private {use}' for use in private_attributes(path)]
  assert not violations, '\n'.join(violations)


def test_every_module_has_a_layer():
  assert all(layer(module_name(path)) is not None for path in PACKAGE.rglob('*.py'))


def test_importing_jaxtrain_leaves_matplotlib_alone():
  """A notebook's backend (here 'svg', as if chosen by the user) survives `import jaxtrain`."""
  script = ('import matplotlib, sys, jaxtrain; '
            'print(matplotlib.get_backend(), "matplotlib.pyplot" in sys.modules)')
  result = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, timeout=120,
                          cwd=ROOT, env={**os.environ, 'MPLBACKEND': 'svg'})
  assert result.returncode == 0, result.stderr
  assert result.stdout.split() == ['svg', 'False']


def test_fit_and_the_command_line_import_tfds_only_to_open_a_data_set_by_name():
  """A run on a user's arrays never pays TFDS's 0.2 s import: it happens where a named data set opens."""
  script = ('import sys, jaxtrain.main; from jaxtrain.data import sources; '
            'print("tensorflow_datasets" in sys.modules); sources.data_dir(jaxtrain.config.defaults()); '
            'print("tensorflow_datasets" in sys.modules)')
  result = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, timeout=120,
                          cwd=ROOT)
  assert result.returncode == 0, result.stderr
  assert result.stdout.split() == ['False', 'True']


def test_the_tensorboard_writer_does_not_import_pytorch(tmp_path):
  """tensorboardX imports torch when it can find it (0.9 s); the writer keeps it from looking. A finder in
  front of every other records each attempt to find torch (torch need not be installed for that)."""
  script = f'''
import sys
looked = []
class Recorder:
  def find_spec(self, name, path=None, target=None):
    if name.split('.')[0] == 'torch':
      looked.append(name)
    return None
sys.meta_path.insert(0, Recorder())
import pathlib
from jaxtrain.callbacks import writers
writer = writers.TensorBoardWriter(pathlib.Path({str(tmp_path)!r}))
writer.write({{'step': 1, 'train/loss': 0.5}})
writer.close()
print(looked, 'torch' in sys.modules)
'''
  result = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, timeout=120,
                          cwd=ROOT)
  assert result.returncode == 0, result.stderr
  assert result.stdout.split() == ['[]', 'False']
  assert list((tmp_path / 'tb').glob('events.out.tfevents.*'))

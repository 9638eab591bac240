"""The notebooks run headless from top to bottom, and are committed without outputs.

Each notebook's `parameters` cell holds its settings; like papermill, the tests insert a cell after it with
tiny values (a smaller model, short runs), so the real notebook keeps the real settings.

* notebooks/quickstart.ipynb: the default job, its curves, the LR finder, the doctor, a comparison.
* notebooks/bring_your_own.ipynb: an NNX model, NumPy arrays, a Task and a Callback defined in the notebook.
"""

import ast
import pathlib
import re
import sys

import nbformat
import pytest
from conftest import ROOT

NOTEBOOKS = ROOT / 'notebooks'
QUICKSTART = NOTEBOOKS / 'quickstart.ipynb'
BRING_YOUR_OWN = NOTEBOOKS / 'bring_your_own.ipynb'
TIMEOUT_S = 240  # Per cell; each notebook takes about 15 s on 2 CPU cores.


def _kernel_manager(tmp_path: pathlib.Path):
  """A kernel started with this interpreter (sys.executable), whatever kernelspecs the machine has.

  The `python3` kernelspec that ipykernel's wheel installs runs `python` from PATH, which need not be the
  virtual environment's; a spec written into a folder of our own, the only one searched, cannot be shadowed.
  """
  from ipykernel.kernelspec import write_kernel_spec
  from jupyter_client.kernelspec import KernelSpecManager
  from jupyter_client.manager import AsyncKernelManager

  kernels = tmp_path / 'kernels'
  write_kernel_spec(kernels / 'python3')
  specs = KernelSpecManager(kernel_dirs=[str(kernels)], ensure_native_kernel=False)
  return AsyncKernelManager(kernel_name='python3', kernel_spec_manager=specs)


def _execute(path: pathlib.Path, parameters: str, tmp_path: pathlib.Path, monkeypatch) -> dict:
  """Runs the notebook with `parameters` inserted after its `parameters` cell (the kernel's interpreter is
  printed first, to check that it is this one); the outputs of every code cell by cell id."""
  from nbclient import NotebookClient

  # The kernel inherits the environment: its compilation cache goes to a folder of the test's own.
  monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'cache'))
  nb = nbformat.read(path, as_version=4)
  index = next(i for i, cell in enumerate(nb.cells) if 'parameters' in cell.metadata.get('tags', []))
  source = f'import sys\nprint(sys.executable)\n{parameters}'
  nb.cells.insert(index + 1, nbformat.v4.new_code_cell(source, id='injected-parameters'))
  client = NotebookClient(nb, km=_kernel_manager(tmp_path), timeout=TIMEOUT_S,
                          resources={'metadata': {'path': str(path.parent)}})
  client.execute(cleanup_kc=True)  # Shuts the kernel down (by default only a kernel nbclient started).
  outputs = {cell.id: cell.outputs for cell in nb.cells if cell.cell_type == 'code'}
  assert outputs['injected-parameters'][0]['text'].strip() == sys.executable
  return outputs


def _text(outputs: list) -> str:
  """What a cell printed (stdout and stderr)."""
  return ''.join(o.get('text', '') for o in outputs)


def _result(outputs: list) -> str:
  """The text/plain of a cell's result (its last expression)."""
  return next(o['data']['text/plain'] for o in outputs if o.get('output_type') == 'execute_result')


def _shows_figure(outputs: list) -> bool:
  return any('image/png' in o.get('data', {}) for o in outputs)


def test_quickstart_runs(tmp_path, data_dir, monkeypatch):
  extra = {'model.features': (8,), 'model.head_features': (), 'data.eval_batch_size': 512,
           'lr_find.num_steps': 20, 'doctor.overfit_steps': 20, 'doctor.flow_steps': 5,
           'doctor.lr_find_steps': 10, 'doctor.probe_examples': 64}
  outputs = _execute(QUICKSTART, f'DATA_DIR = {data_dir!r}\nNUM_STEPS = 40\nEXTRA = {extra!r}', tmp_path,
                     monkeypatch)
  for cell in ('curves', 'lr-find', 'compare-plot'):
    assert _shows_figure(outputs[cell]), f'cell {cell} showed no figure'
  assert 'step/s' in _text(outputs['train']), 'no progress bar'
  assert 'verdict:' in _text(outputs['doctor'])
  table = next(o['data']['text/markdown'] for o in outputs['compare-table'] if 'data' in o)
  assert table.count('| lr=') == 2


def test_bring_your_own_runs(tmp_path, monkeypatch):
  num_steps, target = 200, 0.9
  extra = {'doctor.overfit_steps': 20, 'doctor.flow_steps': 5, 'doctor.lr_find_steps': 10,
           'doctor.probe_examples': 64}
  outputs = _execute(BRING_YOUR_OWN, f'NUM_STEPS = {num_steps}\nEVAL_EVERY = 10\nTARGET_ACCURACY = {target}\n'
                                     f'NUM_TRAIN = 512\nEXTRA = {extra!r}', tmp_path, monkeypatch)
  assert 'train: 512 reviews' in _text(outputs['data'])
  assert 'step/s' in _text(outputs['train']), 'no progress bar'

  # The callback recorded every evaluation and stopped the run at the first that reached the target.
  printed = _text(outputs['stopped'])
  accuracies = ast.literal_eval(re.search(r'^eval/accuracy by step: (\{.*\})$', printed, re.M).group(1))
  steps = list(accuracies)
  assert steps == list(range(10, steps[-1] + 1, 10)) and steps[-1] < num_steps
  assert accuracies[steps[-1]] >= target and all(a < target for a in list(accuracies.values())[:-1])
  assert re.search(rf'^stop reason: eval/accuracy [0-9.]+ >= {target} at step {steps[-1]}$', printed, re.M)
  assert f'steps={steps[-1]},' in _result(outputs['train'])
  final = ast.literal_eval(_result(outputs['stopped']))
  assert set(final) == {'eval/accuracy', 'eval/loss', 'test/accuracy', 'test/loss'}
  assert final['eval/accuracy'] == pytest.approx(accuracies[steps[-1]], abs=1e-4)

  assert _shows_figure(outputs['curves']), 'run.plot() showed no figure'
  # evaluate() with the same objects reads the checkpoint the stop saved: the run's final metrics.
  evaluated = ast.literal_eval(_result(outputs['evaluate']))
  assert evaluated['step'] == steps[-1]
  for key, value in final.items():
    assert evaluated[key] == pytest.approx(value, rel=1e-5), key

  report = _text(outputs['doctor'])
  assert re.search(r'^verdict: (pass|warn|fail) \(', report, re.M)
  assert re.search(r"^SKIPPED\s+dead_relu .*\n\s+-> needs the zoo's activation layers", report, re.M)
  assert re.search(r'^(PASS|WARN|FAIL)\s+overfit_batch ', report, re.M)


@pytest.mark.parametrize('path', [QUICKSTART, BRING_YOUR_OWN], ids=lambda path: path.stem)
def test_committed_without_outputs(path):
  nb = nbformat.read(path, as_version=4)
  nbformat.validate(nb)
  for cell in nb.cells:
    if cell.cell_type == 'code':
      assert not cell.outputs and cell.execution_count is None, f'cell {cell.id} holds outputs'
  assert set(nb.metadata) <= {'kernelspec', 'language_info'}, 'clear the notebook metadata'
  assert nb.metadata.kernelspec.name == 'python3'
  code = [cell for cell in nb.cells if cell.cell_type == 'code']
  assert len({cell.id for cell in code}) == len(code), 'every code cell needs its own id'
  assert [cell.id for cell in code if 'parameters' in cell.metadata.get('tags', [])] == ['parameters']

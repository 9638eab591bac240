"""notebooks/quickstart.ipynb runs headless from top to bottom, and is committed without outputs.

The notebook's `parameters` cell holds its settings; like papermill, the test inserts a cell after it with
tiny values (a smaller model, short runs), so the real notebook keeps the real settings.
"""

import pathlib
import sys

import nbformat
from conftest import ROOT

NOTEBOOK = ROOT / 'notebooks' / 'quickstart.ipynb'
TIMEOUT_S = 240  # Per cell; the whole notebook takes about 15 s on 2 CPU cores.


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


def _parameters(data_dir: str) -> str:
  extra = {'model.features': (8,), 'model.head_features': (), 'data.eval_batch_size': 512,
           'lr_find.num_steps': 20, 'doctor.overfit_steps': 20, 'doctor.flow_steps': 5,
           'doctor.lr_find_steps': 10, 'doctor.probe_examples': 64}
  # The kernel's interpreter is printed to check that it is this one.
  return f'import sys\nprint(sys.executable)\nDATA_DIR = {data_dir!r}\nNUM_STEPS = 40\nEXTRA = {extra!r}'


def test_quickstart_runs(tmp_path, data_dir, monkeypatch):
  from nbclient import NotebookClient

  # The kernel inherits the environment: its compilation cache goes to a folder of the test's own.
  monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'cache'))
  nb = nbformat.read(NOTEBOOK, as_version=4)
  index = next(i for i, cell in enumerate(nb.cells) if 'parameters' in cell.metadata.get('tags', []))
  nb.cells.insert(index + 1, nbformat.v4.new_code_cell(_parameters(data_dir), id='injected-parameters'))
  client = NotebookClient(nb, km=_kernel_manager(tmp_path), timeout=TIMEOUT_S,
                          resources={'metadata': {'path': str(NOTEBOOK.parent)}})
  client.execute(cleanup_kc=True)  # Shuts the kernel down (by default only a kernel nbclient started).

  outputs = {cell.id: cell.outputs for cell in nb.cells if cell.cell_type == 'code'}
  assert outputs['injected-parameters'][0]['text'].strip() == sys.executable
  for cell in ('curves', 'lr-find', 'compare-plot'):
    assert any('image/png' in o.get('data', {}) for o in outputs[cell]), f'cell {cell} showed no figure'
  assert any('step/s' in o.get('text', '') for o in outputs['train']), 'no progress bar'
  assert any('verdict:' in o.get('text', '') for o in outputs['doctor'])
  table = next(o['data']['text/markdown'] for o in outputs['compare-table'] if 'data' in o)
  assert table.count('| lr=') == 2


def test_committed_without_outputs():
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(nb)
  for cell in nb.cells:
    if cell.cell_type == 'code':
      assert not cell.outputs and cell.execution_count is None, f'cell {cell.id} holds outputs'
  assert set(nb.metadata) <= {'kernelspec', 'language_info'}, 'clear the notebook metadata'
  assert nb.metadata.kernelspec.name == 'python3'

"""Weight files as flat {name: array} dicts: safetensors (read and written) and PyTorch's `.pth` (read).

A `.pth` file is read without PyTorch. `torch.save` writes a zip holding a pickle of the object tree and one
raw little-endian blob per tensor storage. `_TorchUnpickler` rebuilds the tensors as NumPy arrays, and it
admits only the few globals a state_dict pickle names (`_ALLOWED`), so a file from the internet cannot run
code the way `torch.load(weights_only=False)` would; this is the format `torch.load(weights_only=True)`
accepts. With `shapes_only`, both readers return zero-strided stand-ins of the right shape and dtype and read
no weights: validation checks a 300 MB file in milliseconds.
"""

import collections
import pathlib
import pickle
import zipfile
from collections.abc import Mapping

import ml_dtypes
import numpy as np

from jaxtrain.config import ConfigError

SAFETENSORS_SUFFIXES = ('.safetensors',)
TORCH_SUFFIXES = ('.pth', '.pt', '.bin', '.ckpt')

# torch.<Name>Storage -> the NumPy dtype of its elements.
_STORAGE_DTYPES = {
    'DoubleStorage': np.float64, 'FloatStorage': np.float32, 'HalfStorage': np.float16,
    'BFloat16Storage': ml_dtypes.bfloat16, 'LongStorage': np.int64, 'IntStorage': np.int32,
    'ShortStorage': np.int16, 'CharStorage': np.int8, 'ByteStorage': np.uint8, 'BoolStorage': np.bool_,
}


def stand_in(shape, dtype) -> np.ndarray:
  """An array of `shape` and `dtype` that occupies one element: transposes and reshapes of it are views."""
  return np.broadcast_to(np.zeros((), dtype), tuple(shape))


class _Storage:
  """One tensor storage: its bytes in the zip, read at most once."""

  def __init__(self, archive: zipfile.ZipFile, name: str, dtype, read: bool):
    self.archive, self.name, self.dtype, self.read = archive, name, np.dtype(dtype), read
    self._array = None

  def array(self) -> np.ndarray:
    if self._array is None:
      self._array = np.frombuffer(self.archive.read(self.name), self.dtype)
    return self._array


def _rebuild_tensor(storage: _Storage, offset: int, size, stride, *_):
  """torch._utils._rebuild_tensor_v2: a view `size` x `stride` (in elements) into the storage, copied."""
  if not storage.read:
    return stand_in(size, storage.dtype)
  flat = storage.array()
  itemsize = flat.dtype.itemsize
  view = np.lib.stride_tricks.as_strided(flat[offset:], tuple(size), tuple(s * itemsize for s in stride))
  return np.array(view)


def _rebuild_parameter(data, *_):
  """torch._utils._rebuild_parameter: an nn.Parameter is its data here."""
  return data


_ALLOWED = {
    ('collections', 'OrderedDict'): collections.OrderedDict,
    ('torch._utils', '_rebuild_tensor_v2'): _rebuild_tensor,
    ('torch._utils', '_rebuild_parameter'): _rebuild_parameter,
    **{('torch', name): name for name in _STORAGE_DTYPES},
}


class _TorchUnpickler(pickle.Unpickler):

  def __init__(self, file, archive: zipfile.ZipFile, prefix: str, read: bool):
    super().__init__(file)
    self.archive, self.prefix, self.read = archive, prefix, read
    self.storages = {}

  def find_class(self, module: str, name: str):
    if (module, name) not in _ALLOWED:
      raise pickle.UnpicklingError(f'it names {module}.{name}, which a state_dict does not hold')
    return _ALLOWED[(module, name)]

  def persistent_load(self, pid):
    kind, storage_name, key, _, _ = pid
    if kind != 'storage':
      raise pickle.UnpicklingError(f'unknown persistent id {kind!r}')
    if key not in self.storages:
      self.storages[key] = _Storage(self.archive, f'{self.prefix}data/{key}', _STORAGE_DTYPES[storage_name],
                                    self.read)
    return self.storages[key]


def _flatten(tree, prefix: str = '') -> dict:
  """A state_dict, or a checkpoint dict holding one ('state_dict', 'model'), as {dotted name: array}."""
  if isinstance(tree, np.ndarray):
    return {prefix: tree}
  if not isinstance(tree, Mapping):
    return {}
  flat = {}
  for key, value in tree.items():
    flat.update(_flatten(value, f'{prefix}.{key}' if prefix else str(key)))
  return flat


def _read_torch(path: pathlib.Path, shapes_only: bool) -> dict:
  with zipfile.ZipFile(path) as archive:
    pickles = [name for name in archive.namelist() if name.endswith('data.pkl')]
    if not pickles:
      raise ConfigError(f'{path} is not a PyTorch zip file (torch.save since 1.6) with data.pkl inside; '
                        'save it again with torch.save(model.state_dict(), path)')
    prefix = pickles[0][:-len('data.pkl')]
    with archive.open(pickles[0]) as file:
      tree = _TorchUnpickler(file, archive, prefix, read=not shapes_only).load()
  flat = _flatten(tree)
  for wrapper in ('state_dict.', 'model.'):  # Training checkpoints keep the weights under one key.
    if flat and all(name.startswith(wrapper) for name in flat):
      flat = {name[len(wrapper):]: value for name, value in flat.items()}
  return flat


def _read_safetensors(path: pathlib.Path, shapes_only: bool) -> dict:
  from safetensors import numpy as safetensors_numpy  # Imported where used (start-up time).
  from safetensors import safe_open
  if not shapes_only:
    return safetensors_numpy.load_file(path)
  with safe_open(path, framework='numpy') as file:
    return {name: stand_in(file.get_slice(name).get_shape(), _safetensors_dtype(file.get_slice(name)))
            for name in file.keys()}


def _safetensors_dtype(tensor_slice):
  names = {'F64': np.float64, 'F32': np.float32, 'F16': np.float16, 'BF16': ml_dtypes.bfloat16,
           'I64': np.int64, 'I32': np.int32, 'I16': np.int16, 'I8': np.int8, 'U8': np.uint8, 'BOOL': np.bool_}
  return names[tensor_slice.get_dtype()]


def read(path, shapes_only: bool = False) -> dict[str, np.ndarray]:
  """{name: array} of a `.safetensors` or PyTorch file; a ConfigError naming the file when it cannot be."""
  path = pathlib.Path(path).expanduser()
  if not path.is_file():
    raise ConfigError(f'weight file {str(path)!r} does not exist; give the path of a .safetensors or .pth '
                      'file')
  try:
    if path.suffix in SAFETENSORS_SUFFIXES:
      weights = _read_safetensors(path, shapes_only)
    elif path.suffix in TORCH_SUFFIXES:
      weights = _read_torch(path, shapes_only)
    else:
      raise ConfigError(f'weight file {str(path)!r} has suffix {path.suffix!r}; jaxtrain reads '
                        f'{", ".join(SAFETENSORS_SUFFIXES + TORCH_SUFFIXES)}')
  except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError) as e:
    raise ConfigError(f'cannot read weight file {str(path)!r}: {e}') from e
  if not weights:
    raise ConfigError(f'weight file {str(path)!r} holds no tensors')
  return weights


def write(weights: Mapping[str, np.ndarray], path, metadata: Mapping[str, str] | None = None) -> None:
  """`weights` ({name: array}) as a safetensors file, which PyTorch, JAX and Hugging Face all read."""
  from safetensors import numpy as safetensors_numpy
  arrays = {name: np.ascontiguousarray(value) for name, value in weights.items()}
  safetensors_numpy.save_file(arrays, str(path), metadata=dict(metadata or {}))

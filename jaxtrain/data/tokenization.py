"""Tokenizers for text data (`data.tokenizer`): UTF-8 bytes, built in and needing no files; SentencePiece
models and Hugging Face `tokenizers` JSON files, the optional extra `jaxtrain[text]`, imported only when
used. Each has `vocab_size`, `eos_id` (the id that ends a document), `encode`, `decode` and `fingerprint`
(what the text cache is keyed by: the kind and the model file's hash)."""

import hashlib
import os
from collections.abc import Iterable

from jaxtrain.config import ConfigError

TOKENIZER_KINDS = ('bytes', 'sentencepiece:<model file>', 'huggingface:<tokenizer.json>')
_INSTALL = "pip install 'jaxtrain[text]'"
# Hugging Face tokenizer files do not say which token ends a document (tokenizer_config.json does, and is
# not read); these are the names the common models give it.
HF_EOS_TOKENS = ('</s>', '<|endoftext|>', '<|end_of_text|>', '<eos>')


def _sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      digest.update(block)
  return digest.hexdigest()


class ByteTokenizer:
  """UTF-8 bytes as ids 0..255 and 256 as the end of a document: needs no model file, never meets an
  unknown character, and is the tokenizer a tiny model learns fastest from (at ~4x the sequence length of
  a subword vocabulary)."""

  vocab_size = 257
  eos_id = 256
  fingerprint = 'bytes:1'

  def encode(self, text: str) -> list[int]:
    return list(text.encode('utf-8'))

  def decode(self, ids: Iterable[int]) -> str:
    """The text of `ids`; the eos and anything outside 0..255 (e.g. -1 targets) are skipped, and bytes that
    are not valid UTF-8 (a sample cut inside a character) become U+FFFD."""
    return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode('utf-8', errors='replace')


def _model_file(kind: str, path: str, expected: str) -> str:
  path = os.path.expanduser(path)
  if not path or not os.path.isfile(path):
    raise ConfigError(f"data.tokenizer='{kind}:{path}' names no file; give the path of {expected}")
  return path


def _import(kind: str, module: str):
  """The optional package of a tokenizer kind, or a ConfigError saying how to install it."""
  try:
    return __import__(module)
  except ImportError:
    raise ConfigError(f"data.tokenizer='{kind}:...' needs the {module} package, which is not installed; "
                      f'{_INSTALL}') from None


class SentencePieceTokenizer:
  """A SentencePiece model file (`.model`). The end of a document is the model's own eos piece; a model
  trained without one (eos_id=-1) gets a dedicated id equal to its number of pieces, so `vocab_size` is
  one more than the model's and the embedding must be that large."""

  def __init__(self, path: str):
    path = _model_file('sentencepiece', path, 'a SentencePiece model (.model, from spm_train)')
    spm = _import('sentencepiece', 'sentencepiece')
    try:
      self._model = spm.SentencePieceProcessor(model_file=path)
    except Exception as e:  # noqa: BLE001 - sentencepiece raises RuntimeError/OSError for a bad file.
      raise ConfigError(f"data.tokenizer='sentencepiece:{path}' does not load as a SentencePiece model "
                        f'({str(e).splitlines()[0][:100]}); give a .model file written by spm_train'
                        ) from None
    self._pieces = self._model.get_piece_size()
    own_eos = self._model.eos_id()
    self.eos_id = own_eos if own_eos >= 0 else self._pieces
    self.vocab_size = self._pieces if own_eos >= 0 else self._pieces + 1
    self.fingerprint = f'sentencepiece:{_sha256(path)}'

  def encode(self, text: str) -> list[int]:
    return self._model.encode(text, out_type=int)

  def decode(self, ids: Iterable[int]) -> str:
    """The text of `ids`, skipping the eos and ids outside the model (e.g. -1 targets)."""
    return self._model.decode([int(i) for i in ids if 0 <= int(i) < self._pieces and int(i) != self.eos_id])


class HuggingFaceTokenizer:
  """A Hugging Face `tokenizers` JSON file (`tokenizer.json`). Encoding adds no special tokens (a
  post-processor's BOS/CLS would repeat inside every packed sequence); the end of a document is the first
  of HF_EOS_TOKENS that the vocabulary has, else a dedicated id equal to the vocabulary size, which makes
  `vocab_size` one larger."""

  def __init__(self, path: str):
    path = _model_file('huggingface', path, 'a Hugging Face tokenizers JSON file (tokenizer.json)')
    tokenizers = _import('huggingface', 'tokenizers')
    try:
      self._model = tokenizers.Tokenizer.from_file(path)
    except Exception as e:  # noqa: BLE001 - tokenizers raises a bare Exception for a bad file.
      raise ConfigError(f"data.tokenizer='huggingface:{path}' does not load as a Hugging Face tokenizers "
                        f'JSON file ({str(e).splitlines()[0][:100]}); give a tokenizer.json saved by '
                        'tokenizers.Tokenizer.save') from None
    self._size = self._model.get_vocab_size(with_added_tokens=True)
    own = [i for i in (self._model.token_to_id(token) for token in HF_EOS_TOKENS) if i is not None]
    self.eos_id = own[0] if own else self._size
    self.vocab_size = self._size if own else self._size + 1
    self.fingerprint = f'huggingface:{_sha256(path)}'

  def encode(self, text: str) -> list[int]:
    return self._model.encode(text, add_special_tokens=False).ids

  def decode(self, ids: Iterable[int]) -> str:
    """The text of `ids`, skipping special tokens (the eos among them) and ids outside the vocabulary."""
    return self._model.decode([int(i) for i in ids if 0 <= int(i) < self._size and int(i) != self.eos_id],
                              skip_special_tokens=True)


Tokenizer = ByteTokenizer | SentencePieceTokenizer | HuggingFaceTokenizer


def tokenizer(spec: str) -> Tokenizer:
  """The tokenizer `data.tokenizer` names: 'bytes', 'sentencepiece:<path>' or 'huggingface:<path>'."""
  kind, _, path = spec.partition(':')
  if spec == 'bytes':
    return ByteTokenizer()
  if kind == 'sentencepiece':
    return SentencePieceTokenizer(path)
  if kind == 'huggingface':
    return HuggingFaceTokenizer(path)
  raise ConfigError(f'data.tokenizer={spec!r} is not a tokenizer; use one of ' + ', '.join(TOKENIZER_KINDS))

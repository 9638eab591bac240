"""Text for language modelling: a corpus tokenized once, packed into fixed-length sequences and written to
ArrayRecord files that `records.Stream.of_files` reads on demand.

Tokenizing is the slow part of reading text (a Python call per document), so it happens at preparation
time, never per epoch: `prepare` tokenizes each split once and caches the packed records under
`<data_dir>/jaxtrain_text/<key>/`, where the key hashes everything the records depend on (the corpus's
files or version, the tokenizer's model file, `seq_len`, the split rule), so a changed input gets new
files and an unchanged one is reused. A `done.json` written last marks a finished preparation.

Corpora: a user's files ('text:<glob>'), Python's own help text ('python_docs', present in every CPython
install, so the default needs no download) and TFDS text data sets ('tfds:tiny_shakespeare', 'tfds:lm1b').
Tokenizers (data/tokenization.py): UTF-8 bytes (no files), SentencePiece models and Hugging Face `tokenizers`
JSON files.
"""

import dataclasses
import glob
import hashlib
import itertools
import json
import logging
import os
import pathlib
import platform
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
  import tensorflow_datasets as tfds

from jaxtrain.config import ConfigError
from jaxtrain.data import records
from jaxtrain.data.tokenization import Tokenizer, tokenizer

log = logging.getLogger('jaxtrain')

# Bumped when the layout of the packed records changes, so old caches are not read as new ones.
FORMAT = 1
CACHE_DIR = 'jaxtrain_text'
DONE_FILE = 'done.json'
SPLITS = ('train', 'validation', 'test')


@dataclasses.dataclass(frozen=True)
class _Corpus:
  """A corpus before it is read: `identity` keys the cache (cheap: no text is read for it), `splits` are
  the split names it has, and `read()` gives {split: documents}."""

  identity: dict
  splits: tuple[str, ...]
  read: Callable[[], dict[str, list[str]]]


def _files(name: str) -> _Corpus:
  """'text:<glob>': each matching file is one document. Its identity is each file's path, size and mtime,
  so an edited file is noticed without reading the corpus."""
  pattern = name[len('text:'):]
  paths = sorted(path for path in glob.glob(os.path.expanduser(pattern), recursive=True)
                 if os.path.isfile(path))
  if not paths:
    raise ConfigError(f'data.name={name!r} matches no file; give a glob of UTF-8 text files, e.g. '
                      "'text:~/corpus/**/*.txt' (** matches any folders)")
  stats = [os.stat(path) for path in paths]
  identity = {'files': [[os.path.abspath(path), stat.st_size, stat.st_mtime_ns]
                        for path, stat in zip(paths, stats, strict=True)]}

  def read() -> dict[str, list[str]]:
    documents = []
    for path in paths:
      try:
        documents.append(pathlib.Path(path).read_text(encoding='utf-8'))
      except UnicodeDecodeError as e:
        raise ConfigError(f'data.name={name!r}: {path!r} is not UTF-8 text ({e.reason} at byte {e.start}); '
                          'convert it (iconv -t utf-8) or leave it out of the glob') from None
    return {'train': documents}

  return _Corpus(identity, ('train',), read)


def _python_docs(name: str) -> _Corpus:
  """Python's `help()` topics (`pydoc_data.topics`, ~465 KB of English prose from the language reference),
  one document per topic in the order of their names: text every CPython install has."""
  try:
    from pydoc_data.topics import topics
  except ImportError:
    raise ConfigError(f"data.name={name!r}: this Python has no pydoc_data module (some distributions leave "
                      "it out); give your own files as data.name='text:<glob>'") from None
  identity = {'python': f'{platform.python_implementation()} {platform.python_version()}'}
  return _Corpus(identity, ('train',), lambda: {'train': [topics[topic] for topic in sorted(topics)]})


def is_text(builder: 'tfds.core.DatasetBuilder') -> bool:
  """Whether a TFDS data set is text for language modelling (a `Text` feature named 'text'), so a
  'tfds:<name>' goes through `prepare` rather than `sources.load`."""
  import tensorflow_datasets as tfds  # noqa: PLC0415 - imported where a TFDS set is opened (0.2 s).

  features = builder.info.features
  return 'text' in features.keys() and isinstance(features['text'], tfds.features.Text)


def _not_prepared(name: str, directory: str) -> ConfigError:
  tfds_name = name.removeprefix('tfds:')
  return ConfigError(
      f'data set {name!r} is not prepared in {directory!r} (or has no \'train\' split); prepare it once with '
      f'tfds.builder({tfds_name!r}, data_dir={directory!r}, file_format="array_record")'
      '.download_and_prepare() or point data.data_dir at a folder that has it')


def _texts(source) -> Iterator[str]:
  """The 'text' of every record of a TFDS data source, in order, read a batch of records at a time."""
  batch = 1024
  for start in range(0, len(source), batch):
    keys = list(range(start, min(start + batch, len(source))))
    for example in records.read_many(source, keys):
      text = example['text']
      yield text.decode('utf-8', errors='replace') if isinstance(text, bytes) else str(text)


def _tfds(name: str, data_dir: str) -> _Corpus:
  """'tfds:<name>': the data set's own splits of its 'text' feature, one record per document (a line of
  lm1b, all of tiny_shakespeare). Its identity is the name, version and split sizes, so data mocked by
  tfds.testing (no sizes) and the real data set do not share a cache."""
  import tensorflow_datasets as tfds  # noqa: PLC0415 - as in is_text.

  tfds_name = name[len('tfds:'):]
  try:
    builder = tfds.builder(tfds_name, data_dir=data_dir, file_format='array_record')
  except tfds.core.registered.DatasetNotFoundError:
    raise ConfigError(f'data.name={name!r} is not a TFDS data set; see '
                      'https://www.tensorflow.org/datasets/catalog for the names') from None
  if not is_text(builder):
    raise ConfigError(f"data.name={name!r} has no Text feature named 'text' (features: "
                      f'{sorted(builder.info.features.keys())}); language-model data needs one')
  # info.splits is empty both before preparation and under tfds.testing.mock_data, where every split
  # name reads; asking for each split tells the two apart.
  known = set(builder.info.splits.keys())
  splits = []
  for split in SPLITS:
    if known and split not in known:
      continue
    try:
      builder.as_data_source(split=split)
      splits.append(split)
    except (FileNotFoundError, KeyError) as e:
      if split == 'train':
        raise _not_prepared(name, data_dir) from e
  identity = {'tfds': builder.info.full_name,
              'examples': {split: builder.info.splits[split].num_examples for split in sorted(known)}}

  def read() -> dict[str, list[str]]:
    return {split: list(_texts(builder.as_data_source(split=split))) for split in splits}

  return _Corpus(identity, tuple(splits), read)


def _corpus(name: str, data_dir: str) -> _Corpus:
  if name.startswith('text:'):
    return _files(name)
  if name == 'python_docs':
    return _python_docs(name)
  if name.startswith('tfds:'):
    return _tfds(name, data_dir)
  raise ConfigError(f"data.name={name!r} is not a text corpus; use 'python_docs', 'text:<glob>' or "
                    "'tfds:<name>' (a TFDS data set with a 'text' feature)")


def documents(name: str, data_dir: str) -> dict[str, list[str]]:
  """The documents of a corpus per split: 'train', and 'validation'/'test' where the source has them."""
  return _corpus(name, data_dir).read()


def _check_seq_len(seq_len: int) -> None:
  """A sequence needs an input and its target; below 2 tokens nothing is left to predict."""
  if not isinstance(seq_len, int | np.integer) or seq_len < 2:
    raise ConfigError(f'data.seq_len={seq_len!r} is too short; packing needs at least 2 tokens per '
                      'sequence, e.g. data.seq_len=1024')


def _record(tokens: np.ndarray, docs: np.ndarray, seq_len: int) -> dict:
  """One packed sequence from `tokens` (2..seq_len + 1 of them) and the document index of each."""
  count = len(tokens) - 1  # Inputs with a real next token; the rest is padding.
  inputs, owners = tokens[:-1], docs[:-1]
  targets = np.where(docs[1:] == owners, tokens[1:], -1)
  starts = np.searchsorted(owners, owners, side='left')  # Where each input's document starts in the chunk.
  out = {key: np.zeros(seq_len, np.int32) for key in ('tokens', 'segments', 'positions')}
  out['targets'] = np.full(seq_len, -1, np.int32)
  out['tokens'][:count] = inputs
  out['targets'][:count] = targets
  out['segments'][:count] = owners - owners[0] + 1
  out['positions'][:count] = np.arange(count) - starts
  return out


def pack(documents_tokens: Iterable[Sequence[int]], seq_len: int, eos_id: int) -> Iterator[dict]:
  """Packed sequences: every document's tokens plus `eos_id`, concatenated and cut into chunks of
  `seq_len + 1` tokens that overlap by one (tokens = chunk[:-1], targets = chunk[1:]); the last chunk is
  padded (tokens 0, segments 0, positions 0, targets -1).

  Packing wastes no compute on padding, whatever the documents' lengths. Documents must not see each
  other, though: `segments` numbers the documents of a chunk from 1 (0 = padding) so the model attends only
  within a segment, `positions` restart at each document (counted from the chunk start for one that began
  earlier), and a target that belongs to the next document (after an eos) is -1, so the loss never asks a
  document to predict its neighbour.
  """
  _check_seq_len(seq_len)
  # Documents wait in `pieces` until they fill a chunk, so short documents cost one copy each, not one per
  # document of everything pending.
  pieces, pending = [], 0
  for index, ids in enumerate(documents_tokens):
    ids = np.append(np.asarray(ids, np.int32), np.int32(eos_id))
    pieces.append((ids, np.full(len(ids), index)))
    pending += len(ids)
    if pending < seq_len + 1:
      continue
    tokens, docs = (np.concatenate(parts) for parts in zip(*pieces, strict=True))
    start = 0
    while len(tokens) - start >= seq_len + 1:
      yield _record(tokens[start:start + seq_len + 1], docs[start:start + seq_len + 1], seq_len)
      start += seq_len
    pieces, pending = [(tokens[start:], docs[start:])], len(tokens) - start  # The overlap, and what is left.
  if pending >= 2:
    yield _record(*(np.concatenate(parts) for parts in zip(*pieces, strict=True)), seq_len)


def _num_sequences(num_tokens: int, seq_len: int) -> int:
  """How many sequences `pack` makes of a stream of `num_tokens` tokens (eos included)."""
  return -(-(num_tokens - 1) // seq_len) if num_tokens >= 2 else 0


@dataclasses.dataclass(frozen=True)
class Prepared:
  """A corpus tokenized and packed: the ArrayRecord files of each split (records of int32 `tokens`,
  `targets`, `segments`, `positions` of shape (seq_len,)). `eval` is the source's validation split, else
  its test split, else the end of train; `test` is the source's test split, else the eval files."""

  train: list[str]
  eval: list[str]
  test: list[str]
  eval_name: str  # 'validation' or 'test'.
  vocab_size: int
  eos_id: int
  tokenizer: str  # The spec it was tokenized with.


def _split_rule(corpus: _Corpus, name: str, validation_fraction: float) -> str:
  """'validation' or 'test' (the source's own eval split) or 'last:<fraction>' (carved from train)."""
  if not 0 <= validation_fraction < 1:
    raise ConfigError(f'data.validation_fraction={validation_fraction} is outside [0, 1); e.g. 0.1 '
                      'keeps the last 10% of the training text for validation')
  for split in ('validation', 'test'):
    if split in corpus.splits:
      return split
  if validation_fraction == 0:
    raise ConfigError(f'data.name={name!r} has no validation or test split; set data.validation_fraction=0.1 '
                      'to keep the last 10% of the training sequences for validation')
  return f'last:{validation_fraction!r}'


def _tokenize(texts: list[str], tok: Tokenizer) -> list[np.ndarray]:
  """Each document's ids, held compactly (2 bytes a token for vocabularies up to 65,536) until packed."""
  dtype = np.uint16 if tok.vocab_size <= 1 << 16 else np.int32
  return [np.asarray(tok.encode(text), dtype) for text in texts]


def _done(directory: pathlib.Path) -> dict | None:
  """The finished preparation in `directory`, or None when it is missing or incomplete."""
  try:
    done = json.loads((directory / DONE_FILE).read_text())
  except (OSError, ValueError):
    return None
  if done.get('format') != FORMAT or not all((directory / file).is_file() for file in done['files'].values()):
    return None
  return done


def _prepared(directory: pathlib.Path, done: dict, spec: str) -> Prepared:
  files = {split: [str(directory / file)] for split, file in done['files'].items()}
  return Prepared(train=files['train'], eval=files['eval'], test=files['test'], eval_name=done['eval_name'],
                  vocab_size=done['vocab_size'], eos_id=done['eos_id'], tokenizer=spec)


def prepare(name: str, data_dir: str, tokenizer_spec: str, seq_len: int,
            validation_fraction: float) -> Prepared:
  """The corpus `name` tokenized with `tokenizer_spec` and packed into sequences of `seq_len`, written once
  under `<data_dir>/jaxtrain_text/<key>/` and reused by every later call with the same inputs.

  A source without a validation or test split gives the last `validation_fraction` of its packed train
  sequences (at least one) to validation: deterministic, and a document may straddle the boundary. Token
  ids are held in memory between tokenizing and writing (2-4 bytes a token), next to the text itself.
  """
  _check_seq_len(seq_len)
  if not data_dir:
    import tensorflow_datasets as tfds  # noqa: PLC0415 - as in is_text; its default folder.

    data_dir = tfds.core.constants.DATA_DIR
  data_dir = os.path.expanduser(data_dir)
  tok = tokenizer(tokenizer_spec)
  corpus = _corpus(name, data_dir)
  rule = _split_rule(corpus, name, validation_fraction)
  identity = {'format': FORMAT, 'corpus': corpus.identity, 'tokenizer': tok.fingerprint, 'seq_len': seq_len,
              'split': rule}
  key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
  directory = pathlib.Path(data_dir) / CACHE_DIR / key
  done = _done(directory)
  if done is not None:
    return _prepared(directory, done, tokenizer_spec)

  directory.mkdir(parents=True, exist_ok=True)
  (directory / DONE_FILE).unlink(missing_ok=True)
  texts = corpus.read()
  counts, files = {}, {}
  for split, split_texts in texts.items():
    ids = _tokenize(split_texts, tok)
    num_tokens = sum(len(i) for i in ids)
    if num_tokens == 0:
      raise ConfigError(f'data.name={name!r} has no text in its {split!r} split ({len(split_texts)} '
                        'documents, all empty); give documents with text in them')
    sequences = _num_sequences(num_tokens + len(ids), seq_len)
    counts[split] = {'documents': len(ids), 'tokens': num_tokens + len(ids), 'sequences': sequences}
    packed = pack(ids, seq_len, tok.eos_id)
    if split == 'train' and rule.startswith('last:'):
      num_val = max(1, round(validation_fraction * sequences))
      if sequences - num_val < 1:
        raise ConfigError(f'data.name={name!r} packs into only {sequences} sequence(s) of data.seq_len='
                          f'{seq_len}, too few to keep some for validation; lower data.seq_len or give '
                          'more text')
      records.write(directory / 'train.array_record', itertools.islice(packed, sequences - num_val))
      records.write(directory / 'validation.array_record', packed)
      files['validation'] = 'validation.array_record'
      counts['train']['sequences'], counts['validation'] = sequences - num_val, {'sequences': num_val}
    else:
      records.write(directory / f'{split}.array_record', packed)
    files[split] = f'{split}.array_record'
  eval_name = 'test' if rule == 'test' else 'validation'
  files = {'train': files['train'], 'eval': files[eval_name], 'test': files.get('test', files[eval_name])}
  done = {'format': FORMAT, 'identity': identity, 'eval_name': eval_name, 'vocab_size': tok.vocab_size,
          'eos_id': tok.eos_id, 'counts': counts, 'files': files}
  partial = directory / f'{DONE_FILE}.{os.getpid()}.partial'  # Processes preparing at once never collide.
  partial.write_text(json.dumps(done, indent=2))
  partial.rename(directory / DONE_FILE)
  summary = '; '.join(f'{split} ' + ', '.join(f'{n} {what}' for what, n in c.items())
                      for split, c in counts.items())
  log.info('Prepared %r with tokenizer %r (seq_len %d) in %s: %s', name, tokenizer_spec, seq_len, directory,
           summary)
  return _prepared(directory, done, tokenizer_spec)

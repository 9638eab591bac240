"""Text for language modelling: tokenizers, corpora, packing and the cached preparation (data/text.py)."""

import contextlib
import json
import os
import pathlib
import re
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxtrain.config import ConfigError
from jaxtrain.data import records, text, tokenization

EOS = 99
CORPUS = ['the cat sat on the mat. ' * 8, 'a dog ate the bone! ' * 5, 'birds fly over the sea; ' * 6,
          'fish swim in the deep water. ' * 7]


def read(paths) -> dict:
  return records.Stream.of_files(paths).read()


@contextlib.contextmanager
def one_line_error(match: str):
  """pytest.raises for a ConfigError whose message contains `match` (a regex) and is one line."""
  with pytest.raises(ConfigError, match=match) as info:
    yield info
  assert '\n' not in str(info.value), str(info.value)


def write_corpus(folder: pathlib.Path, documents=CORPUS) -> str:
  folder.mkdir(parents=True, exist_ok=True)
  for i, document in enumerate(documents):
    (folder / f'doc{i}.txt').write_text(document, encoding='utf-8')
  return f'text:{folder}/*.txt'


# Tokenizers.

def test_byte_tokenizer_round_trips_any_text_and_skips_ids_outside_the_bytes():
  tok = tokenization.tokenizer('bytes')
  assert (tok.vocab_size, tok.eos_id) == (257, 256)
  sample = 'naïve café — 日本語 🙂'
  ids = tok.encode(sample)
  assert ids == list(sample.encode('utf-8')) and max(ids) < 256
  assert tok.decode(ids) == sample
  assert tok.decode([*ids[:3], 256, -1, *ids[3:]]) == sample
  assert tok.decode(ids[:-1]) == sample[:-1] + '\ufffd'  # A character cut in half.
  assert tok.fingerprint.startswith('bytes')


def test_unknown_tokenizer_kind_is_a_config_error_listing_the_kinds():
  with one_line_error(r"data.tokenizer='wordpiece:x' is not a tokenizer; use one of bytes, sentencepiece"):
    tokenization.tokenizer('wordpiece:x')


@pytest.mark.parametrize('kind', ['sentencepiece', 'huggingface'])
def test_a_missing_or_broken_tokenizer_file_is_a_config_error_naming_it(kind, tmp_path):
  pytest.importorskip('sentencepiece' if kind == 'sentencepiece' else 'tokenizers')
  expected = 'SentencePiece model' if kind == 'sentencepiece' else 'Hugging Face tokenizers JSON'
  with one_line_error(f'names no file; give the path of .*{expected}'):
    tokenization.tokenizer(f'{kind}:{tmp_path}/missing')
  broken = tmp_path / 'broken'
  broken.write_text('not a model')
  with one_line_error(f"data.tokenizer='{kind}:{broken}' does not load as a {expected}"):
    tokenization.tokenizer(f'{kind}:{broken}')


@pytest.mark.parametrize('kind, module', [('sentencepiece', 'sentencepiece'), ('huggingface', 'tokenizers')])
def test_a_missing_optional_package_says_how_to_install_it(kind, module, tmp_path, monkeypatch):
  model = tmp_path / 'model'
  model.write_text('x')
  monkeypatch.setitem(sys.modules, module, None)  # `import` raises ImportError.
  with one_line_error(rf"needs the {module} package.*pip install 'jaxtrain\[text\]'"):
    tokenization.tokenizer(f'{kind}:{model}')


def sentencepiece_model(tmp_path: pathlib.Path, **options) -> str:
  spm = pytest.importorskip('sentencepiece', reason='sentencepiece is the optional extra jaxtrain[text]')
  prefix = tmp_path / f'spm{len(options)}'
  spm.SentencePieceTrainer.train(sentence_iterator=iter(CORPUS * 4), model_prefix=str(prefix), vocab_size=60,
                                 model_type='bpe', hard_vocab_limit=False, minloglevel=2, **options)
  return f'{prefix}.model'


def test_sentencepiece_model_encodes_decodes_and_prepares(tmp_path):
  tok = tokenization.tokenizer(f'sentencepiece:{sentencepiece_model(tmp_path)}')
  assert tok.eos_id == 2 and tok.vocab_size >= 3  # spm_train's default ids: unk 0, bos 1, eos 2.
  ids = tok.encode('the cat ate the bone')
  assert tok.eos_id not in ids and all(0 <= i < tok.vocab_size for i in ids)
  assert tok.decode([*ids, tok.eos_id, -1]) == 'the cat ate the bone'
  assert tok.fingerprint.startswith('sentencepiece:')

  no_eos = tokenization.tokenizer(f'sentencepiece:{sentencepiece_model(tmp_path, eos_id=-1)}')
  assert no_eos.eos_id == no_eos.vocab_size - 1  # A dedicated id after the model's pieces.
  assert no_eos.decode([*no_eos.encode('a dog'), no_eos.eos_id]) == 'a dog'

  spec = f'sentencepiece:{sentencepiece_model(tmp_path)}'
  prepared = text.prepare(write_corpus(tmp_path / 'corpus'), str(tmp_path / 'data'), spec, 16, 0.25)
  assert (prepared.vocab_size, prepared.eos_id, prepared.tokenizer) == (tok.vocab_size, 2, spec)
  tokens = read(prepared.train)['tokens']
  assert tokens.max() < tok.vocab_size and tok.decode(tokens[0]).startswith('the cat sat')


def test_huggingface_tokenizer_encodes_decodes_and_prepares(tmp_path):
  tokenizers = pytest.importorskip('tokenizers', reason='tokenizers is the optional extra jaxtrain[text]')
  from tokenizers import decoders, models, pre_tokenizers, trainers
  model = tokenizers.Tokenizer(models.BPE())
  model.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  model.decoder = decoders.ByteLevel()
  model.train_from_iterator(CORPUS, trainers.BpeTrainer(
      vocab_size=300, special_tokens=['<pad>', '</s>'], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
      show_progress=False))
  path = tmp_path / 'tokenizer.json'
  model.save(str(path))
  tok = tokenization.tokenizer(f'huggingface:{path}')
  assert tok.eos_id == 1 and tok.vocab_size == model.get_vocab_size()
  sample = 'the dog swims — café'
  ids = tok.encode(sample)
  assert tok.decode([*ids, tok.eos_id, -1]) == sample

  words = tokenizers.Tokenizer(models.WordLevel({'[UNK]': 0, 'cat': 1, 'dog': 2}, unk_token='[UNK]'))
  words.pre_tokenizer = pre_tokenizers.Whitespace()
  words.save(str(tmp_path / 'words.json'))
  no_eos = tokenization.tokenizer(f'huggingface:{tmp_path / "words.json"}')
  assert (no_eos.eos_id, no_eos.vocab_size) == (3, 4)  # No eos token: a dedicated id after the vocabulary.
  assert no_eos.encode('cat dog') == [1, 2]

  name = write_corpus(tmp_path / 'corpus')
  prepared = text.prepare(name, str(tmp_path / 'data'), f'huggingface:{path}', 16, 0.25)
  assert (prepared.vocab_size, prepared.eos_id) == (tok.vocab_size, 1)
  assert tok.decode(read(prepared.train)['tokens'][0]).startswith('the cat sat')


# Packing.

def test_pack_a_hand_made_example():
  # The stream: 1 2 3 E | 4 5 E | 6 7 8 9 10 E (13 tokens), cut into chunks of 5 overlapping by one.
  packed = list(text.pack([[1, 2, 3], [4, 5], [6, 7, 8, 9, 10]], seq_len=4, eos_id=EOS))
  assert len(packed) == 3  # ceil((13 - 1) / 4).
  expected = [
      # tokens              targets                  segments       positions
      ([1, 2, 3, EOS], [2, 3, EOS, -1], [1, 1, 1, 1], [0, 1, 2, 3]),
      ([4, 5, EOS, 6], [5, EOS, -1, 7], [1, 1, 1, 2], [0, 1, 2, 0]),
      # Document 3 began in the chunk before, so its positions count from this chunk's start.
      ([7, 8, 9, 10], [8, 9, 10, EOS], [1, 1, 1, 1], [0, 1, 2, 3]),
  ]
  for record, (tokens, targets, segments, positions) in zip(packed, expected, strict=True):
    assert set(record) == {'tokens', 'targets', 'segments', 'positions'}
    assert all(value.dtype == np.int32 and value.shape == (4,) for value in record.values())
    np.testing.assert_array_equal(record['tokens'], tokens)
    np.testing.assert_array_equal(record['targets'], targets)
    np.testing.assert_array_equal(record['segments'], segments)
    np.testing.assert_array_equal(record['positions'], positions)

  # One more token: the last chunk holds only the final eos as a target and is padded.
  last = list(text.pack([[1, 2, 3], [4, 5], [6, 7, 8, 9, 10, 11]], seq_len=4, eos_id=EOS))[-1]
  np.testing.assert_array_equal(last['tokens'], [11, 0, 0, 0])
  np.testing.assert_array_equal(last['targets'], [EOS, -1, -1, -1])
  np.testing.assert_array_equal(last['segments'], [1, 0, 0, 0])
  np.testing.assert_array_equal(last['positions'], [0, 0, 0, 0])


@pytest.mark.parametrize('seq_len', [2, 3, 7, 64])
def test_pack_targets_are_the_next_tokens_masked_exactly_at_boundaries_and_padding(seq_len):
  rng = np.random.default_rng(seq_len)
  documents = [list(rng.integers(0, 50, rng.integers(0, 20))) for _ in range(30)]  # Some are empty.
  stream = [t for document in documents for t in (*document, EOS)]
  owner = [i for i, document in enumerate(documents) for _ in range(len(document) + 1)]
  packed = list(text.pack(documents, seq_len, EOS))
  assert len(packed) == -(-(len(stream) - 1) // seq_len)
  real = 0
  for i, record in enumerate(packed):
    for t in range(seq_len):
      j = i * seq_len + t  # This input's place in the stream.
      if j >= len(stream) - 1:  # Padding.
        assert (record['tokens'][t], record['targets'][t], record['segments'][t],
                record['positions'][t]) == (0, -1, 0, 0)
        continue
      assert record['tokens'][t] == stream[j]
      same = owner[j + 1] == owner[j]
      assert record['targets'][t] == (stream[j + 1] if same else -1)
      real += same
      chunk_start = i * seq_len
      assert record['segments'][t] == owner[j] - owner[chunk_start] + 1
      assert record['positions'][t] == j - max(chunk_start, owner.index(owner[j]))
    assert record['positions'].max() < seq_len
  # Every token but each document's eos predicts the next one of its document.
  assert real == len(stream) - len(documents)
  assert sum(int((record['targets'] != -1).sum()) for record in packed) == real


def test_pack_and_prepare_refuse_a_seq_len_under_two(tmp_path):
  with one_line_error('data.seq_len=1 is too short'):
    next(text.pack([[1, 2, 3]], 1, EOS))
  with one_line_error('data.seq_len=1 is too short'):
    text.prepare('python_docs', str(tmp_path), 'bytes', 1, 0.1)


# Preparation.

def test_prepare_text_files_caches_and_carves_the_last_sequences_for_validation(tmp_path):
  name, data_dir = write_corpus(tmp_path / 'corpus'), str(tmp_path / 'data')
  prepared = text.prepare(name, data_dir, 'bytes', 32, 0.25)
  assert (prepared.eval_name, prepared.vocab_size, prepared.eos_id) == ('validation', 257, 256)
  assert prepared.test == prepared.eval
  folder = pathlib.Path(prepared.train[0]).parent
  assert folder.parent == tmp_path / 'data' / 'jaxtrain_text' and (folder / 'done.json').is_file()
  for path in (*prepared.train, *prepared.eval):
    assert pathlib.Path(path).is_file()

  # The validation rows are the last 25% of the sequences of the whole corpus, packed in file order.
  tok = tokenization.ByteTokenizer()
  everything = list(text.pack([tok.encode(document) for document in CORPUS], 32, tok.eos_id))
  num_val = round(0.25 * len(everything))
  train, validation = read(prepared.train), read(prepared.eval)
  assert (len(train['tokens']), len(validation['tokens'])) == (len(everything) - num_val, num_val)
  for key in everything[0]:
    np.testing.assert_array_equal(np.concatenate([train[key], validation[key]]),
                                  np.stack([record[key] for record in everything]))
  done = json.loads((folder / 'done.json').read_text())
  assert done['counts']['train']['documents'] == len(CORPUS)
  assert done['counts']['train']['tokens'] == sum(len(d) + 1 for d in CORPUS)

  # The same inputs again: the same files, not rewritten.
  mtimes = [os.stat(path).st_mtime_ns for path in (*prepared.train, *prepared.eval)]
  assert text.prepare(name, data_dir, 'bytes', 32, 0.25) == prepared
  assert [os.stat(path).st_mtime_ns for path in (*prepared.train, *prepared.eval)] == mtimes

  # Deterministic: another folder gets byte-identical files under the same key.
  again = text.prepare(name, str(tmp_path / 'other'), 'bytes', 32, 0.25)
  assert pathlib.Path(again.train[0]).parent.name == folder.name
  for a, b in ((prepared.train, again.train), (prepared.eval, again.eval)):
    assert pathlib.Path(a[0]).read_bytes() == pathlib.Path(b[0]).read_bytes()

  # Another seq_len or fraction, or a changed file, is another key.
  assert text.prepare(name, data_dir, 'bytes', 16, 0.25).train != prepared.train
  assert text.prepare(name, data_dir, 'bytes', 32, 0.5).train != prepared.train
  changed = tmp_path / 'corpus' / 'doc1.txt'
  changed.write_text('an edited document', encoding='utf-8')
  os.utime(changed, ns=(mtimes[0] + 10**9, mtimes[0] + 10**9))
  edited = text.prepare(name, data_dir, 'bytes', 32, 0.25)
  assert pathlib.Path(edited.train[0]).parent != folder
  assert b'an edited document' in bytes(read(edited.train)['tokens'].ravel().astype(np.uint8))


def test_an_interrupted_preparation_is_redone(tmp_path):
  name, data_dir = write_corpus(tmp_path / 'corpus'), str(tmp_path / 'data')
  prepared = text.prepare(name, data_dir, 'bytes', 32, 0.25)
  folder = pathlib.Path(prepared.train[0]).parent
  (folder / 'done.json').unlink()
  pathlib.Path(prepared.eval[0]).write_bytes(b'half a file')
  assert text.prepare(name, data_dir, 'bytes', 32, 0.25) == prepared
  assert len(read(prepared.eval)['tokens']) > 0 and (folder / 'done.json').is_file()


def test_python_docs_is_the_help_text_of_this_python(tmp_path):
  from pydoc_data.topics import topics
  corpus = text.documents('python_docs', str(tmp_path))
  assert list(corpus) == ['train'] and corpus['train'] == [topics[t] for t in sorted(topics)]
  prepared = text.prepare('python_docs', str(tmp_path), 'bytes', 1024, 0.05)
  train, validation = read(prepared.train), read(prepared.eval)
  real_targets = sum(int((split['targets'] != -1).sum()) for split in (train, validation))
  assert real_targets == sum(len(topic.encode()) for topic in topics.values()) > 400_000
  assert tokenization.ByteTokenizer().decode(train['tokens'][0]).startswith(topics[sorted(topics)[0]][:100])


def test_tiny_shakespeare_through_mock_data_uses_its_own_splits(tmp_path):
  # MockPolicy.USE_CODE: tfds ships no metadata for tiny_shakespeare, so the features come from its code and
  # every split reads 3 random strings (the same ones in each split).
  with tfds.testing.mock_data(num_examples=3, policy=tfds.testing.MockPolicy.USE_CODE):
    builder = tfds.builder('tiny_shakespeare', data_dir=str(tmp_path), file_format='array_record')
    assert text.is_text(builder)
    assert not text.is_text(tfds.builder('mnist', data_dir=str(tmp_path)))
    corpus = text.documents('tfds:tiny_shakespeare', str(tmp_path))
    assert sorted(corpus) == ['test', 'train', 'validation']
    assert all(len(documents) == 3 and all(isinstance(d, str) and d for d in documents)
               for documents in corpus.values())
    prepared = text.prepare('tfds:tiny_shakespeare', str(tmp_path), 'bytes', 8, 0.0)  # No carving needed.
  assert prepared.eval_name == 'validation'
  assert [pathlib.Path(p[0]).name for p in (prepared.train, prepared.eval, prepared.test)] == [
      'train.array_record', 'validation.array_record', 'test.array_record']
  train = read(prepared.train)
  assert len(train['tokens']) == -(-(sum(len(d) + 1 for d in corpus['train']) - 1) // 8)
  assert tokenization.ByteTokenizer().decode(train['tokens'].ravel()).startswith(corpus['train'][0])


def test_an_unprepared_tfds_data_set_says_how_to_prepare_it(tmp_path):
  with one_line_error(r"'tfds:tiny_shakespeare' is not prepared in .*download_and_prepare\(\)"):
    text.prepare('tfds:tiny_shakespeare', str(tmp_path), 'bytes', 8, 0.1)
  with one_line_error("has no Text feature named 'text'"):
    text.documents('tfds:mnist', str(tmp_path))


# Errors a user can cause.

def test_a_glob_that_matches_nothing_is_a_config_error(tmp_path):
  name = f'text:{tmp_path}/nothing/*.txt'
  with one_line_error(re.escape(f"data.name='{name}' matches no file; ")):
    text.prepare(name, str(tmp_path), 'bytes', 8, 0.1)


def test_a_file_that_is_not_utf8_is_a_config_error_naming_it(tmp_path):
  name = write_corpus(tmp_path / 'corpus')
  (tmp_path / 'corpus' / 'latin1.txt').write_bytes('café'.encode('latin-1'))
  with one_line_error(r"latin1.txt' is not UTF-8 text .*iconv"):
    text.prepare(name, str(tmp_path / 'data'), 'bytes', 8, 0.1)


def test_no_validation_split_and_no_fraction_asks_for_one(tmp_path):
  with one_line_error("has no validation or test split; set data.validation_fraction=0.1"):
    text.prepare(write_corpus(tmp_path / 'corpus'), str(tmp_path), 'bytes', 8, 0.0)


def test_an_empty_corpus_or_too_little_text_is_a_config_error(tmp_path):
  with one_line_error(r"has no text in its 'train' split \(2 documents, all empty\)"):
    text.prepare(write_corpus(tmp_path / 'empty', ['', '']), str(tmp_path), 'bytes', 8, 0.1)
  with one_line_error('packs into only 1 sequence'):
    text.prepare(write_corpus(tmp_path / 'short', ['abc']), str(tmp_path), 'bytes', 8, 0.1)
  with one_line_error('is not a text corpus'):
    text.documents('shakespeare', str(tmp_path))

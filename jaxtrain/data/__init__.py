"""Input: a user's arrays or record files, data sets by name (TFDS, incl. the embedded digits), text, and
Grain pipelines."""

from jaxtrain.data import records
from jaxtrain.data.arrays import Arrays
from jaxtrain.data.pipeline import (
    STATS_FILE,
    chunk_steps,
    chunks,
    compute_stats,
    device_dtype,
    eval_batches,
    gather,
    iterate,
    length,
    load_or_compute_stats,
    prefetch,
    stream_state,
    train_batches,
    train_iterator,
    workers,
)
from jaxtrain.data.sources import DATASETS, RecordFiles, Splits, load, read, subset

__all__ = ['DATASETS', 'STATS_FILE', 'Arrays', 'RecordFiles', 'Splits', 'chunk_steps', 'chunks',
           'compute_stats', 'device_dtype', 'eval_batches', 'gather', 'iterate', 'length', 'load',
           'load_or_compute_stats', 'prefetch', 'read', 'records', 'stream_state', 'subset', 'train_batches',
           'train_iterator', 'workers']

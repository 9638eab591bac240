"""Input: a user's arrays, data sets by name (TFDS, incl. the embedded digits) and Grain pipelines."""

from jaxtrain.data.arrays import Arrays
from jaxtrain.data.pipeline import (
    STATS_FILE,
    chunk_steps,
    chunks,
    compute_stats,
    device_dtype,
    eval_batches,
    iterate,
    length,
    load_or_compute_stats,
    prefetch,
    stream_state,
    train_batches,
    train_iterator,
)
from jaxtrain.data.sources import DATASETS, Splits, load, read, subset

__all__ = ['DATASETS', 'STATS_FILE', 'Arrays', 'Splits', 'chunk_steps', 'chunks', 'compute_stats',
           'device_dtype', 'eval_batches', 'iterate', 'length', 'load', 'load_or_compute_stats', 'prefetch',
           'read', 'stream_state', 'subset', 'train_batches', 'train_iterator']

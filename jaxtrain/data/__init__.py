"""Input: data sets by name (TFDS, incl. the embedded digits) and Grain pipelines."""

from jaxtrain.data.pipeline import (
    STATS_FILE,
    chunk_steps,
    chunks,
    compute_stats,
    eval_batches,
    iterate,
    load_or_compute_stats,
    prefetch,
    stream_state,
    train_batches,
    train_iterator,
)
from jaxtrain.data.sources import DATASETS, Splits, load, read

__all__ = ['DATASETS', 'STATS_FILE', 'Splits', 'chunk_steps', 'chunks', 'compute_stats', 'eval_batches',
           'iterate', 'load', 'load_or_compute_stats', 'prefetch', 'read', 'stream_state', 'train_batches',
           'train_iterator']

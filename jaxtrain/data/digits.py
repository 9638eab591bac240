"""A TFDS builder for scikit-learn's bundled digits: 1,797 real 8x8 handwritten digits, no download.

The default job trains on it so that jaxtrain runs offline. Pixels keep their original range 0..16 as uint8;
normalization with training-split statistics happens in the input pipeline like for any other data set.
The train/test split is fixed (a seeded permutation, 1,437 train / 360 test) so results compare across runs.
"""

import numpy as np
import tensorflow_datasets as tfds

_NUM_TEST = 360
_SPLIT_SEED = 20240101


class Digits(tfds.core.GeneratorBasedBuilder):
  """scikit-learn's digits as a TFDS data set in array_record format (readable by Grain without TF)."""

  VERSION = tfds.core.Version('1.0.0')

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description="scikit-learn's copy of the UCI optical recognition of handwritten digits test set.",
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Tensor(shape=(8, 8, 1), dtype=np.uint8),
            'label': tfds.features.ClassLabel(num_classes=10),
        }),
        supervised_keys=('image', 'label'),
        homepage='https://scikit-learn.org/stable/datasets/toy_dataset.html#digits-dataset',
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # The data ships with scikit-learn.
    # Imported here: scikit-learn costs ~2 s to import and is needed once, to prepare the files; reading
    # them afterwards needs only TFDS.
    from sklearn.datasets import load_digits  # noqa: PLC0415

    digits = load_digits()
    images = digits.images.astype(np.uint8)[..., None]
    order = np.random.default_rng(_SPLIT_SEED).permutation(len(images))
    test, train = order[:_NUM_TEST], order[_NUM_TEST:]
    return {
        'train': self._generate_examples(images[train], digits.target[train]),
        'test': self._generate_examples(images[test], digits.target[test]),
    }

  def _generate_examples(self, images, labels):
    for index, (image, label) in enumerate(zip(images, labels, strict=True)):
      yield index, {'image': image, 'label': int(label)}

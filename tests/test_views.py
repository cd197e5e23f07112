"""Tests for keras_kd.views: recorded views, their teacher targets, the epochs."""

import keras
import numpy as np
import pytest

import keras_kd
from keras_kd.caching import INPUTS_KEY, TEACHER_LOGITS_KEY
from keras_kd.views import ShiftFlip, ViewCache, cache_teacher_views, fingerprint

COUNT, SIZE, CLASSES = 12, 5, 3
RNG = np.random.default_rng(0)
X = RNG.uniform(size=(COUNT, SIZE, SIZE, 1)).astype("float32")
KERNEL = RNG.normal(size=(SIZE * SIZE, CLASSES)).astype("float32")


def linear_teacher():
    """Logits `flatten(x) @ KERNEL`: every pixel moves them, so shifts show."""
    inputs = keras.Input((SIZE, SIZE, 1))
    dense = keras.layers.Dense(CLASSES, use_bias=False)
    model = keras.Model(inputs, dense(keras.layers.Flatten()(inputs)), name="t")
    dense.set_weights([KERNEL])
    return model


def teacher_logits(images):
    return np.asarray(images).reshape(len(images), -1) @ KERNEL


def test_shift_flip_by_hand():
    image = np.arange(9, dtype="float32").reshape(1, 3, 3, 1)
    # Down 1, left 1: row 0 and column 2 are the zero border.
    moved = ShiftFlip.apply(image, np.array([[1, -1, 0]]))[0, ..., 0]
    np.testing.assert_array_equal(moved, [[0, 0, 0], [1, 2, 0], [4, 5, 0]])
    flipped = ShiftFlip.apply(image, np.array([[0, 0, 1]]))[0, ..., 0]
    np.testing.assert_array_equal(flipped, [[2, 1, 0], [5, 4, 3], [8, 7, 6]])
    drawn = ShiftFlip(2, flip=True).draw(1000, np.random.default_rng(0))
    assert (
        drawn.dtype == np.float16
        and drawn[:, :2].min() == -2
        and drawn[:, :2].max() == 2
    )
    assert set(np.unique(drawn[:, 2])) == {0, 1}


def bilinear_shift(image, dy, dx):
    """Float64 reference: output (i, j) samples the input at (i - dy, j - dx)."""
    height, width = image.shape[:2]

    def pixel(i, j):
        inside = 0 <= i < height and 0 <= j < width
        return image[i, j].astype(np.float64) if inside else 0.0

    out = np.zeros(image.shape)
    for i in range(height):
        for j in range(width):
            y, x = i - dy, j - dx
            y0, x0 = int(np.floor(y)), int(np.floor(x))
            fy, fx = y - y0, x - x0
            out[i, j] = (
                (1 - fy) * (1 - fx) * pixel(y0, x0)
                + (1 - fy) * fx * pixel(y0, x0 + 1)
                + fy * (1 - fx) * pixel(y0 + 1, x0)
                + fy * fx * pixel(y0 + 1, x0 + 1)
            )
    return out


def test_subpixel_shifts_interpolate_bilinearly():
    image = np.arange(9, dtype="float32").reshape(1, 3, 3, 1)
    # Right by half a pixel: each pixel is the mean of itself and its left
    # neighbour, with zero beyond the border.
    half = ShiftFlip.apply(image, np.array([[0, 0.5, 0]]))[0, ..., 0]
    np.testing.assert_allclose(half, [[0, 0.5, 1.5], [1.5, 3.5, 4.5], [3, 6.5, 7.5]])
    x = np.random.default_rng(0).uniform(size=(2, 8, 8, 1)).astype("float32")
    params = np.array([[1.25, -0.5, 0], [-2.75, 0.25, 1]])
    ours = ShiftFlip.apply(x, params)
    for image, (dy, dx, flip), view in zip(x, params, ours):
        source = image[:, ::-1] if flip else image
        np.testing.assert_allclose(view, bilinear_shift(source, dy, dx), atol=1e-6)
    drawn = ShiftFlip(2.8, subpixel=True).draw(1000, np.random.default_rng(0))
    assert np.abs(drawn[:, :2]).max() <= 2.8 and len(np.unique(drawn[:, 0])) > 100


def batches_of(dataset):
    """`(inputs, logits, example indices)` of every batch of one epoch."""
    for packed, labels in dataset:
        yield (
            packed[INPUTS_KEY].numpy(),
            packed[TEACHER_LOGITS_KEY].numpy(),
            labels.numpy(),
        )


def test_each_example_gets_one_recorded_view_with_exactly_its_targets():
    views = cache_teacher_views(
        linear_teacher(), X, ShiftFlip(2), num_views=4, seed=0, verbose=0
    )
    assert views.logits.shape == (COUNT, 4, CLASSES) and views.params.shape == (
        COUNT,
        4,
        3,
    )
    # The labels are the example indices, to find each example's views.
    dataset = views.dataset(X, np.arange(COUNT), batch_size=5, seed=1)
    seen = []
    for inputs, logits, indices in batches_of(dataset):
        for image, target, index in zip(inputs, logits, indices):
            recorded = ShiftFlip.apply(X[[index] * 4], views.params[index])
            matches = [v for v in range(4) if np.array_equal(image, recorded[v])]
            assert matches, "the student's input is not one of the recorded views"
            # Exactly the teacher's targets on that view (float16 storage).
            np.testing.assert_allclose(
                target, teacher_logits(image[None])[0], rtol=2e-3, atol=2e-3
            )
            np.testing.assert_array_equal(target, views.logits[index, matches[0]])
            seen.append(index)
    assert sorted(seen) == list(range(COUNT))  # every example once per epoch


def chosen_views(views, dataset):
    """The view drawn for each example, per epoch: `(epochs, examples)`."""
    drawn = []
    for _ in range(2):
        epoch = np.empty(COUNT, np.int64)
        for inputs, _, indices in batches_of(dataset):
            for image, index in zip(inputs, indices):
                recorded = views.views_of(X, [index] * 8, np.arange(8))
                epoch[index] = next(
                    v for v in range(8) if np.array_equal(image, recorded[v])
                )
        drawn.append(epoch)
    return np.array(drawn)


def test_views_are_redrawn_every_epoch_and_reproducible_from_the_seed():
    # Distinct views: shifts of a random image never coincide.
    views = cache_teacher_views(
        linear_teacher(), X, ShiftFlip(3, flip=True), num_views=8, seed=0, verbose=0
    )
    first = chosen_views(views, views.dataset(X, np.arange(COUNT), seed=5))
    again = chosen_views(views, views.dataset(X, np.arange(COUNT), seed=5))
    np.testing.assert_array_equal(first, again)
    assert np.any(first[0] != first[1])  # a new draw in the second epoch
    other = chosen_views(views, views.dataset(X, np.arange(COUNT), seed=6))
    assert np.any(other != first)


def test_draws_are_uniform_over_the_views():
    # A cache whose view v of every example has logits (v, v, v).
    logits = np.repeat(np.arange(3.0)[None, :, None], COUNT, 0) * np.ones(CLASSES)
    params = np.zeros((COUNT, 3, 3), np.float16)
    views = ViewCache(logits, params, None, ShiftFlip(0), fingerprint(X))
    dataset = views.dataset(X, np.arange(COUNT), batch_size=COUNT, seed=0)
    counts = np.zeros(3)
    for _ in range(100):
        for packed, _ in dataset:
            counts += np.bincount(
                packed[TEACHER_LOGITS_KEY].numpy()[:, 0].astype(int), minlength=3
            )
    # 1,200 draws; each share within 5 standard deviations of 1/3.
    assert counts.sum() == 1200
    assert np.all(np.abs(counts / 1200 - 1 / 3) < 5 * np.sqrt(2 / 9 / 1200)), counts


def test_a_keras_layer_stores_pixels_the_teacher_saw():
    views = cache_teacher_views(
        linear_teacher(), X, keras.layers.Rescaling(2.0, offset=1.0), 2, verbose=0
    )
    assert views.params is None and views.pixels.dtype == np.float16
    expected = (2 * X + 1).astype(np.float16)
    np.testing.assert_array_equal(views.pixels[:, 0], expected)
    np.testing.assert_allclose(
        views.logits[:, 1],
        teacher_logits(expected.astype("float32")),
        rtol=2e-3,
        atol=5e-3,
    )
    assert views.bytes_per_example() == 2 * (SIZE * SIZE * 2 + CLASSES * 2)


def test_a_cache_for_other_data_or_another_k_is_rejected(tmp_path):
    views = cache_teacher_views(
        linear_teacher(), X, ShiftFlip(1), 4, directory=str(tmp_path), verbose=0
    )
    with pytest.raises(ValueError, match="built for other data"):
        views.dataset(X[::-1], np.arange(COUNT))
    with pytest.raises(ValueError, match="built for other data"):
        views.dataset(X[:-1], np.arange(COUNT - 1))
    with pytest.raises(ValueError, match="`y` has 3 rows"):
        views.dataset(X, np.arange(3))
    with pytest.raises(ValueError, match="4 views per example, not 8"):
        ViewCache.load(str(tmp_path), num_views=8)


def distilled_weights(dataset):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((SIZE, SIZE, 1))
    student = keras.Model(
        inputs, keras.layers.Dense(CLASSES)(keras.layers.Flatten()(inputs))
    )
    distiller = keras_kd.Distiller(student, linear_teacher())
    distiller.compile(optimizer=keras.optimizers.SGD(0.1), temperature=2.0)
    distiller.fit(dataset, epochs=2, verbose=0)
    return [np.array(w) for w in student.get_weights()]


def test_a_saved_and_reloaded_cache_trains_the_same_student(tmp_path):
    built = cache_teacher_views(
        linear_teacher(), X, ShiftFlip(2), 4, seed=3, directory=str(tmp_path), verbose=0
    )
    loaded = ViewCache.load(str(tmp_path), num_views=4)
    np.testing.assert_array_equal(loaded.params, built.params)
    labels = np.arange(COUNT) % CLASSES
    trained = distilled_weights(built.dataset(X, labels, batch_size=4, seed=2))
    again = distilled_weights(loaded.dataset(X, labels, batch_size=4, seed=2))
    for a, b in zip(trained, again):
        np.testing.assert_array_equal(a, b)


def test_mixup_on_recorded_views_is_rejected():
    views = cache_teacher_views(linear_teacher(), X, ShiftFlip(1), 2, verbose=0)
    inputs = keras.Input((SIZE, SIZE, 1))
    student = keras.Model(
        inputs, keras.layers.Dense(CLASSES)(keras.layers.Flatten()(inputs))
    )
    distiller = keras_kd.Distiller(student, linear_teacher(), mixup_alpha=0.2)
    distiller.compile(optimizer="sgd")
    with pytest.raises(ValueError, match="mixup_alpha"):
        distiller.fit(views.dataset(X, np.arange(COUNT) % CLASSES), verbose=0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_views": 0}, "num_views"),
        ({"augmentation": "shift"}, "augmentation"),
        ({"dtype": "int8"}, "dtype"),
    ],
)
def test_bad_arguments_are_rejected(kwargs, match):
    arguments = {"augmentation": ShiftFlip(1), "num_views": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        cache_teacher_views(linear_teacher(), X, verbose=0, **arguments)


@pytest.mark.parametrize("shift", [-1, 1.5, True, 128, "2"])
def test_bad_shifts_are_rejected(shift):
    with pytest.raises(ValueError, match="max_shift"):
        ShiftFlip(shift)


@pytest.mark.parametrize("verbose, shown", [(0, False), ("auto", True)])
def test_cache_builds_show_progress_unless_silenced(capsys, verbose, shown):
    cache_teacher_views(
        linear_teacher(), X, ShiftFlip(1), 2, batch_size=4, verbose=verbose
    )
    keras_kd.cache_teacher_outputs(linear_teacher(), X, batch_size=4, verbose=verbose)
    printed = capsys.readouterr().out
    assert ("6/6" in printed and "3/3" in printed) == shown
    assert bool(printed.strip()) == shown

"""Tests for keras_kd.merging and LabelMergingTeacher.calibrate, by hand."""

import keras
import numpy as np
import pytest

import keras_kd
from keras_kd import merging
from keras_kd.ensembles import LabelMergingTeacher


def identity_teacher(width, name):
    """A model whose logits are its inputs."""
    inputs = keras.Input((width,))
    layer = keras.layers.Dense(width, use_bias=False, name=f"{name}_dense")
    model = keras.Model(inputs, layer(inputs), name=name)
    layer.set_weights([np.eye(width, dtype="float32")])
    return model


# Two examples, two classes, both leaning to class 0.
LOG_PROBS = np.log([[0.9, 0.1], [0.6, 0.4]])


def test_match_priors_gives_the_transfer_set_uniform_shares():
    adjusted, offsets = merging.match_priors(LOG_PROBS)
    np.testing.assert_allclose(np.exp(adjusted).mean(0), [0.5, 0.5], atol=1e-6)
    assert offsets.mean() == pytest.approx(0.0, abs=1e-12)
    # By hand: with b = (-d, d), p0(x) = a_x / (a_x + (1 - a_x) e^(2d)), and
    # the shares are 1/2 when 0.9 / (0.9 + 0.1 r) + 0.6 / (0.6 + 0.4 r) = 1,
    # r = e^(2d): 0.04 r^2 = 0.54, r = sqrt(13.5).
    np.testing.assert_allclose(np.exp(2 * offsets[1]), np.sqrt(13.5), rtol=1e-5)
    np.testing.assert_allclose(
        adjusted, merging.log_softmax(LOG_PROBS + offsets), atol=1e-12
    )


def test_match_priors_reaches_given_priors_and_leaves_matched_data_alone():
    adjusted, _ = merging.match_priors(LOG_PROBS, class_priors=[3.0, 1.0])
    np.testing.assert_allclose(np.exp(adjusted).mean(0), [0.75, 0.75 / 3], atol=1e-6)
    balanced = np.log([[0.8, 0.2], [0.2, 0.8]])
    _, offsets = merging.match_priors(balanced)
    np.testing.assert_allclose(offsets, 0.0, atol=1e-9)


@pytest.mark.parametrize(
    "priors", [[0.5, 0.5, 0.0], [1.0, -1.0], [1.0, 0.0], "uniform"]
)
def test_match_priors_rejects_bad_priors(priors):
    with pytest.raises(ValueError, match="class_priors"):
        merging.match_priors(LOG_PROBS, class_priors=priors)


def test_match_priors_rejects_bad_log_probs():
    with pytest.raises(ValueError, match="log_probs"):
        merging.match_priors(np.zeros((0, 3)))


POINTS = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [0.7, 0.7]])


def brute_force_neighbours(points, k):
    unit = points / np.linalg.norm(points, axis=1, keepdims=True)
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -np.inf)
    return np.argsort(-similarity, axis=1)[:, :k]


@pytest.mark.parametrize("chunk", [1024, 2])
def test_nearest_neighbours_match_brute_force_in_chunks(monkeypatch, chunk):
    monkeypatch.setattr(merging, "_NEIGHBOUR_CHUNK", chunk)
    found = merging.nearest_neighbours(POINTS, 2)
    expected = brute_force_neighbours(POINTS, 2)
    assert [set(row) for row in found] == [set(row) for row in expected]
    assert all(i not in row for i, row in enumerate(found))


@pytest.mark.parametrize("k", [0, 5, 1.5])
def test_nearest_neighbours_rejects_bad_k(k):
    with pytest.raises(ValueError, match="neighbours"):
        merging.nearest_neighbours(POINTS, k)


def test_propagate_reaches_the_closed_form_fixed_point():
    neighbours = brute_force_neighbours(POINTS, 2)
    start = np.exp(merging.log_softmax(np.random.default_rng(0).normal(size=(5, 3))))
    alpha = 0.8
    graph = np.zeros((5, 5))
    for i, row in enumerate(neighbours):
        graph[i, row] = 0.5
    expected = (1 - alpha) * np.linalg.solve(np.eye(5) - alpha * graph, start)
    found = merging.propagate(start, neighbours, alpha)
    np.testing.assert_allclose(found, expected, atol=1e-5)
    np.testing.assert_allclose(found.sum(-1), 1.0, atol=1e-9)
    np.testing.assert_array_equal(merging.propagate(start, neighbours, 0.0), start)


@pytest.mark.parametrize("alpha", [1.0, -0.1, "0.5"])
def test_propagate_rejects_bad_alpha(alpha):
    with pytest.raises(ValueError, match="alpha"):
        merging.propagate(np.ones((5, 2)) / 2, brute_force_neighbours(POINTS, 2), alpha)


def test_merged_targets_outvote_a_confident_wrong_teacher_in_a_cluster():
    # Ten inputs of class 0 near (1, 0) and ten of class 1 near (0, 1). The
    # teacher calls two class-1 inputs class 0, confidently (prior matching
    # alone cannot flip them without flipping others), but their neighbours
    # outvote it.
    rng = np.random.default_rng(0)
    near_a = np.c_[1 + 0.05 * rng.normal(size=10), 0.05 * rng.normal(size=10)]
    near_b = np.c_[0.05 * rng.normal(size=10), 1 + 0.05 * rng.normal(size=10)]
    features = np.r_[near_a, near_b]
    logits = 4 * features
    logits[10:12] = [[6.0, 2.0]] * 2  # confident and wrong
    teacher = identity_teacher(2, "teacher")
    raw = np.argmax(logits, -1)
    assert raw[10:12].tolist() == [0, 0]
    targets = merging.merged_targets(teacher, logits, neighbours=4, features=features)
    assert targets.dtype == np.float32 and targets.shape == (20, 2)
    assert np.argmax(targets, -1).tolist() == [0] * 10 + [1] * 10
    np.testing.assert_allclose(np.exp(targets).mean(0), [0.5, 0.5], atol=1e-5)
    # Without neighbours: prior matching alone, still wrong on the two.
    alone = merging.merged_targets(teacher, logits, neighbours=0)
    expected, _ = merging.match_priors(logits)
    np.testing.assert_allclose(alone, expected, atol=1e-5)
    assert np.argmax(alone[10:12], -1).tolist() == [0, 0]


def test_merged_targets_rejects_features_of_another_length():
    with pytest.raises(ValueError, match="features"):
        merging.merged_targets(
            identity_teacher(2, "t"), np.ones((4, 2)), features=np.ones((3, 2))
        )


def overlapping_merge():
    # Student classes 0-2; teacher a outputs [0, 1], teacher b [1, 2]: class 1
    # is covered by both.
    return LabelMergingTeacher(
        [identity_teacher(2, "a"), identity_teacher(2, "b")], [[0, 1], [1, 2]], 3
    )


def test_calibrate_gives_the_transfer_set_the_priors_and_round_trips(tmp_path):
    merged = overlapping_merge()
    x = np.random.default_rng(1).normal(size=(64, 2)).astype("float32")
    x[:, 0] += 2.0  # class 0 dominates before calibration
    before = np.exp(keras.ops.convert_to_numpy(merged(x))).mean(0)
    assert before[0] > 0.5
    merged.predict(x, verbose=0)  # a traced predict must see the new offsets
    offsets = merged.calibrate(x, class_priors=[1.0, 1.0, 2.0])
    after = np.exp(merged.predict(x, verbose=0)).mean(0)
    np.testing.assert_allclose(after, [0.25, 0.25, 0.5], atol=1e-4)
    np.testing.assert_allclose(merged.class_offsets, offsets)
    path = str(tmp_path / "merged.keras")
    merged.save(path)
    restored = keras.saving.load_model(path)
    np.testing.assert_allclose(restored.class_offsets, offsets, atol=1e-7)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(restored(x)),
        keras.ops.convert_to_numpy(merged(x)),
        rtol=1e-6,
        atol=1e-6,
    )


def test_class_offsets_are_checked():
    with pytest.raises(ValueError, match="class_offsets"):
        LabelMergingTeacher(
            [identity_teacher(2, "a"), identity_teacher(2, "b")],
            [[0, 1], [1, 2]],
            3,
            class_offsets=[0.0, 1.0],
        )


def test_calibrated_teacher_stays_frozen_in_a_distiller():
    merged = overlapping_merge()
    x = np.random.default_rng(2).normal(size=(32, 2)).astype("float32")
    merged.calibrate(x)
    weights = [np.array(w) for w in merged.get_weights()]
    inputs = keras.Input((2,))
    student = keras.Model(inputs, keras.layers.Dense(3)(inputs), name="student")
    distiller = keras_kd.Distiller(student=student, teacher=merged)
    distiller.compile(optimizer="sgd", temperature=1.0)
    distiller.fit(x, epochs=1, batch_size=8, verbose=0)
    for before, after in zip(weights, merged.get_weights()):
        np.testing.assert_array_equal(before, after)


def test_a_label_merging_teacher_saved_without_offsets_loads_with_zeros():
    # keras_kd 0.1 saved LabelMergingTeacher with no variable of its own.
    merged = overlapping_merge()
    merged.load_own_variables({})
    np.testing.assert_array_equal(merged.class_offsets, 0.0)
    merged.load_own_variables({"0": np.array([1.0, 2.0, 3.0], "float32")})
    np.testing.assert_array_equal(merged.class_offsets, [1.0, 2.0, 3.0])

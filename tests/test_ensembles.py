import math

import keras
import numpy as np
import pytest

import keras_kd
from keras_kd.ensembles import LabelMergingTeacher, TeacherEnsemble
from tests import reference

X = [[1.0, 0.0, 2.0], [0.5, -1.0, 1.0], [3.0, 1.0, -2.0], [-1.0, 2.0, 0.0]]
KERNEL_A = [[2.0, -1.0, 0.5], [0.0, 1.5, -0.5], [1.0, 0.0, 3.0]]
KERNEL_B = [[0.0, 1.0, -1.0], [1.0, 0.5, 0.0], [-2.0, 1.0, 1.0]]


def linear(kernel, name):
    """A bias-free Dense model whose logits are `x @ kernel`."""
    kernel = np.array(kernel, "float32")
    model = keras.Sequential(
        [
            keras.Input((kernel.shape[0],)),
            keras.layers.Dense(kernel.shape[1], use_bias=False),
        ],
        name=name,
    )
    model.layers[0].set_weights([kernel])
    return model


def columns(kernel, keep):
    return [[row[j] for j in keep] for row in kernel]


def hand_ensemble(rows, weights):
    """log(sum_k w_k softmax(logits_k)) / sum w, with the math module."""
    total = sum(weights)
    probabilities = [reference.softmax(r) for r in rows]
    return [
        math.log(sum(w * p[c] for w, p in zip(weights, probabilities)) / total)
        for c in range(len(rows[0]))
    ]


def hand_merge(rows, class_maps, num_classes, weights, combine):
    """Normalized weighted mean of the covering teachers' scores, per class."""
    numerator, coverage = [0.0] * num_classes, [0.0] * num_classes
    for row, class_map, w in zip(rows, class_maps, weights):
        for j, c in enumerate(class_map):
            score = row[j]
            if combine == "log_probabilities":
                score = math.log(reference.softmax(row)[j])
            numerator[c] += w * score
            coverage[c] += w
    m = [n / k for n, k in zip(numerator, coverage)]
    log_z = math.log(sum(math.exp(v) for v in m))
    return [v - log_z for v in m]


# --- TeacherEnsemble ----------------------------------------------------------


@pytest.mark.parametrize("weights", [None, [3.0, 1.0]])
def test_ensemble_is_log_of_weighted_average_probabilities(weights):
    a, b = linear(KERNEL_A, "a"), linear(KERNEL_B, "b")
    ensemble = TeacherEnsemble([a, b], weights=weights)
    output = keras.ops.convert_to_numpy(ensemble(np.array(X)))
    w = weights or [1.0, 1.0]
    expected = [
        hand_ensemble([ra, rb], w)
        for ra, rb in zip(reference.matmul(X, KERNEL_A), reference.matmul(X, KERNEL_B))
    ]
    np.testing.assert_allclose(output, expected, rtol=1e-5, atol=1e-6)
    # Probability space, not logit space: the mean of the logits differs.
    mean_logits = (
        np.array(reference.matmul(X, KERNEL_A)) + reference.matmul(X, KERNEL_B)
    ) / 2
    log_softmax_of_mean = mean_logits - np.log(
        np.exp(mean_logits).sum(-1, keepdims=True)
    )
    assert not np.allclose(output, log_softmax_of_mean, atol=1e-2)


def test_ensemble_of_different_architectures_distills_through_fit():
    cnn = keras_kd.models.mnist_cnn((4, 8), num_classes=10)
    mlp = keras_kd.models.mnist_mlp((8,), num_classes=10)
    ensemble = TeacherEnsemble([cnn, mlp])
    student = keras_kd.models.mnist_mlp((8,), num_classes=10, name="student")
    distiller = keras_kd.Distiller(student=student, teacher=ensemble)
    distiller.compile(optimizer="adam", alpha=0.5, temperature=2.0)
    rng = np.random.default_rng(0)
    x = rng.random((32, 28, 28, 1), dtype="float32")
    teacher_before = [w.copy() for w in cnn.get_weights()]
    history = distiller.fit(x, rng.integers(0, 10, 32), batch_size=16, verbose=0)
    assert np.isfinite(history.history["distillation_loss"][-1])
    assert all(np.array_equal(u, v) for u, v in zip(teacher_before, cnn.get_weights()))
    # The cached path gives the same targets as the online one.
    cached = keras_kd.cache_teacher_outputs(ensemble, x)
    np.testing.assert_allclose(
        cached, keras.ops.convert_to_numpy(ensemble(x)), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize(
    "teachers, weights, match",
    [
        ([], None, "empty"),
        ("model", None, "list of `keras.Model`"),
        ([1], None, r"teachers\[0\]"),
        (["a", "b"], [1.0], "2 teachers"),
        (["a", "b"], [1.0, -1.0], ">= 0"),
        (["a", "b"], [0.0, 0.0], "all be zero"),
        (["a", "a"], None, "same model object"),
        (["a", "wide"], None, "different numbers of classes"),
        (["a", "softmax"], None, "softmax"),
    ],
)
def test_ensemble_rejects_bad_configurations(teachers, weights, match):
    models = {
        "a": linear(KERNEL_A, "a"),
        "b": linear(KERNEL_B, "b"),
        "wide": linear([[1.0] * 4] * 3, "wide"),
        "softmax": keras.Sequential(
            [keras.Input((3,)), keras.layers.Dense(3, "softmax")]
        ),
    }
    if isinstance(teachers, list):
        teachers = [models[t] if isinstance(t, str) else t for t in teachers]
    with pytest.raises(ValueError, match=match):
        TeacherEnsemble(teachers, weights=weights)


def test_ensemble_keras_file_round_trip(tmp_path):
    ensemble = TeacherEnsemble([linear(KERNEL_A, "a"), linear(KERNEL_B, "b")], [1, 2])
    path = str(tmp_path / "ensemble.keras")
    ensemble.save(path)
    restored = keras.saving.load_model(path)
    assert isinstance(restored, TeacherEnsemble)
    assert restored.teacher_weights == [1.0, 2.0]
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(restored(np.array(X))),
        keras.ops.convert_to_numpy(ensemble(np.array(X))),
        rtol=1e-6,
    )


# --- LabelMergingTeacher -----------------------------------------------------

# Student classes 0-3. Teacher A outputs [0, 1, 2], teacher B outputs [3, 2]
# (in that order): class 2 is covered by both, 0, 1 only by A, 3 only by B.
MAPS = [[0, 1, 2], [3, 2]]


def merging_teachers():
    return linear(KERNEL_A, "a"), linear(columns(KERNEL_B, [0, 1]), "b")


@pytest.mark.parametrize("combine", ["logits", "log_probabilities"])
@pytest.mark.parametrize("weights", [None, [1.0, 3.0]])
def test_label_merging_matches_hand_computation_with_an_overlapping_class(
    weights, combine
):
    a, b = merging_teachers()
    merged = LabelMergingTeacher(
        [a, b], MAPS, num_classes=4, weights=weights, combine=combine
    )
    output = keras.ops.convert_to_numpy(merged(np.array(X)))
    w = weights or [1.0, 1.0]
    rows_b = reference.matmul(X, columns(KERNEL_B, [0, 1]))
    expected = [
        hand_merge([ra, rb], MAPS, 4, w, combine)
        for ra, rb in zip(reference.matmul(X, KERNEL_A), rows_b)
    ]
    np.testing.assert_allclose(output, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.exp(output).sum(-1), 1.0, rtol=1e-6)


def test_label_merging_of_log_probabilities_by_hand_on_one_example():
    # A: logits [0, 0, log 2] -> q_A = [1/4, 1/4, 1/2] on classes [0, 1, 2].
    # B: logits [0, 0]        -> q_B = [1/2, 1/2] on classes [3, 2].
    # Class 2 (both): sqrt(1/2 * 1/2) = 1/2; unnormalized [1/4, 1/4, 1/2, 1/2],
    # total 3/2, so p = [1/6, 1/6, 1/3, 1/3].
    a = linear([[0.0, 0.0, math.log(2.0)]], "a")
    b = linear([[0.0, 0.0]], "b")
    merged = LabelMergingTeacher([a, b], MAPS, 4, combine="log_probabilities")
    output = np.exp(keras.ops.convert_to_numpy(merged(np.ones((1, 1)))))[0]
    np.testing.assert_allclose(output, [1 / 6, 1 / 6, 1 / 3, 1 / 3], rtol=1e-6)
    # A teacher that knows the alternative vetoes: B now puts 0.1 on class 2.
    b_sure = linear([[math.log(9.0), 0.0]], "b_sure")
    vetoed = np.exp(
        keras.ops.convert_to_numpy(
            LabelMergingTeacher([a, b_sure], MAPS, 4, combine="log_probabilities")(
                np.ones((1, 1))
            )
        )
    )
    unnormalized = [1 / 4, 1 / 4, math.sqrt(0.5 * 0.1), 0.9]
    np.testing.assert_allclose(
        vetoed[0], np.array(unnormalized) / sum(unnormalized), rtol=1e-5
    )


def test_disjoint_teachers_log_probabilities_split_mass_logits_concatenate():
    a = linear([[1.0, 0.0]], "a")
    b = linear([[0.0, 3.0, 1.0]], "b")
    maps = [[0, 1], [2, 3, 4]]
    merged = LabelMergingTeacher(
        [a, b], maps, 5, weights=[5.0, 1.0], combine="log_probabilities"
    )
    output = np.exp(keras.ops.convert_to_numpy(merged(np.ones((1, 1)))))[0]
    expected = (
        np.concatenate(
            [reference.softmax([1.0, 0.0]), reference.softmax([0.0, 3.0, 1.0])]
        )
        / 2
    )
    np.testing.assert_allclose(output, expected, rtol=1e-5)
    # Raw logits: the softmax of the concatenation, [1, 0, 0, 3, 1].
    merged = LabelMergingTeacher([a, b], maps, 5, weights=[5.0, 1.0])
    output = np.exp(keras.ops.convert_to_numpy(merged(np.ones((1, 1)))))[0]
    np.testing.assert_allclose(
        output, reference.softmax([1.0, 0.0, 0.0, 3.0, 1.0]), rtol=1e-5
    )


@pytest.mark.parametrize(
    "class_maps, num_classes, weights, match",
    [
        ([[0, 1, 2], [3, 4]], 4, None, r"\[4\] outside \[0, 4\)"),
        ([[0, 1, -1], [3, 2]], 4, None, r"\[-1\] outside"),
        ([[0, 1, 2], [2, 1]], 4, None, r"classes \[3\]"),
        ([[0, 1], [3, 2]], 4, None, "has 2 entries but `teachers\\[0\\]`"),
        ([[0, 1, 2], [3, 2, 1]], 4, None, "has 3 entries but `teachers\\[1\\]`"),
        ([[0, 1, 1], [3, 2]], 4, None, "twice"),
        ([[0, 1, 2]], 4, None, "1 entries for 2 teachers"),
        ([[0, 1, 2], [3, 2]], 1, None, "num_classes"),
        ([[0, 1, 2], [3, 2]], 4, [1.0, 0.0], r"classes \[3\] are covered only"),
        ([[0, 1, 2.5], [3, 2]], 4, None, "integers"),
        ("0123", 4, None, "one list of student class indices"),
        ([[0, 1, 2], [3, 2]], 4, "combine", "combine"),
    ],
)
def test_label_merging_rejects_bad_class_maps(class_maps, num_classes, weights, match):
    kwargs = {"weights": weights}
    if weights == "combine":
        kwargs = {"combine": "mean"}
    with pytest.raises(ValueError, match=match):
        LabelMergingTeacher(list(merging_teachers()), class_maps, num_classes, **kwargs)


def test_label_merging_checks_subclassed_widths_on_call():
    class Subclassed(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(2)

        def call(self, x):
            return self.dense(x)

    a, _ = merging_teachers()
    merged = LabelMergingTeacher([a, Subclassed()], [[0, 1, 2], [3, 2, 1]], 4)
    with pytest.raises(ValueError, match=r"`teachers\[1\]` outputs 2 values"):
        merged(np.array(X))


def test_label_merging_distills_without_labels_and_round_trips(tmp_path):
    a, b = merging_teachers()
    merged = LabelMergingTeacher(
        [a, b], MAPS, 4, weights=[1.0, 2.0], combine="log_probabilities"
    )
    student = linear(columns(KERNEL_A, [0, 1, 2, 0]), "student")
    distiller = keras_kd.Distiller(student=student, teacher=merged)
    distiller.compile(optimizer=keras.optimizers.SGD(0.1), temperature=2.0)
    history = distiller.fit(np.array(X), epochs=3, batch_size=2, verbose=0)
    losses = history.history["distillation_loss"]
    assert losses[-1] < losses[0]

    path = str(tmp_path / "merged.keras")
    merged.save(path)
    restored = keras.saving.load_model(path)
    assert isinstance(restored, LabelMergingTeacher)
    assert restored.class_maps == MAPS and restored.num_classes == 4
    assert restored.teacher_weights == [1.0, 2.0]
    assert restored.combine == "log_probabilities"
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(restored(np.array(X))),
        keras.ops.convert_to_numpy(merged(np.array(X))),
        rtol=1e-6,
    )


def unlabeled_student(teacher, x, targets):
    keras.utils.set_random_seed(1000)
    student = keras_kd.models.mnist_mlp((100,), name="student")
    distiller = keras_kd.Distiller(student=student, teacher=teacher)
    distiller.compile(optimizer="adam", temperature=1.0)
    distiller.fit(x, teacher_logits=targets, epochs=10, batch_size=64, verbose=0)
    return student


@pytest.mark.slow
def test_student_merged_from_two_half_mnist_teachers_classifies_all_ten_digits():
    # Teacher A knows digits 0-4 only, teacher B 5-9 only; the student sees
    # no label. Measured (benchmarks/merging.py, 3-epoch teachers, seeds
    # 0-2): today's merge gives students of 0.75 to 0.80, the propagated
    # targets of keras_kd.merging 0.88. One teacher's classes alone would
    # give 0.5, and 0 on the other half.
    (x, y), (x_test, y_test) = keras_kd.datasets.load_mnist()
    keras.utils.set_random_seed(0)
    teachers = []
    for low in (0, 5):
        keep = (y >= low) & (y < low + 5)
        teacher = keras_kd.models.mnist_cnn((16, 32), num_classes=5, name=f"t{low}")
        teacher.compile(
            "adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        )
        teacher.fit(x[keep], y[keep] - low, epochs=3, batch_size=64, verbose=0)
        teachers.append(teacher)
    merged = LabelMergingTeacher(teachers, [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]], 10)
    raw = keras_kd.cache_teacher_outputs(merged, x)
    accuracies = {}
    for name, targets in (
        ("raw", raw),
        ("propagated", keras_kd.merging.merged_targets(merged, x)),
    ):
        student = unlabeled_student(merged, x, targets)
        predicted = np.argmax(student.predict(x_test, batch_size=1000, verbose=0), -1)
        accuracies[name] = np.mean(predicted == y_test)
        # Both halves are learned, not one teacher's classes.
        for low in (0, 5):
            half = (y_test >= low) & (y_test < low + 5)
            assert np.mean(predicted[half] == y_test[half]) > 0.5, (name, low)
    assert accuracies["raw"] > 0.65, accuracies
    assert accuracies["propagated"] > 0.85, accuracies
    assert accuracies["propagated"] > accuracies["raw"] + 0.04, accuracies

import math

import keras
import numpy as np
import pytest

import keras_kd
from keras_kd.losses import DKD, KDLoss, dkd_loss, kd_loss
from tests import reference


def test_kd_loss_matches_hand_computation_at_t1():
    # softmax([2, 1, 0]) = [0.6652, 0.2447, 0.0900]; against uniform:
    # KL = sum p log p + log 3 = -0.8324 + 1.0986 = 0.2662 (rounded).
    value = kd_loss(np.array([[2.0, 1.0, 0.0]]), np.zeros((1, 3)), 1.0)
    assert float(value[0]) == pytest.approx(0.26620, abs=1e-4)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0, 20.0])
def test_kd_loss_applies_t_squared_and_kl_direction(temperature):
    teacher = [[3.0, -1.0, 0.5, 2.0], [0.0, 0.0, 5.0, -2.0]]
    student = [[1.0, 1.0, -1.0, 0.0], [2.0, -3.0, 1.0, 0.5]]
    values = np.asarray(kd_loss(np.array(teacher), np.array(student), temperature))
    expected = [reference.kd(t, s, temperature) for t, s in zip(teacher, student)]
    reverse = [reference.kd(s, t, temperature) for t, s in zip(teacher, student)]
    # float32 KL loses a few digits to cancellation; T² = 400 magnifies them.
    np.testing.assert_allclose(values, expected, rtol=1e-4)
    # The KL runs teacher -> student; the reverse direction is a different value.
    assert not np.allclose(values, reverse, rtol=1e-2)


def test_kd_loss_is_zero_for_identical_and_shift_invariant_logits():
    logits = np.array([[1.0, 2.0, 3.0]])
    assert float(kd_loss(logits, logits + 100.0, 3.0)[0]) == pytest.approx(0, abs=1e-6)


def test_kd_loss_is_finite_for_extreme_and_float16_logits():
    teacher = np.array([[1000.0, -1000.0, 0.0]], dtype="float32")
    student = np.array([[-1000.0, 1000.0, 0.0]], dtype="float32")
    value = kd_loss(teacher, student, 1.0)
    # p_t is one-hot on class 0; log p_s[0] = -2000, so KL = 2000 exactly.
    assert float(value[0]) == pytest.approx(2000.0, rel=1e-5)

    half = kd_loss(teacher.astype("float16") / 100, student.astype("float16") / 100, 1)
    assert keras.backend.standardize_dtype(half.dtype) == "float32"
    assert float(half[0]) == pytest.approx(20.0, rel=1e-3)


@pytest.mark.parametrize(
    "temperature", [0, -1.0, float("inf"), float("nan"), "3", True]
)
def test_invalid_temperature_is_rejected(temperature):
    with pytest.raises(ValueError, match="temperature"):
        kd_loss(np.zeros((1, 2)), np.zeros((1, 2)), temperature)
    with pytest.raises(ValueError, match="temperature"):
        KDLoss(temperature=temperature)


def test_kd_loss_class_reduces_the_function_and_round_trips():
    teacher = np.array([[3.0, -1.0, 0.5], [0.0, 0.0, 5.0]])
    student = np.array([[1.0, 1.0, -1.0], [2.0, -3.0, 1.0]])
    loss = KDLoss(temperature=2.0)
    expected = np.mean([reference.kd(t, s, 2.0) for t, s in zip(teacher, student)])
    assert float(loss(teacher, student)) == pytest.approx(expected, rel=1e-5)

    weighted = loss(teacher, student, sample_weight=np.array([1.0, 0.0]))
    assert float(weighted) == pytest.approx(reference.kd(teacher[0], student[0], 2) / 2)

    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(restored, keras_kd.KDLoss)
    assert restored.temperature == 2.0
    assert float(restored(teacher, student)) == pytest.approx(expected, rel=1e-5)


# --- Decoupled KD -----------------------------------------------------------


def hand_dkd(teacher_row, student_row, label, alpha, beta, temperature):
    """T² (alpha TCKD + beta NCKD), from the definitions, with the math module."""
    p_t = reference.softmax(teacher_row, temperature)
    p_s = reference.softmax(student_row, temperature)
    b_t, b_s = [p_t[label], 1 - p_t[label]], [p_s[label], 1 - p_s[label]]
    tckd = sum(a * math.log(a / b) for a, b in zip(b_t, b_s))
    others = [c for c in range(len(teacher_row)) if c != label]
    q_t = [p_t[c] / (1 - p_t[label]) for c in others]
    q_s = [p_s[c] / (1 - p_s[label]) for c in others]
    nckd = sum(a * math.log(a / b) for a, b in zip(q_t, q_s))
    return temperature**2 * (alpha * tckd + beta * nckd)


def test_dkd_matches_hand_computation_at_t1():
    # p_t = softmax([2, 0, 0]) = [0.7870, 0.1065, 0.1065]; p_s = uniform.
    # TCKD = 0.7870 log(0.7870 * 3) + 0.2130 log(0.2130 * 3 / 2) = 0.4330;
    # the teacher is uniform over the non-targets, as the student: NCKD = 0.
    value = dkd_loss(
        np.array([[2.0, 0.0, 0.0]]), np.zeros((1, 3)), np.array([0]), 1.0, 8.0, 1.0
    )
    assert float(value[0]) == pytest.approx(0.43304, abs=1e-4)
    # Same logits, label 1: NCKD compares [0.8808, 0.1192] with uniform.
    value = dkd_loss(
        np.array([[2.0, 0.0, 0.0]]), np.zeros((1, 3)), np.array([1]), 0.0, 1.0, 1.0
    )
    nckd = 0.880797 * math.log(2 * 0.880797) + 0.119203 * math.log(2 * 0.119203)
    assert float(value[0]) == pytest.approx(nckd, abs=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_dkd_equals_tckd_plus_nckd_by_hand(temperature):
    teacher = [[3.0, -1.0, 0.5, 2.0], [0.0, 0.0, 5.0, -2.0], [1.0, 2.0, 3.0, 4.0]]
    student = [[1.0, 1.0, -1.0, 0.0], [2.0, -3.0, 1.0, 0.5], [0.0, 0.0, 0.0, 1.0]]
    labels = [3, 2, 0]
    values = np.asarray(
        dkd_loss(
            np.array(teacher),
            np.array(student),
            np.array(labels),
            1.5,
            2.0,
            temperature,
        )
    )
    expected = [
        hand_dkd(t, s, g, 1.5, 2.0, temperature)
        for t, s, g in zip(teacher, student, labels)
    ]
    np.testing.assert_allclose(values, expected, rtol=1e-4)
    # With alpha = beta = 1 and a label-free view, DKD is not Hinton's KD: KD
    # weighs NCKD by (1 - p_t[g]), which DKD drops.
    kd = np.asarray(kd_loss(np.array(teacher), np.array(student), temperature))
    dkd = np.asarray(
        dkd_loss(
            np.array(teacher),
            np.array(student),
            np.array(labels),
            1.0,
            1.0,
            temperature,
        )
    )
    assert not np.allclose(kd, dkd, rtol=1e-2)


def test_dkd_reduces_to_kd_when_nckd_is_weighted_like_hinton():
    # KD = TCKD + (1 - p_t[g]) NCKD per example (Zhao et al., eq. 5).
    teacher, student, label = [0.5, 2.0, -1.0], [1.0, 0.0, 0.3], 1
    weight = 1 - reference.softmax(teacher, 2.0)[label]
    value = dkd_loss(
        np.array([teacher]), np.array([student]), np.array([label]), 1.0, weight, 2.0
    )
    assert float(value[0]) == pytest.approx(
        reference.kd(teacher, student, 2.0), rel=1e-4
    )


def test_dkd_is_finite_for_extreme_logits_and_labels_shaped_batch_by_one():
    teacher = np.array([[1000.0, -1000.0, 0.0]], "float32")
    student = np.array([[-1000.0, 1000.0, 0.0]], "float32")
    value = dkd_loss(teacher, student, np.array([[0]]), 1.0, 1.0, 1.0)
    assert np.isfinite(float(value[0]))
    # p_t[0] = 1 and log p_s[0] = -2000: TCKD = 2000; q_t on class 2
    # (exp(0) >> exp(-1000)), q_s on class 1, log q_s[2] = -1000: NCKD = 1000.
    assert float(value[0]) == pytest.approx(3000.0, rel=1e-4)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"alpha": -1.0}, "alpha"),
        ({"beta": float("inf")}, "beta"),
        ({"beta": "8"}, "beta"),
        ({"temperature": 0.0}, "temperature"),
    ],
)
def test_dkd_invalid_arguments_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        dkd_loss(np.zeros((1, 3)), np.zeros((1, 3)), np.array([0]), **kwargs)
    with pytest.raises(ValueError, match=match):
        DKD(**kwargs)


def test_dkd_rejects_labels_out_of_range():
    with pytest.raises(ValueError, match=r"labels.*\[0, 3\)"):
        dkd_loss(np.zeros((2, 3)), np.zeros((2, 3)), np.array([0, 3]))
    with pytest.raises(ValueError, match="labels"):
        dkd_loss(np.zeros((1, 3)), np.zeros((1, 3)), np.array([-1]))


def test_dkd_class_uses_teacher_top_class_alone_and_round_trips():
    teacher = np.array([[3.0, -1.0, 0.5], [0.0, 0.0, 5.0]])
    student = np.array([[1.0, 1.0, -1.0], [2.0, -3.0, 1.0]])
    loss = DKD(alpha=0.5, beta=2.0, temperature=2.0)
    expected = np.mean(
        [
            hand_dkd(t, s, int(np.argmax(t)), 0.5, 2.0, 2.0)
            for t, s in zip(teacher, student)
        ]
    )
    assert float(loss(teacher, student)) == pytest.approx(expected, rel=1e-4)
    labeled = loss.call(teacher, student, labels=np.array([1, 0]))
    np.testing.assert_allclose(
        np.asarray(labeled),
        [
            hand_dkd(teacher[0], student[0], 1, 0.5, 2.0, 2.0),
            hand_dkd(teacher[1], student[1], 0, 0.5, 2.0, 2.0),
        ],
        rtol=1e-4,
    )

    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(restored, DKD)
    assert (restored.alpha, restored.beta, restored.temperature) == (0.5, 2.0, 2.0)
    assert restored.needs_labels and isinstance(
        restored, keras_kd.losses.DistillationLoss
    )
    assert not KDLoss().needs_labels and isinstance(
        KDLoss(), keras_kd.losses.DistillationLoss
    )
    assert float(restored(teacher, student)) == pytest.approx(expected, rel=1e-4)


def test_dkd_in_distiller_uses_labels_and_teacher_top_class_for_unlabeled():
    x = np.array(
        [[1.0, 0.0, 2.0], [0.5, -1.0, 1.0], [3.0, 1.0, -2.0], [-1.0, 2.0, 0.0]]
    )
    y = np.array([1, -1, 2, 0])
    kernel = [[2.0, -1.0, 0.5], [0.0, 1.5, -0.5], [1.0, 0.0, 3.0]]

    def linear(k, name):
        model = keras.Sequential(
            [keras.Input((3,)), keras.layers.Dense(3, use_bias=False)], name=name
        )
        model.layers[0].set_weights([np.array(k, "float32")])
        return model

    distiller = keras_kd.Distiller(
        student=linear(np.eye(3), "student"), teacher=linear(kernel, "teacher")
    )
    distiller.compile(
        optimizer=keras.optimizers.SGD(0.0),
        alpha=0.0,
        distillation_loss_fn=DKD(alpha=1.0, beta=2.0, temperature=2.0),
    )
    history = distiller.fit(x, y, batch_size=4, shuffle=False, verbose=0)
    teacher_logits = reference.matmul(x.tolist(), kernel)
    targets = [g if g >= 0 else int(np.argmax(t)) for g, t in zip(y, teacher_logits)]
    expected = np.mean(
        [
            hand_dkd(t, s, g, 1.0, 2.0, 2.0)
            for t, s, g in zip(teacher_logits, x.tolist(), targets)
        ]
    )
    assert history.history["distillation_loss"][-1] == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("temperature", [1.0, 4.0, 20.0])
@pytest.mark.parametrize("beta", [0.0, 8.0])
def test_dkd_matches_float64_at_logit_scale_30(temperature, beta):
    # The label is each teacher's least likely class: p_t[g] and p_s[g] are
    # tiny, and log(1 - p[g]) must not come from a difference of two large
    # log-sum-exps (it did: TCKD came out negative, -2e-5 for +3e-5).
    rng = np.random.default_rng(0)
    teacher = 30.0 * rng.normal(size=(16, 10))
    student = 30.0 * rng.normal(size=(16, 10))
    labels = teacher.argmin(axis=-1)
    got = keras.ops.convert_to_numpy(
        dkd_loss(
            teacher.astype("float32"),
            student.astype("float32"),
            labels,
            beta=beta,
            temperature=temperature,
        )
    )
    expected = [
        reference.dkd(t, s, g, 1.0, beta, temperature)
        for t, s, g in zip(teacher, student, labels)
    ]
    assert (got >= 0).all()
    np.testing.assert_allclose(got, expected, rtol=1e-4)


def test_dkd_per_position_on_sequences():
    rng = np.random.default_rng(1)
    teacher, student = rng.normal(size=(2, 3, 5)), rng.normal(size=(2, 3, 5))
    labels = rng.integers(0, 5, size=(2, 3))
    got = keras.ops.convert_to_numpy(
        dkd_loss(teacher, student, labels, beta=2.0, temperature=2.0)
    )
    expected = [
        [reference.dkd(t, s, g, 1.0, 2.0, 2.0) for t, s, g in zip(*rows)]
        for rows in zip(teacher, student, labels)
    ]
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_kd_loss_per_position_on_sequences():
    rng = np.random.default_rng(2)
    teacher, student = rng.normal(size=(2, 3, 4)), rng.normal(size=(2, 3, 4))
    got = keras.ops.convert_to_numpy(kd_loss(teacher, student, temperature=3.0))
    expected = [
        [reference.kd(t, s, 3.0) for t, s in zip(*rows)]
        for rows in zip(teacher, student)
    ]
    np.testing.assert_allclose(got, expected, rtol=1e-5)

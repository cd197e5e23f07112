import keras
import numpy as np
import pytest

import keras_kd
from keras_kd.losses import KDLoss, kd_loss
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

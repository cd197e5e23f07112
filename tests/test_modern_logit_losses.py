"""Logit standardization (KD and DKD) and DIST, against float64 hand computations."""

import keras
import numpy as np
import pytest

import keras_kd
from keras_kd.losses import (
    DIST,
    DKD,
    KDLoss,
    dist_loss,
    dkd_loss,
    kd_loss,
    standardize_logits,
)
from tests import reference
from tests.gradients import value_and_gradient

RNG = np.random.default_rng(7)
TEACHER = RNG.normal(0, 3, (5, 4))
STUDENT = RNG.normal(0, 1, (5, 4))
LABELS = np.array([0, 3, 1, 2, 2])


def to_numpy(value):
    return keras.ops.convert_to_numpy(value).astype("float64")


def test_standardize_logits_matches_the_sample_std_by_hand():
    expected = [reference.standardize(row) for row in TEACHER.tolist()]
    np.testing.assert_allclose(to_numpy(standardize_logits(TEACHER)), expected, 1e-5)


def test_standardized_kd_is_kd_of_standardized_logits_by_hand():
    temperature = 2.0
    values = to_numpy(kd_loss(TEACHER, STUDENT, temperature, standardize=True))
    expected = [
        reference.kd(reference.standardize(t), reference.standardize(s), temperature)
        for t, s in zip(TEACHER.tolist(), STUDENT.tolist())
    ]
    np.testing.assert_allclose(values, expected, rtol=1e-4)
    # Not the plain KD: the option changes the loss.
    plain = to_numpy(kd_loss(TEACHER, STUDENT, temperature))
    assert np.max(np.abs(plain - values)) > 0.01


def test_standardized_losses_ignore_the_scale_and_shift_of_either_model():
    scaled_teacher, scaled_student = 7.0 * TEACHER + 3.0, 0.2 * STUDENT - 1.0
    for loss in (
        lambda t, s: kd_loss(t, s, 4.0, standardize=True),
        lambda t, s: dkd_loss(t, s, LABELS, temperature=4.0, standardize=True),
    ):
        np.testing.assert_allclose(
            to_numpy(loss(scaled_teacher, scaled_student)),
            to_numpy(loss(TEACHER, STUDENT)),
            rtol=1e-4,
            atol=1e-5,  # float32 rounding of the z-scores
        )


def test_standardized_dkd_is_dkd_of_standardized_logits_by_hand():
    values = to_numpy(
        dkd_loss(TEACHER, STUDENT, LABELS, 1.0, 8.0, 4.0, standardize=True)
    )
    z = reference.standardize
    expected = [
        reference.dkd(z(t), z(s), g, 1.0, 8.0, 4.0)
        for t, s, g in zip(TEACHER.tolist(), STUDENT.tolist(), LABELS)
    ]
    np.testing.assert_allclose(values, expected, rtol=1e-4)


def test_standardization_of_constant_logits_has_finite_gradients():
    _, gradient = value_and_gradient(
        lambda s: keras.ops.sum(kd_loss(TEACHER[:2], s, 2.0, standardize=True)),
        np.zeros((2, 4)),
    )
    assert np.all(np.isfinite(gradient))


def test_dist_matches_hand_computation():
    for beta, gamma, temperature in [(1.0, 1.0, 1.0), (2.0, 0.5, 4.0)]:
        values = to_numpy(dist_loss(TEACHER, STUDENT, beta, gamma, temperature))
        assert values.shape == (5,)
        expected = reference.dist(
            TEACHER.tolist(), STUDENT.tolist(), beta, gamma, temperature
        )
        assert values.mean() == pytest.approx(expected, rel=1e-4)


def test_dist_is_zero_for_identical_outputs_and_finite_for_large_logits():
    assert np.abs(to_numpy(dist_loss(TEACHER, TEACHER))).max() < 1e-5
    large = to_numpy(dist_loss(100.0 * TEACHER, 80.0 * STUDENT, temperature=1.0))
    assert np.all(np.isfinite(large))
    # A uniform student (zero logits) has constant rows: finite gradients.
    _, gradient = value_and_gradient(
        lambda s: keras.ops.sum(dist_loss(TEACHER, s)), np.zeros_like(STUDENT)
    )
    assert np.all(np.isfinite(gradient))


def test_dist_per_position_on_sequences_flattens_positions_for_the_intra_term():
    teacher, student = TEACHER.reshape(1, 5, 4), STUDENT.reshape(1, 5, 4)
    np.testing.assert_allclose(
        to_numpy(dist_loss(teacher, student))[0],
        to_numpy(dist_loss(TEACHER, STUDENT)),
        rtol=1e-5,
    )


@pytest.mark.parametrize(
    "loss",
    [
        KDLoss(temperature=2.0, standardize=True),
        DKD(beta=2.0, temperature=2.0, standardize=True),
        DIST(beta=2.0, gamma=0.5, temperature=2.0),
    ],
    ids=["kd_ls", "dkd_ls", "dist"],
)
def test_loss_classes_round_trip_and_train_a_distiller(loss):
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(restored) is type(loss) and restored.get_config() == loss.get_config()
    np.testing.assert_allclose(
        to_numpy(restored(TEACHER, STUDENT)), to_numpy(loss(TEACHER, STUDENT)), 1e-6
    )
    x = RNG.normal(size=(32, 4)).astype("float32")
    teacher = keras.Sequential([keras.Input((4,)), keras.layers.Dense(4)])
    student = keras.Sequential([keras.Input((4,)), keras.layers.Dense(4)])
    distiller = keras_kd.Distiller(student, teacher)
    distiller.compile(optimizer=keras.optimizers.Adam(0.05), distillation_loss_fn=loss)
    history = distiller.fit(x, epochs=20, batch_size=32, verbose=0).history
    losses = history["distillation_loss"]
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"standardize": 1}, "standardize"),
        ({"temperature": 0.0}, "temperature"),
    ],
)
def test_invalid_arguments_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        KDLoss(**kwargs)
    with pytest.raises(ValueError, match=match):
        DKD(**kwargs)


def test_dist_rejects_negative_weights():
    with pytest.raises(ValueError, match="gamma"):
        DIST(gamma=-1.0)
    with pytest.raises(ValueError, match="beta"):
        dist_loss(TEACHER, STUDENT, beta=-0.5)

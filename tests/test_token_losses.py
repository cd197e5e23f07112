"""Token divergences for language models (issue #14), against float64 by hand."""

import keras
import numpy as np
import pytest

import keras_kd
from keras_kd.losses import TokenDivergence, token_divergence
from tests import reference
from tests.gradients import value_and_gradient

RNG = np.random.default_rng(0)
TEACHER = (RNG.normal(size=(2, 6, 7)) * 3).astype("float32")
STUDENT = (RNG.normal(size=(2, 6, 7)) * 3).astype("float32")
CASES = [
    ("forward_kl", 0.5, 1.0),
    ("forward_kl", 0.5, 4.0),
    ("reverse_kl", 0.5, 1.0),
    ("reverse_kl", 0.5, 2.0),
    ("jsd", 0.5, 1.0),
    ("jsd", 0.1, 2.0),
    ("jsd", 0.9, 1.0),
    ("jsd", 0.0, 1.0),
    ("jsd", 1.0, 2.0),
]


def numpy(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


@pytest.mark.parametrize("divergence, beta, temperature", CASES)
def test_values_match_float64_by_hand(divergence, beta, temperature):
    values = token_divergence(TEACHER, STUDENT, divergence, beta, temperature)
    expected = reference.token_divergence(
        TEACHER, STUDENT, divergence, beta, temperature
    )
    assert numpy(values).shape == (2, 6)
    np.testing.assert_allclose(numpy(values), expected, rtol=1e-5, atol=1e-6)


def test_a_small_jsd_by_hand_with_the_math_module():
    # p_t = (0.8, 0.2), p_s = (0.5, 0.5), beta 0.25: m = (0.575, 0.425).
    teacher = np.log(np.array([[0.8, 0.2]], "float32"))
    student = np.zeros((1, 2), "float32")
    m = (0.25 * 0.8 + 0.75 * 0.5, 0.25 * 0.2 + 0.75 * 0.5)
    kl_t = 0.8 * np.log(0.8 / m[0]) + 0.2 * np.log(0.2 / m[1])
    kl_s = 0.5 * np.log(0.5 / m[0]) + 0.5 * np.log(0.5 / m[1])
    value = numpy(token_divergence(teacher, student, "jsd", 0.25))[0]
    assert value == pytest.approx(0.25 * kl_t + 0.75 * kl_s, rel=1e-5)


def test_endpoints_of_jsd_are_the_two_kls_and_each_is_zero_on_equal_logits():
    forward = numpy(token_divergence(TEACHER, STUDENT, "forward_kl"))
    reverse = numpy(token_divergence(TEACHER, STUDENT, "reverse_kl"))
    np.testing.assert_allclose(
        numpy(token_divergence(TEACHER, STUDENT, "jsd", 0.0)), forward
    )
    np.testing.assert_allclose(
        numpy(token_divergence(TEACHER, STUDENT, "jsd", 1.0)), reverse
    )
    assert not np.allclose(forward, reverse)
    for divergence in ("forward_kl", "reverse_kl", "jsd"):
        same = numpy(token_divergence(TEACHER, TEACHER, divergence))
        np.testing.assert_allclose(same, 0.0, atol=1e-6)


@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl", "jsd"])
def test_large_logits_stay_finite_and_exact(divergence):
    teacher, student = TEACHER * 1000.0, STUDENT * 1000.0
    values = numpy(token_divergence(teacher, student, divergence, 0.5, 2.0))
    expected = reference.token_divergence(teacher, student, divergence, 0.5, 2.0)
    assert np.all(np.isfinite(values))
    np.testing.assert_allclose(values, expected, rtol=1e-4)


def weighted_sum(divergence, beta, temperature, chunk_size):
    weights = keras.ops.convert_to_tensor(np.arange(12, dtype="float32").reshape(2, 6))

    def fn(student):
        values = token_divergence(
            keras.ops.convert_to_tensor(TEACHER),
            student,
            divergence,
            beta,
            temperature,
            chunk_size=chunk_size,
        )
        return keras.ops.sum(values * weights)

    return fn


@pytest.mark.parametrize("divergence, beta, temperature", CASES)
@pytest.mark.parametrize("chunk_size", [1, 4, 5, 64])
def test_chunks_give_the_values_and_gradient_of_autodiff(
    divergence, beta, temperature, chunk_size
):
    # 6 positions per example: chunks of 1, 4 (then 2), 5 (then 1), all 6.
    value, gradient = value_and_gradient(
        weighted_sum(divergence, beta, temperature, None), STUDENT
    )
    chunked_value, chunked_gradient = value_and_gradient(
        weighted_sum(divergence, beta, temperature, chunk_size), STUDENT
    )
    assert chunked_value == pytest.approx(value, rel=1e-5)
    np.testing.assert_allclose(chunked_gradient, gradient, rtol=1e-4, atol=1e-6)
    assert np.abs(gradient).max() > 1e-3


def test_chunked_half_precision_logits_give_float32_values_and_their_dtype_gradient():
    student = keras.ops.convert_to_tensor(STUDENT, "float16")
    values = token_divergence(TEACHER.astype("float16"), student, "jsd", chunk_size=4)
    assert keras.backend.standardize_dtype(values.dtype) == "float32"
    expected = reference.token_divergence(
        TEACHER.astype("float16"), STUDENT.astype("float16"), "jsd", 0.5, 1.0
    )
    np.testing.assert_allclose(numpy(values), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"divergence": "kl"}, r"`divergence` must be one of .*'forward_kl'.*'kl'"),
        ({"divergence": "jsd", "beta": 1.5}, r"`beta` must be in \[0, 1\], got 1.5"),
        ({"beta": True}, r"`beta` must be a number"),
        ({"temperature": 0.0}, "temperature"),
        ({"chunk_size": 0}, "`chunk_size` must be a positive int, got 0"),
    ],
)
def test_bad_arguments_are_value_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TokenDivergence(**kwargs)
    with pytest.raises(ValueError, match=match):
        token_divergence(TEACHER, STUDENT, **kwargs)


def test_vocabularies_of_different_sizes_are_a_value_error():
    with pytest.raises(
        ValueError, match=r"shared vocabulary.*\(2, 6, 7\).*\(2, 6, 8\)"
    ):
        token_divergence(TEACHER, np.zeros((2, 6, 8), "float32"))


def test_language_models_with_different_vocabularies_are_a_value_error():
    teacher = language_model(1, 8, "teacher")
    student = keras.Sequential(
        [keras.Input((TIME,), dtype="int32"), keras.layers.Embedding(VOCAB, 4)]
        + [keras.layers.Dense(VOCAB + 1)]
    )
    with pytest.raises(
        ValueError, match=r"outputs 9 classes and the student 10.*vocab"
    ):
        keras_kd.Distiller(student=student, teacher=teacher)


def test_the_loss_class_round_trips_its_config():
    loss = TokenDivergence("jsd", beta=0.25, temperature=2.0, chunk_size=16)
    again = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(loss)
    )
    assert (again.divergence, again.beta, again.temperature, again.chunk_size) == (
        "jsd",
        0.25,
        2.0,
        16,
    )
    np.testing.assert_allclose(
        numpy(again.call(TEACHER, STUDENT)),
        numpy(loss.call(TEACHER, STUDENT)),
        rtol=1e-6,
    )


VOCAB, TIME = 9, 5
UNIT = keras.initializers.RandomNormal(stddev=1.0)  # logits of order 1


def language_model(seed, width, name):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((TIME,), dtype="int32"),
            keras.layers.Embedding(VOCAB, width, embeddings_initializer=UNIT),
            keras.layers.Dense(VOCAB, kernel_initializer=UNIT),
        ],
        name=name,
    )


@pytest.mark.parametrize("divergence, chunk_size", [("reverse_kl", 3), ("jsd", None)])
def test_distiller_averages_the_divergence_over_real_tokens(divergence, chunk_size):
    rng = np.random.default_rng(1)
    x = rng.integers(0, VOCAB, size=(3, TIME)).astype("int32")
    y = rng.integers(0, VOCAB, size=(3, TIME)).astype("int32")
    padding = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], "float32")
    teacher, student = language_model(1, 8, "teacher"), language_model(2, 4, "student")
    loss = TokenDivergence(divergence, beta=0.3, temperature=2.0, chunk_size=chunk_size)
    distiller = keras_kd.Distiller(student=student, teacher=teacher)
    distiller.compile(
        optimizer=keras.optimizers.SGD(0.0), alpha=0.0, distillation_loss_fn=loss
    )
    history = distiller.fit(
        x, y, sample_weight=padding, batch_size=3, shuffle=False, verbose=0
    )
    per_token = reference.token_divergence(
        numpy(teacher(x)), numpy(student(x)), divergence, 0.3, 2.0
    )
    expected = (per_token * padding).sum() / padding.sum()
    assert history.history["loss"][0] == pytest.approx(expected, rel=1e-5)
    assert abs(per_token.mean() - expected) > 1e-3  # padding would change it

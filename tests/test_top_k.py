"""Top-k teacher caches (issue #14): the loss against float64 by hand, the
cache's contents and size, and a Distiller trained on it, on every backend."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_kd
from keras_kd.losses import TokenDivergence, token_divergence, top_k_divergence
from tests import reference
from tests.gradients import value_and_gradient

VOCAB, TIME, K = 12, 5, 4
RNG = np.random.default_rng(3)
TEACHER = RNG.normal(scale=3.0, size=(3, TIME, VOCAB)).astype("float32")
STUDENT = RNG.normal(scale=3.0, size=(3, TIME, VOCAB)).astype("float32")
DIVERGENCES = [("forward_kl", 0.5), ("reverse_kl", 0.5), ("jsd", 0.3)]


def cached(teacher, k=K, temperature=2.0):
    """`(log_probs, indices)` of the teacher's top k, as a cache holds them."""
    log_probs, indices = keras_kd.top_k.top_k_log_probs(teacher, k, temperature)
    return keras.ops.convert_to_numpy(log_probs), keras.ops.convert_to_numpy(indices)


@pytest.mark.parametrize("divergence, beta", DIVERGENCES)
@pytest.mark.parametrize("rest", ["bucket", "renormalize"])
def test_top_k_divergence_matches_float64_by_hand(divergence, beta, rest):
    log_probs, indices = cached(TEACHER)
    got = top_k_divergence(
        log_probs, indices, STUDENT, divergence, beta, temperature=2.0, rest=rest
    )
    want = reference.top_k_divergence(
        TEACHER, STUDENT, K, divergence, beta, temperature=2.0, rest=rest
    )
    assert want.min() > 1e-3  # the rest bucket carries mass here
    np.testing.assert_allclose(keras.ops.convert_to_numpy(got), want, rtol=1e-4)


@pytest.mark.parametrize("divergence, beta", DIVERGENCES)
def test_a_cache_of_every_token_is_the_dense_divergence(divergence, beta):
    log_probs, indices = cached(TEACHER, k=VOCAB)
    got = top_k_divergence(log_probs, indices, STUDENT, divergence, beta, 2.0)
    dense = token_divergence(TEACHER, STUDENT, divergence, beta, 2.0)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(got), keras.ops.convert_to_numpy(dense), atol=2e-5
    )


@pytest.mark.parametrize("rest", ["bucket", "renormalize"])
def test_top_k_gradients_are_finite_at_large_logits(rest):
    # The student puts all its mass on the teacher's top k: `1 - sum q_i`
    # underflows, and the floored rest keeps the value and gradient finite.
    log_probs, indices = cached(TEACHER * 100.0, temperature=1.0)

    def loss(student):
        values = top_k_divergence(log_probs, indices, student, "jsd", 0.5, 1.0, rest)
        return keras.ops.sum(values)

    value, gradient = value_and_gradient(loss, TEACHER * 100.0 + STUDENT)
    assert np.isfinite(value) and np.all(np.isfinite(gradient))
    assert np.abs(gradient).max() > 0


def test_the_cache_keeps_the_top_k_in_float16_with_small_indices(tmp_path):
    teacher = sequence_model(VOCAB, "teacher")
    x = RNG.integers(0, VOCAB, size=(10, TIME))
    cache = keras_kd.cache_teacher_outputs(teacher, x, top_k=K, temperature=2.0)
    assert cache.log_probs.shape == cache.indices.shape == (10, TIME, K)
    assert cache.log_probs.dtype == np.float16 and cache.indices.dtype == np.uint16
    assert (cache.temperature, cache.vocabulary_size) == (2.0, VOCAB)
    full = reference.log_softmax64(numpy(teacher(x)), 2.0)
    np.testing.assert_array_equal(cache.indices, np.argsort(-full, -1)[..., :K])
    np.testing.assert_allclose(
        cache.log_probs, np.sort(full, -1)[..., ::-1][..., :K], atol=4e-3
    )
    mass = np.sort(np.exp(full), -1)[..., ::-1][..., :K].sum(-1).mean()
    assert 0.1 < mass < 0.99  # the top k hold part of the mass, not all
    assert cache.covered_mass(rows_per_block=3) == pytest.approx(mass, abs=2e-3)
    assert cache.nbytes == 10 * TIME * K * (2 + 2)
    assert cache.dense_nbytes("float16") == 10 * TIME * VOCAB * 2
    on_disk = keras_kd.cache_teacher_outputs(
        teacher, x, top_k=K, temperature=2.0, directory=str(tmp_path), batch_size=3
    )
    assert isinstance(on_disk.log_probs, np.memmap)
    np.testing.assert_array_equal(on_disk.log_probs, cache.log_probs)
    np.testing.assert_array_equal(on_disk.indices, cache.indices)


def test_indices_are_int32_beyond_65536_tokens():
    assert keras_kd.top_k.index_dtype(2**16) == "uint16"
    assert keras_kd.top_k.index_dtype(2**16 + 1) == "int32"


INIT = keras.initializers.RandomNormal(stddev=2.0)


def sequence_model(vocabulary, name, seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((TIME,), dtype="int32"),
            # Logits of order 1, so the divergences are well above float16's
            # rounding of the cached values.
            keras.layers.Embedding(vocabulary, 8, embeddings_initializer=INIT),
            keras.layers.Dense(vocabulary),
        ],
        name=name,
    )


def numpy(x):
    return np.asarray(keras.ops.convert_to_numpy(x), "float64")


PADDING = np.array([[1] * 5, [1] * 3 + [0] * 2, [1] + [0] * 4, [1] * 4 + [0]] * 2)


def frozen_distiller(teacher, student, rest="bucket", temperature=2.0):
    distiller = keras_kd.Distiller(student=student, teacher=teacher)
    loss = TokenDivergence("forward_kl", temperature=temperature, top_k_rest=rest)
    distiller.compile(
        optimizer=keras.optimizers.SGD(0.0), alpha=0.5, distillation_loss_fn=loss
    )
    return distiller


@pytest.mark.parametrize("rest", ["bucket", "renormalize"])
def test_a_distiller_trains_on_a_top_k_cache_over_real_tokens(rest):
    teacher = sequence_model(VOCAB, "teacher")
    student = sequence_model(VOCAB, "student", seed=1)
    x = RNG.integers(0, VOCAB, size=(8, TIME))
    y = np.roll(x, -1, axis=1)
    cache = keras_kd.cache_teacher_outputs(teacher, x, top_k=K, temperature=2.0)
    distiller = frozen_distiller(teacher, student, rest)
    assert distiller.distillation_loss_fn.top_k_rest == rest
    weights = PADDING.astype("float32")
    history = distiller.fit(
        x, y, sample_weight=weights, teacher_logits=cache, batch_size=8, verbose=0
    )
    t, s = numpy(teacher(x)), numpy(student(x))
    per_token = reference.top_k_divergence(t, s, K, "forward_kl", 0.5, 2.0, rest)
    want = (per_token * weights).sum() / weights.sum()
    assert want > 0.05 and abs(want - per_token.mean()) > 0.01  # padding matters
    # float16 values: about 3 significant digits per log-probability.
    assert history.history["distillation_loss"][0] == pytest.approx(want, rel=5e-3)


def test_a_dense_cache_of_sequences_trains_as_the_online_teacher():
    teacher = sequence_model(VOCAB, "teacher")
    x = RNG.integers(0, VOCAB, size=(8, TIME))
    y = np.roll(x, -1, axis=1)
    logits = keras_kd.cache_teacher_outputs(teacher, x)
    assert logits.shape == (8, TIME, VOCAB)
    losses = []
    for teacher_logits in (logits, None):
        student = sequence_model(VOCAB, "student", seed=1)
        distiller = frozen_distiller(teacher, student)
        history = distiller.fit(
            x, y, teacher_logits=teacher_logits, batch_size=8, verbose=0
        )
        losses.append(history.history["distillation_loss"][0])
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_a_top_k_cache_needs_a_token_divergence_at_its_temperature():
    teacher = sequence_model(VOCAB, "teacher")
    x = RNG.integers(0, VOCAB, size=(8, TIME))
    cache = keras_kd.cache_teacher_outputs(teacher, x, top_k=K, temperature=2.0)
    student = sequence_model(VOCAB, "student", seed=1)
    distiller = keras_kd.Distiller(student=student, teacher=teacher)
    distiller.compile(optimizer="sgd", temperature=2.0)  # KDLoss
    with pytest.raises(ValueError, match="TokenDivergence"):
        distiller.fit(x, x, teacher_logits=cache, verbose=0)
    distiller = frozen_distiller(teacher, student, temperature=1.0)
    with pytest.raises(ValueError, match="temperature 2.0, but the loss uses 1.0"):
        distiller.fit(x, x, teacher_logits=cache, verbose=0)
    # A cache from another teacher, whose vocabulary is not the student's.
    other, wider = (sequence_model(VOCAB + 3, name, 2) for name in ("a", "b"))
    distiller = frozen_distiller(other, wider)
    with pytest.raises(ValueError, match="12 tokens, but the student outputs 15"):
        distiller.fit(x, x, teacher_logits=cache, verbose=0)


def test_bad_top_k_requests_are_rejected_before_any_work():
    teacher = sequence_model(VOCAB, "teacher")
    x = RNG.integers(0, VOCAB, size=(8, TIME))
    with pytest.raises(ValueError, match="at most the vocabulary size 12"):
        keras_kd.cache_teacher_outputs(teacher, x, top_k=VOCAB + 1)
    with pytest.raises(ValueError, match="top_k"):
        keras_kd.cache_teacher_outputs(teacher, x, top_k=0)
    with pytest.raises(ValueError, match="not supported yet"):
        dataset = tf.data.Dataset.from_tensor_slices(x).batch(4)
        keras_kd.cache_teacher_outputs(teacher, dataset, top_k=K)
    with pytest.raises(ValueError, match="Pass `top_k=k` too"):
        keras_kd.cache_teacher_outputs(teacher, x, temperature=2.0)
    with pytest.raises(ValueError, match="top_k_rest"):
        TokenDivergence(top_k_rest="uniform")


def test_the_loss_config_keeps_the_rest_rule():
    loss = TokenDivergence("jsd", beta=0.2, top_k_rest="renormalize")
    again = TokenDivergence.from_config(loss.get_config())
    assert again.top_k_rest == "renormalize" and again.beta == 0.2

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_kd
from keras_kd.caching import INPUTS_KEY, TEACHER_LOGITS_KEY


@pytest.fixture(scope="module")
def models():
    keras.utils.set_random_seed(0)
    teacher = keras_kd.models.mnist_mlp((32,), name="teacher")
    student = keras_kd.models.mnist_mlp((8,), name="student")
    return teacher, student


@pytest.fixture(scope="module")
def data():
    (x, y), _ = keras_kd.datasets.load_mnist(num_train=300)
    return x, y


def test_array_cache_equals_teacher_outputs_row_by_row(models, data):
    teacher, _ = models
    x, _ = data
    logits = keras_kd.cache_teacher_outputs(teacher, x, batch_size=128)
    assert logits.shape == (300, 10) and logits.dtype == np.float32
    np.testing.assert_allclose(logits, teacher.predict(x, verbose=0), atol=1e-5)


def test_float16_cache_stays_within_half_precision_error(models, data):
    teacher, _ = models
    x, _ = data
    exact = keras_kd.cache_teacher_outputs(teacher, x)
    half = keras_kd.cache_teacher_outputs(teacher, x, dtype="float16")
    assert half.dtype == np.float16 and half.nbytes == exact.nbytes // 2
    # float16 keeps 11 significant bits: relative error <= 2^-11 per logit.
    bound = 2.0**-11 * np.abs(exact) + 1e-7
    assert np.all(np.abs(half.astype("float32") - exact) <= bound)
    kd_exact = keras_kd.kd_loss(exact, np.zeros_like(exact), 4.0)
    kd_half = keras_kd.kd_loss(half, np.zeros_like(exact), 4.0)
    np.testing.assert_allclose(kd_half, kd_exact, rtol=1e-2, atol=1e-4)


def test_disk_cache_is_a_read_only_memory_map(models, data, tmp_path):
    teacher, _ = models
    x, _ = data
    logits = keras_kd.cache_teacher_outputs(teacher, x, directory=tmp_path)
    assert isinstance(logits, np.memmap) and not logits.flags.writeable
    assert (tmp_path / "teacher_logits.npy").exists()
    np.testing.assert_allclose(logits, keras_kd.cache_teacher_outputs(teacher, x))


def test_each_example_keeps_its_own_logits_under_shuffling(models, data):
    teacher, student = models
    x, y = data
    # Tag every image with its index in one pixel, and make the cached "logits"
    # that index too: any mismatch under shuffling is then visible.
    tagged = x.copy()
    tagged[:, 0, 0, 0] = np.arange(len(x))
    fake_logits = np.repeat(np.arange(len(x), dtype="float32")[:, None], 10, axis=1)
    packed = keras_kd.attach_teacher_logits(tagged, fake_logits)
    dataset = (
        tf.data.Dataset.from_tensor_slices((packed, y)).shuffle(300, seed=1).batch(32)
    )
    for batch_x, _ in dataset:
        ids = batch_x[INPUTS_KEY][:, 0, 0, 0].numpy()
        np.testing.assert_array_equal(batch_x[TEACHER_LOGITS_KEY][:, 0].numpy(), ids)

    # And through Keras' own shuffling of arrays in fit: the loss computed with
    # the cache equals the loss with the teacher in the loop.
    distiller = keras_kd.Distiller(keras.models.clone_model(student), teacher)
    distiller.compile(optimizer=keras.optimizers.SGD(0.0))
    logits = keras_kd.cache_teacher_outputs(teacher, x)
    online = distiller.fit(x, y, batch_size=32, verbose=0).history
    cached = distiller.fit(
        x, y, teacher_logits=logits, batch_size=32, verbose=0
    ).history
    assert cached["distillation_loss"][0] == pytest.approx(
        online["distillation_loss"][0], rel=1e-5
    )
    # A cache whose rows are permuted gives a different loss: the check bites.
    shuffled = logits[np.random.default_rng(0).permutation(len(logits))]
    wrong = distiller.fit(x, y, teacher_logits=shuffled, batch_size=32, verbose=0)
    assert wrong.history["distillation_loss"][0] != pytest.approx(
        online["distillation_loss"][0], rel=1e-3
    )


def test_dataset_cache_matches_online_and_runs_the_teacher_once(models, data, tmp_path):
    teacher, student = models
    x, y = data
    calls = []

    class CountingTeacher(keras.Model):
        def __init__(self):
            super().__init__()
            self.inner = teacher

        def call(self, inputs, training=None):
            calls.append(1)  # runs at trace time only: counts traced functions
            return self.inner(inputs, training=training)

    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(100)
    cached = keras_kd.cache_teacher_outputs(
        teacher, dataset, directory=tmp_path, dtype="float16"
    )
    assert cached.cardinality() == 300
    assert any(p.name.startswith("teacher_cache") for p in tmp_path.iterdir())

    distiller = keras_kd.Distiller(keras.models.clone_model(student), CountingTeacher())
    distiller.compile(optimizer=keras.optimizers.SGD(0.0))
    history = distiller.fit(cached.batch(50), epochs=2, verbose=0).history
    assert calls == []  # the cached path never calls the teacher
    online = distiller.fit(dataset, verbose=0).history
    assert history["distillation_loss"][-1] == pytest.approx(
        online["distillation_loss"][0], rel=1e-3
    )


def test_misuse_is_rejected(models, data):
    teacher, student = models
    x, y = data
    logits = keras_kd.cache_teacher_outputs(teacher, x)
    distiller = keras_kd.Distiller(student, teacher)
    distiller.compile()
    with pytest.raises(ValueError, match="300 rows but `x` has 200"):
        distiller.fit(x[:200], y[:200], teacher_logits=logits, verbose=0)
    with pytest.raises(ValueError, match="teacher outputs 5 classes"):
        distiller.fit(x, y, teacher_logits=logits[:, :5], verbose=0)
    with pytest.raises(ValueError, match="teacher outputs probabilities"):
        probabilities = tf.nn.softmax(logits).numpy()
        distiller.fit(x, y, teacher_logits=probabilities, verbose=0)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(32)
    with pytest.raises(ValueError, match="infinite"):
        keras_kd.cache_teacher_outputs(teacher, dataset.repeat())
    with pytest.raises(ValueError, match="empty"):
        keras_kd.cache_teacher_outputs(teacher, dataset.take(0))
    with pytest.raises(ValueError, match="empty"):
        keras_kd.cache_teacher_outputs(teacher, x[:0])
    with pytest.raises(ValueError, match="goes with arrays"):
        distiller.fit(dataset, teacher_logits=logits, verbose=0)
    with pytest.raises(ValueError, match="dtype"):
        keras_kd.cache_teacher_outputs(teacher, x, dtype="int8")
    with pytest.raises(ValueError, match="batch_size"):
        keras_kd.cache_teacher_outputs(teacher, x, batch_size=0)

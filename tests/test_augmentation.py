import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_kd
from keras_kd import augmentation
from keras_kd.augmentation import MixupDraw
from tests import reference

X = np.array(
    [
        [1.0, 0.0, 2.0],
        [0.5, -1.0, 1.0],
        [3.0, 1.0, -2.0],
        [-1.0, 2.0, 0.0],
        [0.0, 0.5, 0.5],
    ],
    "float32",
)
Y = np.array([2, 0, 1, 1, 2])
TEACHER_KERNEL = [[2.0, -1.0, 0.5], [0.0, 1.5, -0.5], [1.0, 0.0, 3.0]]
IDENTITY = np.eye(3).tolist()
LAM, PARTNERS = 0.7, [3, 0, 4, 1, 2]
ALPHA, TEMPERATURE = 0.3, 2.0
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def linear(kernel, name):
    model = keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(3, use_bias=False)], name=name
    )
    model.layers[0].set_weights([np.array(kernel, "float32")])
    return model


def shift_and_scale():
    """A deterministic augmentation whose effect is easy to compute: 2x + 1."""
    return keras.layers.Rescaling(2.0, offset=1.0)


def distiller_with(**kwargs):
    return keras_kd.Distiller(
        linear(IDENTITY, "student"), linear(TEACHER_KERNEL, "teacher"), **kwargs
    )


def frozen_logs(distiller, x, y, fixed_mixup=None, **compile_kw):
    """One step on the whole batch with a zero learning rate."""
    if fixed_mixup is not None:
        lam, partners = fixed_mixup
        distiller.mixup.draw = lambda step, batch_size: MixupDraw(
            keras.ops.convert_to_tensor(lam, "float32"),
            keras.ops.convert_to_tensor(partners, "int32"),
        )
    distiller.compile(
        optimizer=keras.optimizers.SGD(0.0),
        alpha=ALPHA,
        temperature=TEMPERATURE,
        **compile_kw,
    )
    history = distiller.fit(x, y, batch_size=len(x), shuffle=False, verbose=0)
    return {key: values[-1] for key, values in history.history.items()}


def hand_losses(x, labels, partners=None, lam=1.0):
    """Per-example label losses (own, partner's) and KD terms for inputs `x`."""
    teacher = reference.matmul(x.tolist(), TEACHER_KERNEL)
    kd = np.array([reference.kd(t, s, TEMPERATURE) for t, s in zip(teacher, x)])
    own = np.array([reference.cross_entropy(max(y, 0), s) for y, s in zip(labels, x)])
    if partners is None:
        return own, kd
    theirs = np.array(
        [reference.cross_entropy(max(labels[p], 0), s) for p, s in zip(partners, x)]
    )
    return own, theirs, kd


@pytest.mark.parametrize("jit_compile", [False, True])
def test_augmentation_reaches_teacher_and_student_once(jit_compile):
    distiller = distiller_with(augmentation=shift_and_scale())
    logs = frozen_logs(distiller, X, Y, jit_compile=jit_compile)
    # Both models see 2x + 1, applied once; un-augmented inputs (or the
    # teacher and student seeing different ones) give other numbers.
    student, kd = hand_losses(2 * X + 1, Y)
    assert logs["student_loss"] == pytest.approx(student.mean(), rel=1e-5)
    assert logs["distillation_loss"] == pytest.approx(kd.mean(), rel=1e-5)
    for wrong in (X, 4 * X + 3):
        assert logs["distillation_loss"] != pytest.approx(
            hand_losses(wrong, Y)[1].mean(), rel=1e-3
        )


def test_evaluate_and_predict_do_not_augment():
    distiller = distiller_with(augmentation=shift_and_scale(), mixup_alpha=0.2)
    frozen_logs(distiller, X, Y)
    loss = distiller.evaluate(X, Y, verbose=0)
    loss = loss[0] if isinstance(loss, list) else loss
    assert loss == pytest.approx(hand_losses(X, Y)[0].mean(), rel=1e-5)
    np.testing.assert_allclose(distiller.predict(X, verbose=0), X, rtol=1e-6)


def test_random_augmentation_is_the_same_draw_for_both_models():
    # Teacher and student compute the same function: the KD term is zero
    # only if both see the same random translation of every image.
    keras.utils.set_random_seed(1)
    teacher = keras_kd.models.mnist_mlp((8,), name="teacher")
    student = keras.models.clone_model(teacher)
    student.set_weights(teacher.get_weights())
    x = np.random.rand(32, 28, 28, 1).astype("float32")
    distiller = keras_kd.Distiller(
        student, teacher, augmentation=[keras.layers.RandomTranslation(0.3, 0.3)]
    )
    logs = frozen_logs(distiller, x, None)
    assert logs["distillation_loss"] == pytest.approx(0.0, abs=1e-6)
    # The same layer used twice (once per model) would not give zero.
    rogue = keras.layers.RandomTranslation(0.3, 0.3, seed=3)
    a, b = rogue(x, training=True), rogue(x, training=True)
    assert not np.allclose(teacher(a), teacher(b), atol=1e-3)


def test_mix_inputs_by_hand():
    x = np.array([[0.0, 1.0], [10.0, 20.0], [4.0, -4.0]], "float32")
    mixed = augmentation.mix_inputs({"a": x, "b": x[:, :1]}, 0.75, [1, 2, 0])
    np.testing.assert_allclose(
        mixed["a"], [[2.5, 5.75], [8.5, 14.0], [3.0, -2.75]], rtol=1e-6
    )
    np.testing.assert_allclose(mixed["b"], [[2.5], [8.5], [3.0]], rtol=1e-6)
    np.testing.assert_allclose(
        augmentation.mix_per_example([1.0, 0.0, 1.0], 0.75, [1, 2, 0]),
        [0.75, 0.25, 1.0],
    )
    with pytest.raises(ValueError, match="floating-point"):
        augmentation.mix_inputs(np.array([[1, 2]]), 0.5, [0])


@pytest.mark.parametrize("jit_compile", [False, True])
def test_mixup_mixes_inputs_and_targets_consistently(jit_compile):
    distiller = distiller_with(augmentation=shift_and_scale(), mixup_alpha=0.3)
    logs = frozen_logs(
        distiller,
        X,
        Y,
        fixed_mixup=(LAM, PARTNERS),
        jit_compile=jit_compile,
        weighted_metrics=[keras.metrics.SparseCategoricalAccuracy(name="acc")],
    )
    augmented = 2 * X + 1
    mixed = LAM * augmented + (1 - LAM) * augmented[PARTNERS]
    own, theirs, kd = hand_losses(mixed, Y, PARTNERS)
    student = LAM * own + (1 - LAM) * theirs
    assert logs["student_loss"] == pytest.approx(student.mean(), rel=1e-5)
    assert logs["distillation_loss"] == pytest.approx(kd.mean(), rel=1e-5)
    expected = ALPHA * student.mean() + (1 - ALPHA) * kd.mean()
    assert logs["loss"] == pytest.approx(expected, rel=1e-5)
    # Metrics score the mixed image against its larger share's label (own).
    assert logs["acc"] == pytest.approx(np.mean(mixed.argmax(1) == Y))


def test_mixup_with_unlabeled_partners_drops_only_their_label_share():
    partial = np.array([2, -1, 1, -1, 2])
    distiller = distiller_with(mixup_alpha=0.3)
    logs = frozen_logs(distiller, X, partial, fixed_mixup=(LAM, PARTNERS))
    mixed = LAM * X + (1 - LAM) * X[PARTNERS]
    own, theirs, kd = hand_losses(mixed, partial, PARTNERS)
    mask = (partial >= 0).astype(float)
    partner_mask = mask[PARTNERS]
    student_sum = np.sum(LAM * own * mask + (1 - LAM) * theirs * partner_mask)
    labeled = np.sum(LAM * mask + (1 - LAM) * partner_mask)
    assert logs["student_loss"] == pytest.approx(student_sum / labeled, rel=1e-5)
    expected = (ALPHA * student_sum + (1 - ALPHA) * kd.sum()) / len(X)
    assert logs["loss"] == pytest.approx(expected, rel=1e-5)


@pytest.mark.tensorflow_only
@pytest.mark.parametrize("mixup_alpha, variance", [(0.2, 1 / 5.6), (1.0, 1 / 12)])
def test_sampled_lambda_follows_beta_and_partners_permute(mixup_alpha, variance):
    @tf.function(jit_compile=True)  # The sampler must compile with XLA.
    def draw(seeds):
        return tf.map_fn(
            lambda s: augmentation.sample_mixup(6, mixup_alpha, tf.stack([s, 7])),
            seeds,
            fn_output_signature=(tf.float32, tf.int32),
        )

    lams, partners = draw(tf.range(600, dtype="int64"))
    lams = lams.numpy()
    assert np.all((lams >= 0) & (lams <= 1))
    # Beta(a, a): mean 1/2, variance 1 / (4 (2a + 1)).
    assert lams.mean() == pytest.approx(0.5, abs=0.05)
    assert lams.var() == pytest.approx(variance, rel=0.2)
    for row in partners.numpy()[:50]:
        assert sorted(row.tolist()) == list(range(6))
    assert len({tuple(row) for row in partners.numpy()[:50]}) > 30


@pytest.mark.parametrize("mixup_alpha", [0, -1.0, float("inf"), "0.2", True])
def test_invalid_mixup_alpha_is_rejected(mixup_alpha):
    with pytest.raises(ValueError, match="mixup_alpha"):
        distiller_with(mixup_alpha=mixup_alpha)


def test_invalid_augmentation_is_rejected():
    with pytest.raises(ValueError, match="augmentation"):
        distiller_with(augmentation="random_flip")


@pytest.mark.parametrize(
    "kwargs", [{"augmentation": shift_and_scale()}, {"mixup_alpha": 0.2}]
)
def test_teacher_cache_with_augmentation_is_rejected(kwargs):
    distiller = distiller_with(**kwargs)
    distiller.compile(optimizer="sgd")
    teacher_logits = keras_kd.cache_teacher_outputs(distiller.teacher, X)
    with pytest.raises(ValueError, match="online"):
        distiller.fit(X, Y, teacher_logits=teacher_logits, verbose=0)
    dataset = tf.data.Dataset.from_tensor_slices((X, Y)).batch(5)
    cached = keras_kd.cache_teacher_outputs(distiller.teacher, dataset)
    with pytest.raises(ValueError, match="online"):
        distiller.fit(cached.batch(5), verbose=0)


def test_keras_file_round_trip_keeps_augmentation_and_mixup(tmp_path):
    distiller = distiller_with(
        augmentation=[shift_and_scale(), keras.layers.GaussianNoise(0.0)],
        mixup_alpha=0.4,
    )
    frozen_logs(distiller, X, Y)
    path = tmp_path / "distiller.keras"
    distiller.save(path)
    restored = keras.saving.load_model(path)
    assert restored.mixup_alpha == 0.4
    layers = restored.augmentation.layers
    assert [type(layer) for layer in layers] == [
        keras.layers.Rescaling,
        keras.layers.GaussianNoise,
    ]
    assert (layers[0].scale, layers[0].offset) == (2.0, 1.0)
    assert not restored.augmentation.trainable
    # The restored distiller trains like the original on a fixed mixup draw.
    logs = frozen_logs(restored, X, Y, fixed_mixup=(LAM, PARTNERS))
    original = frozen_logs(distiller, X, Y, fixed_mixup=(LAM, PARTNERS))
    assert logs["distillation_loss"] == pytest.approx(original["distillation_loss"])
    assert distiller_with().get_config()["augmentation"] is None


MIRRORED = textwrap.dedent(
    """
    import numpy as np, tensorflow as tf, keras, keras_kd
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

    def train(strategy, mixup_alpha, augmentation=None):
        keras.utils.set_random_seed(0)
        x = np.random.rand(64, 28, 28, 1).astype("float32")
        y = np.random.randint(0, 10, 64)
        with strategy.scope():
            distiller = keras_kd.Distiller(
                keras_kd.models.mnist_mlp((8,)),
                keras_kd.models.mnist_mlp((8,), name="t"),
                augmentation=augmentation or keras.layers.Rescaling(2.0, offset=1.0),
                mixup_alpha=mixup_alpha)
            distiller.compile(optimizer=keras.optimizers.SGD(0.1))
        history = distiller.fit(x, y, batch_size=16, shuffle=False, verbose=0)
        return distiller.student.get_weights(), history.history["loss"][-1]

    devices = ["/cpu:0", "/cpu:1"]
    mirrored = tf.distribute.MirroredStrategy(devices)
    ours, _ = train(mirrored, None)
    theirs, _ = train(tf.distribute.get_strategy(), None)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # A random layer (its seed state is a mirrored variable) and mixup.
    strategy = tf.distribute.MirroredStrategy(devices)
    with strategy.scope():
        shift = keras.layers.RandomTranslation(0.1, 0.1)
    _, loss = train(strategy, 0.4, shift)
    assert np.isfinite(loss), loss
    print("OK", loss)
    """
)


@pytest.mark.tensorflow_only
def test_augmentation_under_mirrored_strategy_trains_like_one_device():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run(
        [sys.executable, "-c", MIRRORED],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "OK" in result.stdout

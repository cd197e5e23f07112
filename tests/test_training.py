"""The loss core on outputs of any rank: per-position terms, weights and masks.

Every expected value is computed in float64 from the models' own logits with
`tests.reference`, position by position.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_kd
from keras_kd import _training
from tests import reference

ALPHA, TEMPERATURE = 0.3, 2.0
VOCAB, TIME, BATCH = 5, 4, 3


def token_model(seed, name):
    """`(batch, time)` token ids -> `(batch, time, vocab)` logits."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((TIME,), dtype="int32"),
            # Logits of order 1, so that the KL is not lost in float32 noise.
            keras.layers.Embedding(
                VOCAB, 6, embeddings_initializer=keras.initializers.RandomNormal(0, 1)
            ),
            keras.layers.Dense(VOCAB),
        ],
        name=name,
    )


def pixel_model(seed, name, classes=3):
    """`(batch, 4, 4, 2)` images -> `(batch, 4, 4, classes)` per-pixel logits."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [keras.Input((4, 4, 2)), keras.layers.Conv2D(classes, 1)], name=name
    )


def frozen_logs(distiller, x, y, sample_weight=None, **compile_kw):
    """One step with a zero learning rate: the logs describe the given weights."""
    distiller.compile(
        optimizer=keras.optimizers.SGD(0.0),
        alpha=ALPHA,
        temperature=TEMPERATURE,
        **compile_kw,
    )
    history = distiller.fit(
        x, y, sample_weight=sample_weight, batch_size=len(y), shuffle=False, verbose=0
    )
    return {key: values[-1] for key, values in history.history.items()}


def hand_positions(teacher, student, x, y):
    """Per-position label and distillation terms, float64, flattened."""
    t = keras.ops.convert_to_numpy(teacher(x)).reshape(-1, teacher.output_shape[-1])
    s = keras.ops.convert_to_numpy(student(x)).reshape(-1, student.output_shape[-1])
    labels = np.asarray(y).reshape(-1)
    label = np.array(
        [reference.cross_entropy(max(int(c), 0), row) for c, row in zip(labels, s)]
    )
    kd = np.array([reference.kd(a, b, TEMPERATURE) for a, b in zip(t, s)])
    return label, kd, (labels >= 0).astype("float64")


@pytest.fixture
def tokens():
    rng = np.random.default_rng(0)
    x = rng.integers(0, VOCAB, size=(BATCH, TIME)).astype("int32")
    y = rng.integers(0, VOCAB, size=(BATCH, TIME)).astype("int32")
    padding = np.array([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], "float32")
    return x, y, padding


def test_padded_tokens_give_the_masked_mean_over_real_tokens(tokens):
    x, y, padding = tokens
    teacher, student = token_model(1, "teacher"), token_model(2, "student")
    logs = frozen_logs(keras_kd.Distiller(student, teacher), x, y, padding)
    label, kd, _ = hand_positions(teacher, student, x, y)
    w = padding.reshape(-1)
    total = ALPHA * label + (1 - ALPHA) * kd
    # Padding counts in neither the numerator nor the denominator; the old
    # reduction (mean over time of the terms times mean over time of the
    # weights) gave a different number.
    assert logs["loss"] == pytest.approx((total * w).sum() / w.sum(), rel=1e-5)
    assert logs["distillation_loss"] == pytest.approx(
        (kd * w).sum() / w.sum(), rel=1e-5
    )
    assert logs["student_loss"] == pytest.approx((label * w).sum() / w.sum(), rel=1e-5)
    old = (total.reshape(BATCH, TIME).mean(1) * padding.mean(1)).mean()
    assert abs(logs["loss"] - old) > 1e-3


def test_unlabeled_tokens_get_the_distillation_term_only(tokens):
    x, y, padding = tokens
    y = y.copy()
    y[0, 1] = y[2, 0] = -1  # no label at two real positions
    teacher, student = token_model(1, "teacher"), token_model(2, "student")
    logs = frozen_logs(keras_kd.Distiller(student, teacher), x, y, padding)
    label, kd, labeled = hand_positions(teacher, student, x, y)
    w = padding.reshape(-1)
    expected = (ALPHA * label * labeled + (1 - ALPHA) * kd) * w
    assert logs["loss"] == pytest.approx(expected.sum() / w.sum(), rel=1e-5)
    assert logs["student_loss"] == pytest.approx(
        (label * labeled * w).sum() / (labeled * w).sum(), rel=1e-5
    )


def test_per_example_weights_on_tokens_average_over_all_positions(tokens):
    x, y, _ = tokens
    weights = np.array([1.0, 2.0, 0.5], "float32")
    teacher, student = token_model(1, "teacher"), token_model(2, "student")
    logs = frozen_logs(keras_kd.Distiller(student, teacher), x, y, weights)
    label, kd, _ = hand_positions(teacher, student, x, y)
    w = np.repeat(weights, TIME)
    total = ALPHA * label + (1 - ALPHA) * kd
    assert logs["loss"] == pytest.approx((total * w).sum() / w.size, rel=1e-5)


def test_pixel_mask_gives_the_masked_mean_over_pixels():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 4, 4, 2)).astype("float32")
    y = rng.integers(0, 3, size=(2, 4, 4)).astype("int32")
    mask = (rng.uniform(size=(2, 4, 4)) > 0.4).astype("float32")
    teacher, student = pixel_model(3, "teacher"), pixel_model(4, "student")
    logs = frozen_logs(keras_kd.Distiller(student, teacher), x, y, mask)
    label, kd, _ = hand_positions(teacher, student, x, y)
    w = mask.reshape(-1)
    total = ALPHA * label + (1 - ALPHA) * kd
    assert logs["loss"] == pytest.approx((total * w).sum() / w.sum(), rel=1e-5)


def test_token_dkd_gets_the_label_at_each_position(tokens):
    x, y, padding = tokens
    teacher, student = token_model(1, "teacher"), token_model(2, "student")
    dkd = keras_kd.losses.DKD(beta=2.0, temperature=TEMPERATURE)
    logs = frozen_logs(
        keras_kd.Distiller(student, teacher), x, y, padding, distillation_loss_fn=dkd
    )
    t = keras.ops.convert_to_numpy(teacher(x)).reshape(-1, VOCAB)
    s = keras.ops.convert_to_numpy(student(x)).reshape(-1, VOCAB)
    values = [
        reference.dkd(a, b, c, 1.0, 2.0, TEMPERATURE)
        for a, b, c in zip(t, s, y.reshape(-1))
    ]
    w = padding.reshape(-1)
    assert logs["distillation_loss"] == pytest.approx(
        (np.array(values) * w).sum() / w.sum(), rel=1e-4
    )


def test_evaluate_averages_the_label_loss_over_real_tokens(tokens):
    x, y, padding = tokens
    teacher, student = token_model(1, "teacher"), token_model(2, "student")
    distiller = keras_kd.Distiller(student, teacher)
    distiller.compile(optimizer="sgd")
    loss = distiller.evaluate(x, y, sample_weight=padding, verbose=0)
    label, _, _ = hand_positions(teacher, student, x, y)
    w = padding.reshape(-1)
    assert loss == pytest.approx((label * w).sum() / w.sum(), rel=1e-5)


def test_mutual_learning_on_padded_tokens_uses_the_same_reduction(tokens):
    x, y, padding = tokens
    a, b = token_model(1, "a"), token_model(2, "b")
    mutual = keras_kd.MutualLearning([a, b])
    mutual.compile(optimizer=keras.optimizers.SGD(0.0), alpha=ALPHA, temperature=1.0)
    history = mutual.fit(x, y, sample_weight=padding, batch_size=BATCH, verbose=0)
    logs = {key: values[-1] for key, values in history.history.items()}
    label, _, _ = hand_positions(a, b, x, y)  # label: CE of b's logits
    w = padding.reshape(-1)
    assert logs["student_1_loss"] == pytest.approx(
        (label * w).sum() / w.sum(), rel=1e-5
    )


# --- KerasHub-style dict inputs with a padding mask ---------------------------


def hub_token_model(seed, name):
    """`{"token_ids", "padding_mask"}` -> `(batch, time, vocab)`, KerasHub-style."""
    token_ids = keras.Input((TIME,), dtype="int32", name="token_ids")
    padding_mask = keras.Input((TIME,), dtype="int32", name="padding_mask")
    logits = token_model(seed, f"{name}_body")(token_ids)
    masked = keras.layers.Lambda(lambda pair: pair[0])([logits, padding_mask])
    return keras.Model(
        {"token_ids": token_ids, "padding_mask": padding_mask}, masked, name=name
    )


def hub_inputs(x, padding):
    return {"token_ids": x, "padding_mask": padding.astype("int32")}


def test_a_padding_mask_in_dict_inputs_weighs_the_tokens(tokens):
    x, y, padding = tokens
    logs = {}
    for how in ("mask", "sample_weight", "neither"):
        teacher, student = hub_token_model(1, "teacher"), hub_token_model(2, "student")
        inputs = hub_inputs(x, padding if how == "mask" else np.ones_like(padding))
        weights = padding if how == "sample_weight" else None
        logs[how] = frozen_logs(
            keras_kd.Distiller(student, teacher), inputs, y, weights
        )
    label, kd, _ = hand_positions(token_model(1, "t"), token_model(2, "s"), x, y)
    w = padding.reshape(-1)
    expected = ((ALPHA * label + (1 - ALPHA) * kd) * w).sum() / w.sum()
    assert logs["mask"]["loss"] == pytest.approx(expected, rel=1e-5)
    assert logs["mask"]["loss"] == pytest.approx(
        logs["sample_weight"]["loss"], rel=1e-6
    )
    assert abs(logs["neither"]["loss"] - expected) > 1e-3


def test_evaluate_and_mutual_learning_read_the_padding_mask_too(tokens):
    x, y, padding = tokens
    inputs = hub_inputs(x, padding)
    teacher, student = hub_token_model(1, "teacher"), hub_token_model(2, "student")
    distiller = keras_kd.Distiller(student, teacher)
    distiller.compile(optimizer="sgd")
    masked = distiller.evaluate(inputs, y, verbose=0)
    weighted = distiller.evaluate(
        hub_inputs(x, np.ones_like(padding)), y, sample_weight=padding, verbose=0
    )
    assert masked == pytest.approx(weighted, rel=1e-6)
    mutual = keras_kd.MutualLearning([hub_token_model(1, "a"), hub_token_model(2, "b")])
    mutual.compile(optimizer=keras.optimizers.SGD(0.0), alpha=ALPHA, temperature=1.0)
    history = mutual.fit(inputs, y, batch_size=BATCH, verbose=0)
    label, _, _ = hand_positions(token_model(1, "a"), token_model(2, "b"), x, y)
    w = padding.reshape(-1)
    assert history.history["student_1_loss"][-1] == pytest.approx(
        (label * w).sum() / w.sum(), rel=1e-5
    )


def test_a_padding_mask_is_ignored_by_a_classifier_and_checked_on_tokens():
    token_ids = keras.Input((TIME,), dtype="int32", name="token_ids")
    padding_mask = keras.Input((TIME,), dtype="int32", name="padding_mask")
    pooled = keras.layers.GlobalAveragePooling1D()(
        keras.layers.Embedding(VOCAB, 3)(token_ids)
    )
    classifier_model = keras.Model(
        {"token_ids": token_ids, "padding_mask": padding_mask},
        keras.layers.Dense(2)(pooled),
    )
    x = {
        "token_ids": np.zeros((2, TIME), "int32"),
        "padding_mask": np.array([[1, 1, 0, 0]] * 2),
    }
    logits = classifier_model(x)
    assert _training.padding_weights(x, None, logits) is None
    weights = np.ones((2,), "float32")
    assert _training.padding_weights(x, weights, logits) is weights
    with pytest.raises(
        ValueError, match=r"`padding_mask` has shape \(2, 4\).*\(2, 3, 5\)"
    ):
        _training.padding_weights(x, None, np.zeros((2, 3, 5), "float32"))


# --- Errors at the first batch -----------------------------------------------


def classifier(name, inputs=3, classes=3):
    return keras.Sequential(
        [keras.Input((inputs,)), keras.layers.Dense(classes)], name=name
    )


def test_a_label_beyond_the_class_count_is_named():
    distiller = keras_kd.Distiller(classifier("s"), classifier("t"))
    distiller.compile(optimizer="sgd")
    x = np.zeros((40, 3), "float32")
    y = np.zeros((40,), "int32")
    y[30] = 3  # beyond the probe's first examples: all array labels are checked
    with pytest.raises(ValueError, match=r"Label 3 is out of range.*\[0, 3\)"):
        distiller.fit(x, y, verbose=0)
    dataset = tf.data.Dataset.from_tensor_slices((x[:8], np.full(8, 7))).batch(4)
    with pytest.raises(ValueError, match="Label 7 is out of range"):
        distiller.fit(dataset, verbose=0)


def test_labels_of_another_layout_are_rejected(tokens):
    x, y, _ = tokens
    distiller = keras_kd.Distiller(token_model(2, "s"), token_model(1, "t"))
    distiller.compile(optimizer="sgd")
    with pytest.raises(ValueError, match=r"one class index per position"):
        distiller.fit(x, y[:, :2], verbose=0)


def test_sample_weights_of_another_layout_are_rejected(tokens):
    x, y, _ = tokens
    distiller = keras_kd.Distiller(token_model(2, "s"), token_model(1, "t"))
    distiller.compile(optimizer="sgd")
    with pytest.raises(ValueError, match="sample_weight has shape"):
        distiller.fit(x, y, sample_weight=np.ones((BATCH, 2)), verbose=0)


def test_a_model_that_fails_on_the_data_is_named():
    distiller = keras_kd.Distiller(classifier("s", inputs=3), classifier("t", inputs=5))
    distiller.compile(optimizer="sgd")
    x, y = np.zeros((8, 3), "float32"), np.zeros((8,), "int32")
    with pytest.raises(ValueError, match=r"The teacher failed .*\(4, 3\)"):
        distiller.fit(x, y, verbose=0)
    distiller = keras_kd.Distiller(classifier("s", inputs=5), classifier("t", inputs=3))
    distiller.compile(optimizer="sgd")
    with pytest.raises(ValueError, match=r"The student failed .*\(4, 3\)"):
        distiller.fit(x, y, verbose=0)


@pytest.mark.parametrize(
    "value", [np.float32(2.0), np.int64(2), np.array(2.0), tf.constant(2.0)]
)
def test_numpy_and_tensor_scalars_are_accepted(value):
    distiller = keras_kd.Distiller(classifier("s"), classifier("t"))
    distiller.compile(optimizer="sgd", temperature=value, alpha=value / 4)
    assert distiller.temperature == 2.0 and distiller.alpha == 0.5
    assert isinstance(distiller.temperature, float)
    assert keras_kd.losses.KDLoss(temperature=value).temperature == 2.0
    assert keras_kd.losses.HintLoss(weight=value).weight == 2.0
    assert keras_kd.losses.dkd_loss(
        np.zeros((1, 3)), np.zeros((1, 3)), [0], beta=value, temperature=value
    ).shape == (1,)


@pytest.mark.parametrize("value", [True, "2", np.array([2.0]), None])
def test_non_scalars_are_rejected_by_name(value):
    distiller = keras_kd.Distiller(classifier("s"), classifier("t"))
    with pytest.raises(ValueError, match="`temperature` must be a positive"):
        distiller.compile(optimizer="sgd", temperature=value or "none")
    with pytest.raises(ValueError, match="`alpha` must be"):
        distiller.compile(optimizer="sgd", alpha=value or "none")


def test_loss_weights_are_rejected_not_dropped():
    distiller = keras_kd.Distiller(classifier("s"), classifier("t"))
    with pytest.raises(ValueError, match="loss_weights"):
        distiller.compile(optimizer="sgd", loss_weights=[1.0, 2.0])
    mutual = keras_kd.MutualLearning([classifier("a"), classifier("b")])
    with pytest.raises(ValueError, match="loss_weights"):
        mutual.compile(optimizer="sgd", loss_weights=[1.0, 2.0])


def test_split_unlabeled_leaves_non_tensor_labels_alone():
    labels = [0, 1, -1]
    assert _training.split_unlabeled(labels) == (labels, None)
    values, mask = _training.split_unlabeled(np.array([[0, -1], [2, 1]]))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(mask), [[1, 0], [1, 1]])
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(values), [[0, 0], [2, 1]])


# --- Configs that survive saving ----------------------------------------------


def test_mutual_learning_keeps_its_compile_config(tmp_path):
    mutual = keras_kd.MutualLearning([classifier("a"), classifier("b")])
    # PyTorch's trainer takes only steps_per_execution=1.
    steps = 1 if keras.backend.backend() == "torch" else 3
    mutual.compile(
        optimizer="sgd",
        weighted_metrics=["sparse_categorical_accuracy"],
        jit_compile=False,
        steps_per_execution=steps,
        alpha=0.25,
    )
    mutual.fit(np.zeros((6, 3)), np.zeros((6,), "int32"), verbose=0)
    mutual.save(tmp_path / "mutual.keras")
    loaded = keras.saving.load_model(tmp_path / "mutual.keras")
    config = loaded.get_compile_config()
    assert config["steps_per_execution"] == steps and config["jit_compile"] is False
    assert config["weighted_metrics"] is not None and loaded.alpha == 0.25


def test_the_mixup_seed_is_saved(tmp_path):
    distiller = keras_kd.Distiller(
        classifier("s"), classifier("t"), mixup_alpha=0.2, mixup_seed=1234
    )
    distiller.compile(optimizer="sgd")
    distiller.save(tmp_path / "d.keras")
    loaded = keras.saving.load_model(tmp_path / "d.keras")
    assert loaded.mixup_seed == 1234
    keras.utils.set_random_seed(0)
    drawn = keras_kd.Distiller(classifier("s2"), classifier("t2"), mixup_alpha=0.2)
    assert keras_kd.Distiller.from_config(drawn.get_config()).mixup_seed == (
        drawn.mixup_seed
    )

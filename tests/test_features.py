"""Feature and relation distillation: the losses, their composition in `Distiller`."""

import math
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_kd
from keras_kd.losses import (
    DKD,
    RKD,
    AttentionTransfer,
    HintLoss,
    SimilarityPreserving,
    attention_transfer_loss,
    hint_loss,
    rkd_angle_loss,
    rkd_distance_loss,
    similarity_preserving_loss,
)
from tests import reference
from tests.gradients import value_and_gradient

IMAGE = (6, 6, 1)
CLASSES = 3
RNG = np.random.default_rng(0)
X = RNG.random((24, *IMAGE)).astype("float32")
Y = RNG.integers(0, CLASSES, 24)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --- The losses, against hand computations ----------------------------------


def test_hint_loss_by_hand():
    # Example 0: mean(1², 2²) = 2.5; example 1: mean(0², 3²) = 4.5.
    value = hint_loss(np.array([[1.0, 2.0], [1.0, 3.0]]), np.array([[0, 0], [1, 0]]))
    np.testing.assert_allclose(np.asarray(value), [2.5, 4.5], rtol=1e-6)
    teacher, student = RNG.normal(size=(3, 2, 2, 4)), RNG.normal(size=(3, 2, 2, 4))
    np.testing.assert_allclose(
        np.asarray(hint_loss(teacher, student)),
        reference.hint(teacher, student),
        rtol=1e-5,
    )
    with pytest.raises(ValueError, match=r"same shape.*\(1, 2\).*\(1, 3\)"):
        hint_loss(np.zeros((1, 2)), np.zeros((1, 3)))


def test_attention_transfer_by_hand():
    # Teacher: mean_c a² = [1, 0], normalized [1, 0]. Student (2 channels):
    # mean_c a² = [1, 1], normalized [0.7071, 0.7071]. Mean of the squared
    # differences: ((1 - 0.7071)² + 0.7071²) / 2 = 0.29289.
    teacher = np.array([1.0, 0.0]).reshape(1, 1, 2, 1)
    student = np.ones((1, 1, 2, 2))
    value = attention_transfer_loss(teacher, student)
    assert float(value[0]) == pytest.approx(1 - 1 / math.sqrt(2), rel=1e-5)
    # Sign and scale of the activations do not matter, only where they are.
    assert float(attention_transfer_loss(teacher, -3 * teacher)[0]) == pytest.approx(
        0, abs=1e-7
    )
    teacher, student = RNG.normal(size=(2, 3, 4, 5)), RNG.normal(size=(2, 3, 4, 2))
    for p in (1, 2, 3):
        np.testing.assert_allclose(
            np.asarray(attention_transfer_loss(teacher, student, p=p)),
            reference.attention_transfer(teacher, student, p),
            rtol=1e-4,
        )


def test_rkd_distance_by_hand():
    # Teacher: a 3-4-5 triangle, mean distance 4, psi = 0.75, 1, 1.25. Student
    # on a line: distances 1, 2, 1, mean 4/3, psi = 0.75, 1.5, 0.75. Pairs
    # (0, 2) and (1, 2) differ by 0.5 each: huber 0.125, twice each (both
    # orders); 0.5 over the 9 ordered pairs.
    teacher = np.array([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]])
    student = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 1.0], [2.0, 0.0, 1.0]])
    assert float(rkd_distance_loss(teacher, student)) == pytest.approx(
        0.5 / 9, rel=1e-5
    )
    teacher, student = RNG.normal(size=(4, 2, 3)), 3 * RNG.normal(size=(4, 5))
    assert float(rkd_distance_loss(teacher, student)) == pytest.approx(
        reference.rkd_distance(teacher, student), rel=1e-4
    )
    # Distances are normalized by their mean: scaling a model's features is free.
    assert float(rkd_distance_loss(teacher, 7 * teacher + 1)) == pytest.approx(
        0, abs=1e-6
    )


def test_rkd_angle_by_hand():
    # Teacher: right triangle (0,0), (1,0), (0,1): cosines 0 at vertex 0,
    # 1/sqrt(2) at vertices 1 and 2. Student: three points on a line: cosines
    # 1, -1, 1. Each vertex has two ordered off-diagonal triplets; the
    # hubers sum to 2 * (0.5 + 1.2071 + 0.0429) = 3.5, over 27 triplets.
    teacher = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    student = np.array([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]])
    assert float(rkd_angle_loss(teacher, student)) == pytest.approx(3.5 / 27, rel=1e-5)
    assert reference.rkd_angle(teacher, student) == pytest.approx(3.5 / 27)
    teacher, student = RNG.normal(size=(4, 3)), RNG.normal(size=(4, 2, 2))
    assert float(rkd_angle_loss(teacher, student)) == pytest.approx(
        reference.rkd_angle(teacher, student), rel=1e-4
    )


@pytest.mark.parametrize(
    "fn", [rkd_distance_loss, rkd_angle_loss, similarity_preserving_loss]
)
def test_relation_losses_handle_equal_and_zero_examples(fn):
    # Dead ReLUs give equal (here: zero) features for several examples; the
    # values stay right and the gradients small.
    teacher = np.array([[0.3, 1.7, 0.0], [0.0, 0.0, 0.0], [2.1, 0.2, 0.9], [1, 1, 1]])
    student = np.array([[0.0, 0.0], [0.0, 0.0], [0.7, 3.1], [1.3, 0.0]])
    value, gradient = value_and_gradient(lambda s: fn(teacher, s), student)
    assert np.all(np.isfinite(gradient)) and np.abs(gradient).max() < 10
    expected = {
        "rkd_distance_loss": reference.rkd_distance,
        "rkd_angle_loss": reference.rkd_angle,
        "similarity_preserving_loss": reference.similarity_preserving,
    }[fn.__name__](teacher, student)
    assert value == pytest.approx(expected, rel=1e-4, abs=1e-6)


def test_attention_transfer_handles_an_all_zero_map():
    teacher = RNG.random((2, 2, 2, 3))
    student = np.zeros((2, 2, 2, 2))
    _, gradient = value_and_gradient(
        lambda s: keras.ops.sum(attention_transfer_loss(teacher, s)), student
    )
    assert np.all(np.isfinite(gradient))
    value = keras.ops.convert_to_numpy(attention_transfer_loss(teacher, student))
    # A zero map is the zero vector: the loss is the mean of Q_t², 1 / (H W).
    np.testing.assert_allclose(np.asarray(value), [0.25, 0.25], rtol=1e-5)


def test_similarity_preserving_by_hand():
    # G_t = I; G_s = 4 everywhere, rows normalized to 1/sqrt(2).
    # ||I - G~_s||² = 2 (1 - 0.7071)² + 2 (0.7071)² = 1.1716, over b² = 4.
    value = similarity_preserving_loss(np.eye(2), np.ones((2, 4)))
    assert float(value) == pytest.approx(1 - 1 / math.sqrt(2), rel=1e-5)
    teacher, student = RNG.normal(size=(5, 3, 2)), RNG.normal(size=(5, 7))
    assert float(similarity_preserving_loss(teacher, student)) == pytest.approx(
        reference.similarity_preserving(teacher, student), rel=1e-4
    )


LOSS_CLASSES = [
    (HintLoss("t", "s", weight=0.5, adapter=False), hint_loss, (3, 4), (3, 4)),
    (AttentionTransfer("t", "s", p=1), None, (3, 2, 2, 5), (3, 2, 2, 3)),
    (RKD("t", "s", distance_weight=2.0, angle_weight=3.0), None, (4, 3), (4, 2)),
    (SimilarityPreserving(weight=5.0), similarity_preserving_loss, (4, 3), (4, 5)),
]


@pytest.mark.parametrize("loss, function, teacher_shape, student_shape", LOSS_CLASSES)
def test_loss_classes_wrap_the_functions_and_round_trip(
    loss, function, teacher_shape, student_shape
):
    teacher, student = RNG.normal(size=teacher_shape), RNG.normal(size=student_shape)
    if isinstance(loss, AttentionTransfer):
        expected = np.mean(reference.attention_transfer(teacher, student, p=1))
    elif isinstance(loss, RKD):
        expected = 2 * reference.rkd_distance(teacher, student) + 3 * (
            reference.rkd_angle(teacher, student)
        )
    else:
        expected = float(
            np.mean(keras.ops.convert_to_numpy(function(teacher, student)))
        )
    assert float(loss(teacher, student)) == pytest.approx(expected, rel=1e-4)

    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(restored) is type(loss)
    assert restored.get_config() == loss.get_config()
    assert float(restored(teacher, student)) == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: HintLoss(weight=-1.0), "weight"),
        (lambda: HintLoss(adapter="yes"), "adapter"),
        (lambda: HintLoss(teacher_layer_name=3), "teacher_layer_name"),
        (lambda: AttentionTransfer(p=0), "`p`"),
        (lambda: RKD(angle_weight=float("inf")), "angle_weight"),
        (lambda: SimilarityPreserving(weight="1"), "weight"),
    ],
)
def test_invalid_loss_arguments_are_rejected(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def pooled(x, factor):
    """NumPy average pooling of NHWC `x` by `factor` on both spatial axes."""
    n, h, w, c = x.shape
    return x.reshape(n, h // factor, factor, w // factor, factor, c).mean((2, 4))


def test_spatial_sizes_that_divide_are_pooled_to_the_smaller():
    teacher, student = RNG.random((2, 4, 4, 3)), RNG.random((2, 2, 2, 5))
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(attention_transfer_loss(teacher, student)),
        reference.attention_transfer(pooled(teacher, 2), student),
        rtol=1e-5,
    )
    # The student's map is the larger one: it is the one pooled.
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(attention_transfer_loss(student, teacher)),
        reference.attention_transfer(student, pooled(teacher, 2)),
        rtol=1e-5,
    )
    same_width = RNG.random((2, 2, 2, 3))
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(hint_loss(teacher, same_width)),
        reference.hint(pooled(teacher, 2), same_width),
        rtol=1e-5,
    )


def test_attention_transfer_rejects_sizes_that_do_not_divide():
    with pytest.raises(ValueError, match=r"divide.*\(4, 4\).*\(3, 3\)"):
        attention_transfer_loss(np.ones((1, 4, 4, 2)), np.ones((1, 3, 3, 2)))
    with pytest.raises(ValueError, match="4-D NHWC"):
        attention_transfer_loss(np.ones((1, 4)), np.ones((1, 4)))


# --- Models: Functional, Sequential, subclassed ------------------------------


def teacher_model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input(IMAGE)
    conv = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="t_conv")(
        inputs
    )
    flat = keras.layers.Flatten(name="t_flat")(conv)
    hidden = keras.layers.Dense(8, activation="relu", name="t_hidden")(flat)
    logits = keras.layers.Dense(CLASSES, name="t_logits")(hidden)
    return keras.Model(inputs, logits, name="teacher")


def student_layers(strides=1):
    return [
        keras.layers.Conv2D(
            2, 3, strides, padding="same", activation="relu", name="s_conv"
        ),
        keras.layers.Flatten(name="s_flat"),
        keras.layers.Dense(4, activation="relu", name="s_hidden"),
        keras.layers.Dense(CLASSES, name="s_logits"),
    ]


class SubclassedStudent(keras.Model):
    """Implements the feature protocol: one pass, logits and named features."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.conv, self.flat, self.hidden, self.head = student_layers()

    def call_with_features(self, inputs, training=False):
        conv = self.conv(inputs)
        hidden = self.hidden(self.flat(conv))
        return self.head(hidden), {"s_conv": conv, "s_hidden": hidden}

    def call(self, inputs, training=False):
        return self.call_with_features(inputs, training)[0]


class StridedSubclassedStudent(SubclassedStudent):
    """Its `s_conv` output is 3x3, the teacher's `t_conv` 6x6."""

    def __init__(self, **kwargs):
        keras.Model.__init__(self, **kwargs)
        self.conv, self.flat, self.hidden, self.head = student_layers(strides=2)


class PlainSubclassedStudent(SubclassedStudent):
    call_with_features = None

    def call(self, inputs, training=False):
        return self.head(self.hidden(self.flat(self.conv(inputs))))


def make_student(kind, seed=1):
    keras.utils.set_random_seed(seed)
    if kind == "functional":
        inputs = keras.Input(IMAGE)
        outputs = inputs
        for layer in student_layers():
            outputs = layer(outputs)
        return keras.Model(inputs, outputs, name="student")
    if kind == "sequential":
        return keras.Sequential([keras.Input(IMAGE), *student_layers()], name="student")
    classes = {
        "subclassed": SubclassedStudent,
        "strided": StridedSubclassedStudent,
        "plain": PlainSubclassedStudent,
    }
    model = classes[kind](name="student")
    model(X[:1])
    return model


def values(variables):
    return [np.array(v) for v in variables]


def assert_all_equal(before, after):
    assert len(before) == len(after)
    assert all(np.array_equal(a, b) for a, b in zip(before, after))


COMBINATIONS = {
    "hint+KD": (lambda: [HintLoss("t_hidden", "s_hidden")], None, 1),
    "conv hint+KD": (lambda: [HintLoss("t_conv", "s_conv")], None, 1),
    "AT+KD": (lambda: [AttentionTransfer("t_conv", "s_conv")], None, 0),
    "RKD+KD": (lambda: [RKD("t_hidden", "s_hidden")], None, 0),
    "SP+DKD": (
        lambda: [SimilarityPreserving("t_hidden", "s_hidden")],
        DKD(beta=2.0),
        0,
    ),
    "all": (
        lambda: [
            HintLoss("t_hidden", "s_hidden", weight=0.5),
            AttentionTransfer("t_conv", "s_conv"),
            RKD(),  # on the logits
            SimilarityPreserving("t_hidden", "s_hidden", weight=100.0),
            HintLoss("t_conv", "s_conv", weight=0.1),
        ],
        None,
        2,
    ),
}


def distill(kind, feature_losses, distillation_loss_fn=None, run_eagerly=False):
    teacher, student = teacher_model(), make_student(kind)
    distiller = keras_kd.Distiller(student=student, teacher=teacher)
    distiller.compile(
        optimizer=keras.optimizers.Adam(0.01),
        alpha=0.5,
        distillation_loss_fn=distillation_loss_fn,
        feature_losses=feature_losses,
        run_eagerly=run_eagerly,
    )
    return distiller


def check_training(distiller, adapters, epochs=2):
    """Fits; asserts the teacher is frozen, the student and adapters learn."""
    teacher_before = values(distiller.teacher.variables)
    student_before = values(distiller.student.trainable_variables)
    history = distiller.fit(X, Y, batch_size=8, epochs=epochs, verbose=0)
    assert len(distiller.feature_adapters) == adapters
    assert_all_equal(teacher_before, values(distiller.teacher.variables))
    student_after = values(distiller.student.trainable_variables)
    assert not any(np.array_equal(a, b) for a, b in zip(student_before, student_after))
    for loss in distiller.feature_losses:
        assert np.all(np.isfinite(history.history[loss.name])), loss.name
    assert np.all(np.isfinite(history.history["loss"]))
    # The adapters train with the student but are not part of it.
    student_ids = {id(v) for v in distiller.student.variables}
    for adapter in distiller.feature_adapters.values():
        assert not any(id(v) in student_ids for v in adapter.variables)
    return history


@pytest.mark.parametrize("name", [name for name in COMBINATIONS if name != "all"])
def test_each_combination_trains_functional_student(name):
    # Eager, to skip seconds of tracing per case; the next test runs `all`
    # through `tf.function` with every model kind.
    losses, distillation_loss_fn, adapters = COMBINATIONS[name]
    distiller = distill("functional", losses(), distillation_loss_fn, run_eagerly=True)
    initial = {
        key: values(adapter.variables)
        for key, adapter in distiller.feature_adapters.items()
    }
    check_training(distiller, adapters)
    for key, before in initial.items():
        after = values(distiller.feature_adapters[key].variables)
        assert not any(np.array_equal(a, b) for a, b in zip(before, after)), key


@pytest.mark.parametrize("kind", ["functional", "sequential", "subclassed"])
def test_all_losses_at_once_with_every_model_kind_and_export(kind, tmp_path):
    losses, _, adapters = COMBINATIONS["all"]
    distiller = distill(kind, losses())
    if kind == "subclassed":
        # Subclassed shapes are only known from data: built by `fit`'s probe.
        assert not distiller.feature_adapters
    check_training(distiller, adapters)
    kinds = sorted(type(a).__name__ for a in distiller.feature_adapters.values())
    assert kinds == ["Conv2D", "Dense"]

    if kind == "subclassed" and keras.backend.backend() != "tensorflow":
        return  # off TensorFlow, export loads the student in a TensorFlow
        # process, which cannot import a class defined inside a test
    signature = [tf.TensorSpec((None, *IMAGE), "float32")]
    result = keras_kd.export_student(
        distiller,
        tmp_path,
        formats="saved_model",
        verify_data=X,
        input_signature=signature if kind == "subclassed" else None,
    )
    loaded = tf.saved_model.load(result.saved_model)
    student = distiller.student
    assert len(loaded.variables) == len(student.variables)
    assert sum(int(np.prod(v.shape)) for v in loaded.variables) == (
        student.count_params()
    )
    assert not any("adapter" in v.name for v in loaded.variables)
    assert not any("adapter" in v.path for v in student.variables)
    adapter_params = sum(a.count_params() for a in distiller.feature_adapters.values())
    assert adapter_params > 0


def test_total_loss_is_the_documented_weighted_sum():
    """One frozen step: logs equal the formula, computed by hand in numpy."""
    alpha, temperature, hint_weight, sp_weight = 0.3, 2.0, 0.5, 2.0
    teacher, student = teacher_model(), make_student("functional")
    distiller = keras_kd.Distiller(student=student, teacher=teacher)
    distiller.compile(
        optimizer=keras.optimizers.SGD(0.0),
        alpha=alpha,
        temperature=temperature,
        feature_losses=[
            HintLoss("t_hidden", "s_hidden", weight=hint_weight),
            SimilarityPreserving("t_hidden", "s_hidden", weight=sp_weight),
        ],
    )
    weight = RNG.random(len(X)).astype("float32")
    logs = distiller.fit(
        X, Y, sample_weight=weight, batch_size=len(X), shuffle=False, verbose=0
    ).history

    def layer_output(model, name):
        view = keras.Model(model.inputs[0], model.get_layer(name).output)
        return keras.ops.convert_to_numpy(view(X)).astype("float64")

    t_hidden, s_hidden = (
        layer_output(teacher, "t_hidden"),
        layer_output(student, "s_hidden"),
    )
    adapted = keras.ops.convert_to_numpy(
        distiller.feature_adapters["feature_adapter_0"](s_hidden)
    )
    t_logits = keras.ops.convert_to_numpy(teacher(X))
    s_logits = keras.ops.convert_to_numpy(student(X))
    label = [reference.cross_entropy(y, s) for y, s in zip(Y, s_logits)]
    kd = [reference.kd(t, s, temperature) for t, s in zip(t_logits, s_logits)]
    hint = reference.hint(t_hidden, adapted)
    sp = reference.similarity_preserving(t_hidden, s_hidden)
    b = len(X)
    expected = (
        alpha * np.sum(label * weight)
        + (1 - alpha) * np.sum(kd * weight)
        + hint_weight * np.sum(hint * weight)
    ) / b + sp_weight * sp
    assert logs["hint_loss"][-1] == pytest.approx(np.sum(hint * weight) / b, rel=1e-4)
    assert logs["similarity_preserving"][-1] == pytest.approx(sp, rel=1e-4)
    assert logs["loss"][-1] == pytest.approx(expected, rel=1e-4)


def test_attention_transfer_default_weight_is_1000_on_the_mean():
    """RepDistiller's and mdistiller's convention: `1000 * mean_j (Q_s - Q_t)²`."""
    assert AttentionTransfer().weight == 1000.0
    teacher, student = teacher_model(), make_student("functional")
    distiller = keras_kd.Distiller(student=student, teacher=teacher)
    distiller.compile(
        optimizer=keras.optimizers.SGD(0.0),
        alpha=0.5,
        temperature=1.0,
        feature_losses=[AttentionTransfer("t_conv", "s_conv")],
    )
    logs = distiller.fit(X, Y, batch_size=len(X), shuffle=False, verbose=0).history

    def layer_output(model, name):
        view = keras.Model(model.inputs[0], model.get_layer(name).output)
        return keras.ops.convert_to_numpy(view(X)).astype("float64")

    at = reference.attention_transfer(
        layer_output(teacher, "t_conv"), layer_output(student, "s_conv")
    ).mean()
    t_logits = keras.ops.convert_to_numpy(teacher(X))
    s_logits = keras.ops.convert_to_numpy(student(X))
    label = np.mean([reference.cross_entropy(y, s) for y, s in zip(Y, s_logits)])
    kd = np.mean([reference.kd(t, s, 1.0) for t, s in zip(t_logits, s_logits)])
    assert logs["attention_transfer"][-1] == pytest.approx(at, rel=1e-4)
    expected = 0.5 * label + 0.5 * kd + 1000.0 * at
    assert logs["loss"][-1] == pytest.approx(expected, rel=1e-4)


# --- Errors, early -----------------------------------------------------------


def compile_with(feature_losses, kind="functional"):
    distiller = keras_kd.Distiller(student=make_student(kind), teacher=teacher_model())
    distiller.compile(optimizer="adam", feature_losses=feature_losses)
    return distiller


def test_unknown_layer_name_lists_the_layers():
    with pytest.raises(ValueError, match=r"no layer named 's_nope'.*'s_hidden'"):
        compile_with([HintLoss("t_hidden", "s_nope")])
    with pytest.raises(ValueError, match=r"teacher 'teacher' has no layer.*'t_conv'"):
        compile_with([RKD("t_nope", "s_hidden")], kind="sequential")


def test_subclassed_protocol_errors():
    with pytest.raises(ValueError, match="call_with_features"):
        compile_with([HintLoss("t_hidden", "s_hidden")], kind="plain")
    # Relation losses on the logits need no protocol.
    compile_with([RKD()], kind="plain").fit(X, Y, batch_size=8, verbose=0)
    distiller = compile_with([HintLoss("t_hidden", "s_nope")], kind="subclassed")
    with pytest.raises(ValueError, match=r"no features named 's_nope'.*'s_conv'"):
        distiller.fit(X, Y, batch_size=8, verbose=0)


def student_with_conv(**conv_kwargs):
    keras.utils.set_random_seed(1)
    inputs = keras.Input(IMAGE)
    outputs = keras.layers.Conv2D(2, 3, name="s_conv", **conv_kwargs)(inputs)
    for layer in student_layers()[1:]:
        outputs = layer(outputs)
    return keras.Model(inputs, outputs)


def test_strided_student_maps_are_compared_pooled_and_others_rejected():
    # A strided student conv: 3x3 against the teacher's 6x6, pooled 2x2.
    strided = student_with_conv(strides=2, padding="same")
    distiller = keras_kd.Distiller(student=strided, teacher=teacher_model())
    distiller.compile(
        optimizer="adam",
        feature_losses=[
            AttentionTransfer("t_conv", "s_conv"),
            HintLoss("t_conv", "s_conv"),
        ],
    )
    logs = distiller.fit(X, Y, batch_size=8, verbose=0).history
    assert np.isfinite(logs["attention_transfer"][0]) and logs["hint_loss"][0] > 0
    # The same for a subclassed student, whose shapes are known from data.
    subclassed = compile_with([AttentionTransfer("t_conv", "s_conv")], "strided")
    logs = subclassed.fit(X, Y, batch_size=8, verbose=0).history
    assert np.isfinite(logs["attention_transfer"][0])
    # A 'valid' 3x3 conv: 4x4 against 6x6, which do not divide. Functional
    # models fail at compile, subclassed ones on the first batch of `fit`.
    valid = student_with_conv(padding="valid")
    with pytest.raises(ValueError, match=r"divide.*\(6, 6\).*\(4, 4\)"):
        keras_kd.Distiller(student=valid, teacher=teacher_model()).compile(
            feature_losses=[AttentionTransfer("t_conv", "s_conv")]
        )
    with pytest.raises(ValueError, match=r"divide.*\(6, 6\).*\(4, 4\)"):
        keras_kd.Distiller(student=valid, teacher=teacher_model()).compile(
            feature_losses=[HintLoss("t_conv", "s_conv")]
        )


def test_shapes_no_adapter_can_fix_are_rejected():
    with pytest.raises(ValueError, match=r"width 8 differs from student width 4"):
        compile_with([HintLoss("t_hidden", "s_hidden", adapter=False)])
    with pytest.raises(ValueError, match=r"\(None, 6, 6, 4\).*\(None, 4\).*cannot"):
        compile_with([HintLoss("t_conv", "s_hidden")])


def test_feature_losses_reject_a_teacher_logits_cache():
    distiller = compile_with([HintLoss("t_hidden", "s_hidden")])
    logits = keras_kd.cache_teacher_outputs(distiller.teacher, X)
    with pytest.raises(ValueError, match="`teacher_logits` cannot be combined with"):
        distiller.fit(X, Y, teacher_logits=logits, verbose=0)
    dataset = tf.data.Dataset.from_tensor_slices((X, Y)).batch(8)
    cached = keras_kd.cache_teacher_outputs(distiller.teacher, dataset).batch(8)
    with pytest.raises(ValueError, match="cached teacher logits cannot be combined"):
        distiller.fit(cached, verbose=0)


def test_feature_losses_must_be_feature_losses():
    with pytest.raises(ValueError, match="`feature_losses` must be"):
        compile_with(["mse"])
    with pytest.raises(ValueError, match="`feature_losses` must be"):
        compile_with([keras_kd.KDLoss()])


# --- Saving, mixed precision, distribution ------------------------------------


def test_keras_file_round_trip_restores_losses_and_adapters(tmp_path):
    losses = [
        HintLoss("t_hidden", "s_hidden", weight=0.5),
        HintLoss("t_conv", "s_conv", weight=0.1),
        SimilarityPreserving(weight=10.0),
    ]
    distiller = distill("functional", losses, run_eagerly=True)
    distiller.fit(X, Y, batch_size=8, verbose=0)
    path = str(tmp_path / "distiller.keras")
    distiller.save(path)
    restored = keras.saving.load_model(path)
    assert [type(loss) for loss in restored.feature_losses] == [
        type(loss) for loss in distiller.feature_losses
    ]
    assert [loss.get_config() for loss in restored.feature_losses] == [
        loss.get_config() for loss in distiller.feature_losses
    ]
    assert list(restored.feature_adapters) == list(distiller.feature_adapters)
    for key, adapter in distiller.feature_adapters.items():
        assert_all_equal(
            values(adapter.variables), values(restored.feature_adapters[key].variables)
        )
    # Training resumes: the restored optimizer knows the adapters' variables.
    restored.fit(X, Y, batch_size=8, verbose=0)

    # A subclassed student's adapters (built from data) travel in the config.
    subclassed = distill("subclassed", [HintLoss("t_hidden", "s_hidden")])
    subclassed.check_transfer_data(X)
    fresh = keras_kd.Distiller(
        student=make_student("subclassed"), teacher=teacher_model()
    )
    fresh.compile_from_config(subclassed.get_compile_config())
    assert list(fresh.feature_adapters) == ["feature_adapter_0"]
    assert fresh.feature_adapters["feature_adapter_0"].kernel.shape == (4, 8)


def test_mixed_precision_computes_feature_losses_in_float32():
    def frozen_logs(policy):
        keras.mixed_precision.set_global_policy(policy)
        try:
            distiller = keras_kd.Distiller(
                student=make_student("functional"), teacher=teacher_model()
            )
            distiller.compile(
                optimizer=keras.optimizers.SGD(0.0),
                feature_losses=[
                    HintLoss("t_conv", "s_conv"),
                    AttentionTransfer("t_conv", "s_conv"),
                    RKD("t_hidden", "s_hidden"),
                ],
            )
            adapter = distiller.feature_adapters["feature_adapter_0"]
            assert adapter.compute_dtype == "float32"
            history = distiller.fit(X, Y, batch_size=len(X), verbose=0).history
            return {key: value[-1] for key, value in history.items()}
        finally:
            keras.mixed_precision.set_global_policy("float32")

    full, mixed = frozen_logs("float32"), frozen_logs("mixed_float16")
    for key in ("hint_loss", "attention_transfer", "rkd", "loss"):
        assert np.isfinite(mixed[key])
        assert mixed[key] == pytest.approx(full[key], rel=2e-2), key


DISTRIBUTED = textwrap.dedent(
    """
    import sys
    import numpy as np
    import tensorflow as tf

    (cpu,) = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(2)]
    )
    import keras
    import keras_kd
    from tests import test_features as t
    from keras_kd.losses import HintLoss, SimilarityPreserving

    def run(strategy, losses, lr):
        with strategy.scope():
            distiller = keras_kd.Distiller(
                student=t.make_student("functional"), teacher=t.teacher_model()
            )
            distiller.compile(
                optimizer=keras.optimizers.SGD(lr), alpha=0.5, feature_losses=losses
            )
        w = np.linspace(0.5, 1.5, len(t.X)).astype("float32")
        logs = distiller.fit(
            t.X, t.Y, sample_weight=w, batch_size=8, shuffle=False, verbose=0
        ).history
        weights = [np.array(v) for v in distiller.student.trainable_variables]
        adapters = keras_kd.features.trainable_variables(distiller.feature_adapters)
        weights += [np.array(v) for v in adapters]
        return logs, weights

    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    default = tf.distribute.get_strategy()
    hint = lambda: [HintLoss("t_hidden", "s_hidden", weight=2.0)]
    (one_logs, one), (two_logs, two) = run(default, hint(), 0.1), run(
        mirrored, hint(), 0.1
    )
    for a, b in zip(one, two):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # Batch-level terms: each replica's half-batch value, averaged.
    sp = lambda: [SimilarityPreserving("t_hidden", "s_hidden", weight=1.0)]
    logs, _ = run(mirrored, sp(), 0.0)
    teacher, student = t.teacher_model(), t.make_student("functional")
    def hidden(model, name, x):
        return np.asarray(keras.Model(model.inputs[0], model.get_layer(name).output)(x))
    halves = [
        t.reference.similarity_preserving(
            hidden(teacher, "t_hidden", t.X[i : i + 4]),
            hidden(student, "s_hidden", t.X[i : i + 4]),
        )
        for i in range(0, len(t.X), 4)
    ]
    np.testing.assert_allclose(
        logs["similarity_preserving"][-1], np.mean(halves), rtol=1e-4
    )
    print("OK")
    """
)


@pytest.mark.tensorflow_only
def test_mirrored_strategy_reduces_feature_terms_over_the_global_batch():
    """Hints train as on one device; batch terms average the replicas' halves."""
    process = subprocess.run(
        [sys.executable, "-c", DISTRIBUTED],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert process.returncode == 0 and process.stdout.strip().endswith("OK"), (
        process.stdout[-2000:] + process.stderr[-4000:]
    )

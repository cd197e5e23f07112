"""Feature layers by path inside nested models (issue #15)."""

import keras
import numpy as np
import pytest

import keras_kd
from keras_kd import _layer_paths
from keras_kd.losses import AttentionTransfer, HintLoss, hint_loss

X = np.random.default_rng(0).uniform(size=(4, 8, 8, 3)).astype("float32")


def backbone(name, filters=(4, 6)):
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(filters[0], 3, padding="same", name="conv_a")(inputs)
    x = keras.layers.Conv2D(filters[1], 3, 2, padding="same", name="conv_b")(x)
    return keras.Model(inputs, x, name=name)


def classifier(inner, name="outer"):
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.GlobalAveragePooling2D(name="pool")(inner(inputs))
    return keras.Model(inputs, keras.layers.Dense(5, name="logits")(x), name=name)


def view_of(model, paths):
    inputs, outputs, tensors = _layer_paths.feature_tensors(model, paths)
    return keras.Model(inputs[0], [outputs[0], *(tensors[p] for p in paths)])


def inner_output(model, layer_name, x):
    layer_model = keras.Model(model.inputs[0], model.get_layer(layer_name).output)
    return keras.ops.convert_to_numpy(layer_model(x))


def test_layer_paths_list_nested_layers_at_every_depth():
    mid_inputs = keras.Input((8, 8, 3))
    mid = keras.Model(mid_inputs, backbone("inner")(mid_inputs), name="mid")
    model = classifier(mid)
    paths = _layer_paths.layer_paths(model)
    assert "mid/inner/conv_a" in paths and "mid/inner" in paths and "pool" in paths
    assert paths.index("mid") < paths.index("mid/inner/conv_b") < paths.index("pool")


@pytest.mark.parametrize("kind", ["functional", "sequential"])
def test_nested_features_are_the_inner_layers_outputs_on_the_outer_inputs(kind):
    inner = backbone("backbone")
    if kind == "functional":
        model = classifier(inner)
    else:
        model = keras.Sequential(
            [
                keras.Input((8, 8, 3)),
                inner,
                keras.layers.Flatten(),
                keras.layers.Dense(5),
            ]
        )
    view = view_of(model, ["backbone/conv_a", "backbone/conv_b"])
    logits, conv_a, conv_b = (keras.ops.convert_to_numpy(t) for t in view(X))
    np.testing.assert_allclose(logits, keras.ops.convert_to_numpy(model(X)), atol=1e-6)
    np.testing.assert_allclose(conv_a, inner_output(inner, "conv_a", X), atol=1e-6)
    np.testing.assert_allclose(conv_b, inner_output(inner, "conv_b", X), atol=1e-6)
    # The backbone runs once, through its view: it is not also in the graph.
    assert inner not in view.layers
    assert [layer.name for layer in view.layers].count("backbone_view") == 1
    assert len(view.trainable_weights) == len(model.trainable_weights)


def test_two_levels_deep_and_a_top_level_layer_together():
    mid_inputs = keras.Input((8, 8, 3))
    inner = backbone("inner")
    mid = keras.Model(mid_inputs, inner(mid_inputs), name="mid")
    model = classifier(mid)
    _, conv_a, pooled = view_of(model, ["mid/inner/conv_a", "pool"])(X)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(conv_a), inner_output(inner, "conv_a", X), atol=1e-6
    )
    expected = np.mean(inner_output(inner, "conv_b", X), axis=(1, 2))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(pooled), expected, atol=1e-6)


def test_a_nested_model_with_several_outputs_keeps_its_structure():
    inputs = keras.Input((8, 8, 3))
    a = keras.layers.Conv2D(2, 1, name="a")(inputs)
    b = keras.layers.Conv2D(3, 1, name="b")(inputs)
    twin = keras.Model(inputs, [a, b], name="twin")
    outer_inputs = keras.Input((8, 8, 3))
    first, second = twin(outer_inputs)
    merged = keras.layers.Concatenate(name="merged")([first, second])
    model = keras.Model(outer_inputs, keras.layers.Flatten()(merged))
    out, feature = view_of(model, ["twin/b"])(X)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(out), keras.ops.convert_to_numpy(model(X)), atol=1e-6
    )
    assert tuple(feature.shape) == (4, 8, 8, 3)


def test_a_layer_called_twice_in_a_replayed_graph_is_rejected():
    inner = backbone("backbone")
    shared = keras.layers.Dense(6, name="shared")
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.GlobalAveragePooling2D()(inner(inputs))
    model = keras.Model(inputs, shared(keras.layers.Dense(6)(shared(x))))
    with pytest.raises(ValueError, match="'shared' is called more than once"):
        _layer_paths.feature_tensors(model, ["backbone/conv_a", "shared"])


def pair(teacher_filters=(8, 12), student_filters=(4, 6)):
    teacher = classifier(backbone("backbone", teacher_filters), "teacher")
    student = classifier(backbone("backbone", student_filters), "student")
    return teacher, student


def test_unknown_path_error_lists_the_valid_paths():
    teacher, student = pair()
    distiller = keras_kd.Distiller(student=student, teacher=teacher)
    with pytest.raises(
        ValueError, match=r"no layer named 'backbone/nope'.*'backbone/conv_a'"
    ):
        distiller.compile(feature_losses=[HintLoss("backbone/nope", "backbone/conv_a")])


def test_a_nested_hint_is_the_formula_on_the_inner_layers():
    teacher, student = pair((4, 6), (4, 6))  # equal widths: no adapter
    distiller = keras_kd.Distiller(student=student, teacher=teacher)
    loss = HintLoss("backbone/conv_b", "backbone/conv_b", adapter=False)
    distiller.compile(optimizer="adam", feature_losses=[loss])
    plan = distiller._feature_plan
    _, teacher_features = plan.teacher(X, training=False)
    _, student_features = plan.student(X, training=False)
    value = plan.values(teacher_features, student_features, {})[0]
    expected = hint_loss(
        inner_output(teacher.get_layer("backbone"), "conv_b", X),
        inner_output(student.get_layer("backbone"), "conv_b", X),
    )
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(value),
        keras.ops.convert_to_numpy(expected),
        rtol=1e-5,
    )


def test_nested_hints_and_attention_train_and_leave_the_teacher_unchanged():
    teacher, student = pair()
    teacher_weights = [w.copy() for w in teacher.get_weights()]
    distiller = keras_kd.Distiller(student=student, teacher=teacher)
    distiller.compile(
        optimizer="adam",
        feature_losses=[
            HintLoss("backbone/conv_b", "backbone/conv_b"),
            AttentionTransfer("backbone/conv_a", "backbone/conv_a"),
        ],
    )
    history = distiller.fit(X, np.arange(4) % 5, epochs=5, batch_size=4, verbose=0)
    hints = history.history["hint_loss"]
    assert hints[-1] < hints[0]
    for before, after in zip(teacher_weights, teacher.get_weights()):
        np.testing.assert_array_equal(before, after)


def test_a_keras_applications_backbone_inside_a_functional_teacher():
    base = keras.applications.MobileNetV3Small(
        input_shape=(32, 32, 3),
        weights=None,
        include_top=False,
        minimalistic=True,
        include_preprocessing=False,
    )
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.GlobalAveragePooling2D()(base(inputs))
    teacher = keras.Model(inputs, keras.layers.Dense(5)(x), name="teacher")
    student_inputs = keras.Input((32, 32, 3))
    h = keras.layers.Conv2D(8, 3, strides=4, padding="same", name="s_conv")(
        student_inputs
    )
    s = keras.layers.Dense(5)(keras.layers.GlobalAveragePooling2D()(h))
    student = keras.Model(student_inputs, s, name="student")
    path = f"{base.name}/expanded_conv_2_add"  # 4x4x24 at 32x32 inputs
    distiller = keras_kd.Distiller(student=student, teacher=teacher)
    distiller.compile(optimizer="adam", feature_losses=[HintLoss(path, "s_conv")])
    images = np.random.default_rng(1).uniform(size=(4, 32, 32, 3)).astype("float32")
    _, features = distiller._feature_plan.teacher(images, training=False)
    expected = inner_output(base, "expanded_conv_2_add", images)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(features[path]), expected, rtol=1e-4, atol=1e-5
    )
    history = distiller.fit(images, np.arange(4) % 5, epochs=1, verbose=0)
    assert np.isfinite(history.history["hint_loss"][0])

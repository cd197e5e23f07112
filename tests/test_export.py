"""Tests for keras_kd.deploy: SavedModel and TFLite export of the student.

The module trains one small student on the bundled real MNIST (3 epochs on
5,000 images, a few seconds) and exports it once, in every quantization mode,
from a `Distiller` whose teacher is 20x larger. The parity tests run the
`.tflite` files with the LiteRT interpreter directly (not through
keras_kd's own helpers) on the real MNIST test images.
"""

import os
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_kd
from keras_kd.datasets import load_mnist
from keras_kd.deploy import errors, export, litert, report, saved_model
from keras_kd.models import mnist_cnn, mnist_mlp

Interpreter = pytest.importorskip("ai_edge_litert.interpreter").Interpreter

TOLERANCES = {"float32": 1e-4, "float16": 2e-3}
# Flatbuffer/graph overhead on top of the weights, measured: ~4-6 KB for the
# .tflite files and ~130 KB for the SavedModel of this student.
TFLITE_OVERHEAD = 32 * 1024
SAVED_MODEL_OVERHEAD = 512 * 1024
BYTES_PER_WEIGHT = {"float32": 4, "float16": 2, "dynamic_range": 1, "int8": 1}


@pytest.fixture(scope="module")
def mnist():
    return load_mnist()


@pytest.fixture(scope="module")
def distiller(mnist):
    (x_train, y_train), _ = mnist
    keras.utils.set_random_seed(0)
    student = mnist_cnn(filters=(16, 32), name="student")
    student.compile(
        optimizer=keras.optimizers.Adam(),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    student.fit(x_train, y_train, epochs=3, batch_size=64, verbose=0)
    # The teacher is never trained here: export must not depend on it at all.
    teacher = mnist_cnn(filters=(128, 256), name="teacher")
    return keras_kd.Distiller(student=student, teacher=teacher)


@pytest.fixture(scope="module")
def exported(distiller, mnist, tmp_path_factory):
    (x_train, _), (x_test, _) = mnist
    return export.export_student(
        distiller,
        tmp_path_factory.mktemp("export"),
        quantization=litert.QUANTIZATIONS,
        representative_data=x_train[:500],
        verify_data=x_test,
    )


@pytest.fixture(scope="module")
def keras_logits(distiller, mnist):
    _, (x_test, _) = mnist
    return distiller.student.predict(x_test, batch_size=1000, verbose=0)


def _run_litert(path, x):
    """Runs a .tflite file on `x` with the LiteRT interpreter, dequantizing."""
    interpreter = Interpreter(model_path=path)
    (detail,) = interpreter.get_input_details()
    interpreter.resize_tensor_input(detail["index"], x.shape)
    interpreter.allocate_tensors()
    (detail,) = interpreter.get_input_details()
    (output,) = interpreter.get_output_details()
    if detail["dtype"] == np.int8:
        scale, zero_point = detail["quantization"]
        x = np.clip(np.round(x / scale) + zero_point, -128, 127).astype(np.int8)
    interpreter.set_tensor(detail["index"], x)
    interpreter.invoke()
    y = interpreter.get_tensor(output["index"])
    if output["dtype"] == np.int8:
        scale, zero_point = output["quantization"]
        y = (y.astype(np.float32) - zero_point) * scale
    return y


def _dense_model(name="dense"):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)], name=name)
    model.set_weights(
        [np.array([[1.0, 2.0], [3.0, 4.0]], "float32"), np.array([0.5, -0.5])]
    )
    return model


# Hand-computed numbers.


def test_tflite_predict_hand_computed_dense():
    # [1, 1] @ [[1, 2], [3, 4]] + [0.5, -0.5] = [4.5, 5.5]
    # [0, 2] @ [[1, 2], [3, 4]] + [0.5, -0.5] = [6.5, 7.5]
    tflite_bytes = litert.convert_to_tflite(_dense_model())
    outputs = litert.tflite_predict(tflite_bytes, np.array([[1.0, 1.0], [0.0, 2.0]]))
    np.testing.assert_allclose(outputs, [[4.5, 5.5], [6.5, 7.5]], atol=1e-6)


def test_quantize_and_dequantize_hand_computed():
    # x / 0.5 = [0, 2, 2.8, 200, -200] -> round [0, 2, 3, 200, -200] - 3,
    # clipped to int8: [-3, -1, 0, 127, -128].
    q = litert.quantize_values([0.0, 1.0, 1.4, 100.0, -100.0], 0.5, -3, np.int8)
    np.testing.assert_array_equal(q, [-3, -1, 0, 127, -128])
    assert q.dtype == np.int8
    # (q + 3) * 0.5
    np.testing.assert_allclose(litert._dequantize([-3, -1, 127], 0.5, -3), [0, 1, 65])


def test_format_report_hand_written_row():
    row = {
        "model": "student",
        "parameters": 20490,
        "saved_model_kb": 208.87,
        "tflite_float32_kb": 83.55,
        "tflite_int8_kb": None,
        "keras_ms": 0.51234,
        "litert_float32_ms": 0.0345,
        "litert_int8_ms": None,
        "accuracy": 0.91,
        "accuracy_int8": None,
        "int8_agreement": None,
    }
    lines = report.format_report([row]).splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("| Model | Params | SavedModel KB |")
    assert lines[2] == (
        "| student | 20,490 | 208.9 | 83.5 | - | 0.512 | 0.035 | - | 0.9100 | - | - |"
    )


# SavedModel.


def test_saved_model_round_trip(exported, distiller, mnist):
    _, (x_test, _) = mnist
    loaded = tf.saved_model.load(exported.saved_model)
    signature = loaded.signatures["serving_default"]
    (input_name,) = signature.structured_input_signature[1]
    x = x_test[:1000]
    outputs = signature(**{input_name: tf.constant(x)})
    (logits,) = outputs.values()
    expected = distiller.student.predict(x, verbose=0)
    # Off TensorFlow the student was trained on another backend, whose float32
    # convolutions differ from TensorFlow's in the last digits.
    atol = 1e-5 if keras.backend.backend() == "tensorflow" else 1e-4
    np.testing.assert_allclose(logits.numpy(), expected, atol=atol, rtol=0)
    np.testing.assert_allclose(loaded.serve(x).numpy(), expected, atol=atol, rtol=0)
    assert exported.verification["saved_model"]["max_abs_diff"] <= atol


@pytest.mark.tensorflow_only
def test_saved_model_holds_student_variables_only(exported, distiller):
    student, teacher = distiller.student, distiller.teacher
    assert teacher.count_params() > 10 * student.count_params()
    loaded = tf.saved_model.load(exported.saved_model)
    names = sorted(v.name.split(":")[0] for v in loaded.variables)
    assert names == sorted(v.path for v in student.variables)
    assert not any(name.startswith(teacher.name + "/") for name in names)
    assert sum(int(np.prod(v.shape)) for v in loaded.variables) == (
        student.count_params()
    )
    assert exported.parameters == student.count_params()
    reader = tf.train.load_checkpoint(
        os.path.join(exported.saved_model, "variables", "variables")
    )
    shapes = reader.get_variable_to_shape_map()
    teacher_shapes = {tuple(v.shape) for v in teacher.variables}
    student_shapes = {tuple(v.shape) for v in student.variables}
    stored = {tuple(shape) for key, shape in shapes.items() if "GRAPH" not in key}
    assert stored == student_shapes
    assert not (teacher_shapes - student_shapes) & stored


def test_saved_model_size_tracks_student_not_teacher(exported, distiller):
    student_bytes = 4 * distiller.student.count_params()
    teacher_bytes = 4 * distiller.teacher.count_params()
    size = exported.sizes["saved_model"]
    assert size == saved_model.directory_size(exported.saved_model)
    assert student_bytes <= size <= student_bytes + SAVED_MODEL_OVERHEAD
    # The bound above can catch a leaked teacher: its weights alone exceed it.
    assert teacher_bytes > student_bytes + SAVED_MODEL_OVERHEAD


@pytest.mark.parametrize("mode", litert.QUANTIZATIONS)
def test_tflite_size_tracks_student_not_teacher(exported, distiller, mode):
    weights = distiller.student.count_params() * BYTES_PER_WEIGHT[mode]
    size = os.path.getsize(exported.tflite[mode])
    assert size == exported.sizes[mode]
    assert weights <= size <= weights + TFLITE_OVERHEAD
    assert distiller.teacher.count_params() * BYTES_PER_WEIGHT[mode] > (
        weights + TFLITE_OVERHEAD
    )


@pytest.mark.tensorflow_only
def test_variable_check_catches_a_saved_model_with_the_teacher(distiller, tmp_path):
    # The trap export_student avoids: a SavedModel of the whole Distiller
    # tracks the teacher's variables, although `call` only runs the student.
    path = str(tmp_path / "distiller")
    distiller.export(
        path,
        format="tf_saved_model",
        verbose=False,
        input_signature=[tf.TensorSpec((None, 28, 28, 1), tf.float32)],
    )
    student, teacher = distiller.student, distiller.teacher
    with pytest.raises(errors.ExportVerificationError, match="teacher variables"):
        saved_model.check_saved_model_variables(path, student, teacher)
    with pytest.raises(errors.ExportVerificationError, match="not the student"):
        saved_model.check_saved_model_variables(path, student)
    with pytest.raises(errors.ExportVerificationError, match="none of the student"):
        saved_model._check_checkpoint_tensors(path, student, fix="")


# TFLite parity on real MNIST, checked independently of keras_kd's helpers.


@pytest.mark.parametrize("mode", ["float32", "float16"])
def test_tflite_float_parity(exported, keras_logits, mnist, mode):
    _, (x_test, _) = mnist
    logits = _run_litert(exported.tflite[mode], x_test)
    scale = max(1.0, np.abs(keras_logits).max())
    assert np.abs(logits - keras_logits).max() <= TOLERANCES[mode] * scale
    # float16 rounding may flip a near-tie; float32 must not.
    min_agreement = 1.0 if mode == "float32" else 0.999
    assert np.mean(logits.argmax(-1) == keras_logits.argmax(-1)) >= min_agreement
    figures = exported.verification[mode]
    assert figures["num_examples"] == len(x_test)
    assert figures["relative_diff"] <= TOLERANCES[mode]


@pytest.mark.parametrize("mode", ["dynamic_range", "int8"])
def test_tflite_quantized_top1_agreement(exported, keras_logits, mnist, mode):
    _, (x_test, _) = mnist
    logits = _run_litert(exported.tflite[mode], x_test)
    agreement = np.mean(logits.argmax(-1) == keras_logits.argmax(-1))
    assert agreement >= 0.99
    assert exported.verification[mode]["top1_agreement"] == pytest.approx(agreement)
    assert exported.verification[mode]["num_examples"] == len(x_test)


def test_int8_file_is_integer_only(exported):
    interpreter = Interpreter(model_path=exported.tflite["int8"])
    (input_detail,) = interpreter.get_input_details()
    (output_detail,) = interpreter.get_output_details()
    assert input_detail["dtype"] == np.int8
    assert output_detail["dtype"] == np.int8
    dtypes = {detail["dtype"] for detail in interpreter.get_tensor_details()}
    # int32 holds the biases; no float tensor may remain.
    assert dtypes <= {np.int8, np.int32}


def test_int8_with_float_io(distiller, mnist, keras_logits, tmp_path):
    (x_train, _), (x_test, _) = mnist
    result = export.export_student(
        distiller.student,
        tmp_path,
        formats="tflite",
        quantization="int8",
        representative_data=tf.data.Dataset.from_tensor_slices(x_train[:500]).batch(50),
        verify_data=x_test,
        int8_io="float32",
    )
    assert result.saved_model is None
    assert not os.path.exists(tmp_path / "saved_model")
    interpreter = Interpreter(model_path=result.tflite["int8"])
    assert interpreter.get_input_details()[0]["dtype"] == np.float32
    logits = _run_litert(result.tflite["int8"], x_test)
    assert np.mean(logits.argmax(-1) == keras_logits.argmax(-1)) >= 0.99


def test_verify_tflite_rejects_a_file_from_another_model(exported, distiller, mnist):
    _, (x_test, _) = mnist
    other = keras.models.clone_model(distiller.student)  # fresh random weights
    with pytest.raises(errors.ExportVerificationError, match="disagrees"):
        litert.verify_tflite(exported.tflite["float32"], other, x_test[:200])
    with pytest.raises(errors.ExportVerificationError, match="only"):
        litert.verify_tflite(
            exported.tflite["int8"], other, x_test[:200], quantization="int8"
        )


def test_verify_tflite_accepts_the_matching_file(exported, distiller, mnist):
    _, (x_test, _) = mnist
    figures = litert.verify_tflite(
        exported.tflite["float16"], distiller, x_test[:200], quantization="float16"
    )
    assert figures["num_examples"] == 200
    assert figures["relative_diff"] <= TOLERANCES["float16"]


def test_verify_tflite_reads_every_example_of_a_batched_dataset(
    exported, distiller, mnist
):
    # 10 batches of 20: `len` of the dataset is 10, the examples are 200.
    _, (x_test, _) = mnist
    batches = tf.data.Dataset.from_tensor_slices(x_test[:200]).batch(20)
    figures = litert.verify_tflite(exported.tflite["float32"], distiller, batches)
    assert figures["num_examples"] == 200


def test_export_without_data_warns_and_still_checks_variables(tmp_path):
    with pytest.warns(UserWarning, match="verify_data"):
        result = export.export_student(_dense_model(), tmp_path)
    assert result.verification == {"saved_model": {}, "float32": {}}
    assert os.path.getsize(result.tflite["float32"]) == result.sizes["float32"]


# Bad input.


def test_unbuilt_model_raises(tmp_path):
    model = keras.Sequential([keras.layers.Dense(3)])
    with pytest.raises(ValueError, match="not built.*keras.Input"):
        export.export_student(model, tmp_path / "out")
    assert not os.path.exists(tmp_path / "out")


def test_unwritable_directory_raises(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    for directory in (blocker, blocker / "export"):
        with pytest.raises(ValueError, match="not a writable directory"):
            export.export_student(_dense_model(), directory)


def test_int8_without_representative_data_raises(tmp_path):
    with pytest.raises(ValueError, match="representative_data"):
        export.export_student(_dense_model(), tmp_path / "out", quantization="int8")
    assert not os.path.exists(tmp_path / "out")
    with pytest.raises(ValueError, match="representative_data"):
        litert.convert_to_tflite(_dense_model(), quantization="int8")


def test_representative_data_of_wrong_shape_raises(tmp_path):
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        litert.convert_to_tflite(
            _dense_model(), "int8", representative_data=np.zeros((8, 3))
        )


@pytest.mark.tensorflow_only
def test_op_tflite_cannot_convert_raises(tmp_path):
    class Erfinv(keras.layers.Layer):
        def call(self, x):
            return tf.math.erfinv(x)

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), Erfinv()])
    with pytest.raises(errors.TFLiteConversionError, match="Erfinv.*SELECT_TF_OPS"):
        export.export_student(model, tmp_path)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"quantization": "int4"}, "int4"),
        ({"quantization": ()}, "quantization"),
        ({"formats": "onnx"}, "onnx"),
        ({"int8_io": "uint8"}, "uint8"),
    ],
)
def test_unknown_options_raise(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        export.export_student(_dense_model(), tmp_path / "out", **kwargs)
    assert not os.path.exists(tmp_path / "out")


def test_not_a_model_raises(tmp_path):
    with pytest.raises(ValueError, match="keras.Model"):
        export.export_student("student.keras", tmp_path)


def test_missing_litert_names_the_extra(monkeypatch):
    tflite_bytes = litert.convert_to_tflite(_dense_model())
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    with pytest.raises(ImportError, match=r"pip install keras-kd\[export\]"):
        litert.tflite_predict(tflite_bytes, np.zeros((1, 2)))
    with pytest.raises(ImportError, match=r"pip install keras-kd\[export\]"):
        keras_kd.export.require_litert()  # what examples call before they train


def test_export_and_report_stay_attributes_of_the_package():
    # Since 0.2 they live in keras_kd.deploy; the old attribute paths remain.
    assert keras_kd.export is export and keras_kd.report is report
    assert keras_kd.deploy.export_student is keras_kd.export_student


# Compression report.


def test_compression_report(distiller, mnist, tmp_path):
    (x_train, _), (x_test, y_test) = mnist
    x_test, y_test = x_test[:1000], y_test[:1000]
    scratch = distiller.student
    teacher = mnist_mlp(units=(256,), name="mlp_teacher")  # quick to quantize
    rows = report.compression_report(
        {"teacher": teacher, "distilled": distiller},
        x_test,
        y_test,
        representative_data=x_train[:200],
        latency_runs=5,
        directory=tmp_path,
    )
    assert [row["model"] for row in rows] == ["teacher", "distilled"]
    teacher_row, student_row = rows
    assert teacher_row["parameters"] == teacher.count_params()
    # A Distiller stands for its student.
    assert student_row["parameters"] == scratch.count_params()
    for row in rows:
        assert row["tflite_int8_kb"] < row["tflite_float32_kb"] < row["saved_model_kb"]
        for key in ("keras_ms", "litert_float32_ms", "litert_int8_ms"):
            assert row[key] > 0
    assert student_row["tflite_float32_kb"] < teacher_row["tflite_float32_kb"] / 5
    expected = np.mean(scratch.predict(x_test, verbose=0).argmax(-1) == y_test)
    assert student_row["accuracy"] == pytest.approx(expected)
    assert student_row["accuracy_int8"] == pytest.approx(expected, abs=0.02)
    assert student_row["int8_agreement"] >= 0.99
    table = report.format_report(rows)
    assert len(table.splitlines()) == 4
    assert "| teacher |" in table and "| distilled |" in table


def test_compression_report_bad_labels_raise(distiller, mnist):
    _, (x_test, y_test) = mnist
    with pytest.raises(ValueError, match="labels"):
        report.compression_report({"s": distiller}, x_test[:10], y_test[:9])
    with pytest.raises(ValueError, match="latency_runs"):
        report.compression_report(
            {"s": distiller}, x_test[:10], y_test[:10], latency_runs=0
        )
    with pytest.raises(ValueError, match="non-empty"):
        report.compression_report({}, x_test[:10], y_test[:10])


def test_plot_report(tmp_path):
    pytest.importorskip("matplotlib")
    row = {key: 1.0 for key, _, _ in report._REPORT_COLUMNS}
    row.update(model="student", tflite_int8_kb=None)
    figure = report.plot_report([row, dict(row, model="teacher")], tmp_path / "r.png")
    assert len(figure.axes) == 3
    assert os.path.getsize(tmp_path / "r.png") > 0

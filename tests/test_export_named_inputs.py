"""Export of a student with named inputs: a KerasHub text classifier.

The student takes `{"token_ids", "padding_mask", "segment_ids"}`. Its
SavedModel and `.tflite` files are written, run by input name (the LiteRT
signature runner) and checked against Keras, on every backend (JAX and
PyTorch export through a TensorFlow process).
"""

import keras
import numpy as np
import pytest

import keras_kd

keras_hub = pytest.importorskip("keras_hub")
pytest.importorskip("ai_edge_litert.interpreter")

VOCAB, LENGTH = 40, 8


def text_classifier():
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=VOCAB,
        num_layers=1,
        num_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
        max_sequence_length=LENGTH,
        dropout=0.0,
    )
    model = keras_hub.models.BertTextClassifier(
        backbone=backbone, num_classes=3, preprocessor=None, dropout=0.0
    )
    head = model.layers[-1]  # logits of order 1, so that the checks bite
    head.kernel.assign(head.kernel * 30.0)
    return model


def inputs(count=50, seed=1):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, LENGTH + 1, size=count)
    # As KerasHub's preprocessors give them: a boolean mask, integer ids.
    mask = np.arange(LENGTH)[None] < lengths[:, None]
    ids = rng.integers(1, VOCAB, size=(count, LENGTH)) * mask
    return {"token_ids": ids, "padding_mask": mask, "segment_ids": 0 * ids}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    student = text_classifier()
    x = inputs()
    student.predict(x, verbose=0)
    directory = tmp_path_factory.mktemp("named")
    result = keras_kd.export_student(
        student,
        str(directory),
        quantization=("float32", "float16", "dynamic_range"),
        verify_data=x,
    )
    return student, x, result


def test_a_student_of_named_inputs_exports_verified(exported):
    student, x, result = exported
    assert set(result.tflite) == {"float32", "float16", "dynamic_range"}
    assert result.verification["saved_model"]["max_abs_diff"] < 1e-4
    assert result.verification["float32"]["num_examples"] == 50
    assert result.verification["dynamic_range"]["top1_agreement"] >= 0.99


def test_tflite_predict_runs_the_file_by_input_name(exported):
    student, x, result = exported
    expected = keras.ops.convert_to_numpy(student.predict(x, verbose=0))
    assert np.abs(expected).max() > 0.05  # the comparison is not of zeros
    got = keras_kd.tflite_predict(result.tflite["float32"], x, batch_size=16)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    with pytest.raises(ValueError, match="takes inputs"):
        keras_kd.tflite_predict(result.tflite["float32"], {"token_ids": x["token_ids"]})


def test_named_inputs_must_match_and_int8_is_refused(tmp_path):
    student = text_classifier()
    x = inputs(8)
    student.predict(x, verbose=0)
    missing = {"token_ids": x["token_ids"], "padding_mask": x["padding_mask"]}
    with pytest.raises(ValueError, match="pass one array per input"):
        keras_kd.export_student(student, str(tmp_path / "a"), verify_data=missing)
    with pytest.raises(ValueError, match="takes models of one input"):
        keras_kd.export_student(
            student,
            str(tmp_path / "b"),
            quantization=("int8",),
            representative_data=x,
        )


def test_the_compression_report_takes_named_inputs(exported):
    student, x, _ = exported
    labels = np.argmax(keras.ops.convert_to_numpy(student.predict(x, verbose=0)), -1)
    (row,) = keras_kd.compression_report(
        {"student": student}, x, labels, latency_runs=3
    )
    assert row["accuracy"] == 1.0  # its own predictions as labels
    assert row["parameters"] == student.count_params()
    assert row["keras_ms"] > 0 and row["litert_float32_ms"] > 0
    assert row["tflite_float32_kb"] * 1024 > 4 * student.count_params()

"""TFLite conversion and the LiteRT interpreter: convert, run, verify.

`convert_to_tflite` turns a Keras model into `.tflite` bytes in one of four
quantization modes; `tflite_predict` runs a `.tflite` model with the LiteRT
interpreter (`ai-edge-litert`), handling integer inputs and outputs; and
`verify_tflite` checks a `.tflite` model against the Keras model it came
from.

Quantization modes (the names used everywhere in `keras_kd.deploy`):

- `"float32"`: no quantization. Outputs match Keras to float rounding.
- `"float16"`: weights stored as float16 (half the file), computed in float32
  on CPU. Outputs match Keras to about 1e-4 of the logit scale.
- `"dynamic_range"`: weights stored as int8, activations quantized on the fly
  (a quarter of the file); no calibration data needed.
- `"int8"`: full-integer quantization. Weights and activations are int8,
  calibrated on a representative sample of your data; every op is an integer
  op, so the file runs on integer-only hardware (microcontrollers, Edge TPU,
  NPUs). By default the model's input and output are int8 too (`int8_io="int8"`);
  `int8_io="float32"` keeps float32 input and output around the integer graph.
"""

import os
import re
import sys
import tempfile

import numpy as np
import tensorflow as tf

from keras_kd._distribute import on_tensorflow
from keras_kd.deploy.errors import ExportVerificationError, TFLiteConversionError
from keras_kd.deploy.inputs import (
    VERIFY_BATCH,
    as_examples,
    check_built,
    keras_outputs,
    num_examples,
    rows,
    student_of,
)
from keras_kd.deploy.on_tensorflow import call_in_tensorflow
from keras_kd.deploy.saved_model import SAVED_MODEL_DIR, export_saved_model

QUANTIZATIONS = ("float32", "float16", "dynamic_range", "int8")
_INT8_IO = ("int8", "float32")

# Largest |tflite - keras| allowed, as a fraction of max(1, max |keras output|).
# Measured on MNIST CNNs: float32 ~2e-6, float16 ~7e-5.
FLOAT_TOLERANCES = {"float32": 1e-4, "float16": 2e-3}
# Smallest share of inputs on which the quantized model's top-1 class must
# equal the Keras model's.
MIN_TOP1_AGREEMENT = 0.99
_LITERT_EXTRA = "pip install keras-kd[export]"


def check_quantizations(quantization):
    """`quantization` (one mode or several) as a tuple of known modes."""
    if isinstance(quantization, str):
        quantization = (quantization,)
    quantization = tuple(quantization)
    unknown = [mode for mode in quantization if mode not in QUANTIZATIONS]
    if unknown or not quantization:
        raise ValueError(
            f"`quantization` must be one or more of {QUANTIZATIONS}, got "
            f"{quantization!r}."
        )
    return quantization


def check_int8_io(int8_io):
    """Raises `ValueError` unless `int8_io` is `"int8"` or `"float32"`."""
    if int8_io not in _INT8_IO:
        raise ValueError(f"`int8_io` must be one of {_INT8_IO}, got {int8_io!r}.")


def _representative_dataset(examples):
    def generator():
        for example in examples:
            yield [example[None]]

    return generator


def convert_saved_model(
    path,
    quantization,
    representative_examples=None,
    int8_io="int8",
):
    """Converts a SavedModel directory to `.tflite` bytes."""
    converter = tf.lite.TFLiteConverter.from_saved_model(path)
    if quantization != "float32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantization == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if quantization == "int8":
        converter.representative_dataset = _representative_dataset(
            representative_examples
        )
        # Integer-only ops: conversion fails instead of silently keeping float
        # ops that integer-only hardware cannot run.
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if int8_io == "int8":
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
    try:
        return converter.convert()
    except Exception as error:  # The converter raises several error types.
        raise _conversion_error(error, quantization) from error


def _conversion_error(error, quantization):
    """A `TFLiteConversionError` naming the ops the converter could not map."""
    message = str(error)
    found = re.findall(r"(?:Custom|Flex) ops: ([^\n]+)", message)
    ops = ", ".join(op.strip() for op in found) or None
    what = f"ops TFLite has no kernel for: {ops}" if ops else "an error"
    return TFLiteConversionError(
        f"The TFLite converter failed on {quantization!r} conversion with "
        f"{what}. Replace those ops in the student with ones TFLite "
        "supports (https://ai.google.dev/edge/litert/models/ops_compatibility)"
        ", or convert it yourself with `tf.lite.TFLiteConverter` and "
        "`target_spec.supported_ops` including `SELECT_TF_OPS` (the app "
        "then needs the Flex delegate). Converter message (end): "
        f"{message[-500:]}"
    )


def litert_interpreter(tflite_model, num_threads=None):
    """A LiteRT `Interpreter` for a `.tflite` path or its bytes."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as error:
        raise ImportError(
            "Running `.tflite` files needs the LiteRT interpreter "
            f"(ai-edge-litert): `{_LITERT_EXTRA}`."
        ) from error
    if isinstance(tflite_model, bytes):
        return Interpreter(model_content=tflite_model, num_threads=num_threads)
    return Interpreter(model_path=os.fspath(tflite_model), num_threads=num_threads)


def quantize_values(x, scale, zero_point, dtype):
    """`round(x / scale) + zero_point`, clipped to `dtype`: TFLite's affine map."""
    info = np.iinfo(dtype)
    values = np.round(np.asarray(x, dtype="float64") / scale) + zero_point
    return np.clip(values, info.min, info.max).astype(dtype)


def _dequantize(q, scale, zero_point):
    """`(q - zero_point) * scale` as float32."""
    return ((np.asarray(q, dtype="float64") - zero_point) * scale).astype("float32")


def resize_input(interpreter, shape):
    """Resizes the interpreter's single input to `shape` and allocates tensors.

    Returns the input and output details as they are after the resize.
    """
    index = interpreter.get_input_details()[0]["index"]
    interpreter.resize_tensor_input(index, shape)
    interpreter.allocate_tensors()
    return interpreter.get_input_details()[0], interpreter.get_output_details()[0]


def quantize_input(x, input_detail):
    """`x` as the input tensor takes it: quantized if the input is an integer."""
    if not np.issubdtype(input_detail["dtype"], np.integer):
        return x
    scale, zero_point = input_detail["quantization"]
    return quantize_values(x, scale, zero_point, input_detail["dtype"])


def _float_output(output, output_detail):
    """The output tensor as float32, dequantized if it is an integer."""
    if np.issubdtype(output_detail["dtype"], np.integer):
        scale, zero_point = output_detail["quantization"]
        output = _dequantize(output, scale, zero_point)
    return np.asarray(output, dtype="float32").copy()


def _predict_named(interpreter, x, batch_size):
    """Runs a model of named inputs through its signature runner, by batch.

    The runner takes the inputs by name (`token_ids=...`), each in the
    file's dtype, and resizes them to each batch's shape; the model's single
    output is returned.
    """
    runner = interpreter.get_signature_runner()
    details = runner.get_input_details()
    if sorted(x) != sorted(details):
        raise ValueError(
            f"The `.tflite` model takes inputs {sorted(details)}, got {sorted(x)}."
        )
    x = {name: np.asarray(x[name], details[name]["dtype"]) for name in details}
    outputs = []
    for start in range(0, num_examples(x), batch_size):
        (output,) = runner(**rows(x, start, start + batch_size)).values()
        outputs.append(np.asarray(output, dtype="float32").copy())
    return np.concatenate(outputs)


def tflite_predict(tflite_model, x, batch_size=VERIFY_BATCH, num_threads=None):
    """Runs a single-input `.tflite` model with the LiteRT interpreter.

    Integer inputs and outputs are handled for you: float inputs are quantized
    with the model's input scale and zero point, and integer outputs are
    dequantized, so the result is comparable with `model.predict(x)`. A
    model of named inputs (exported from a KerasHub task) takes a dict of
    arrays, run through the file's signature by name.

    Args:
        tflite_model: Path of a `.tflite` file, or its bytes.
        x: Float inputs, shape `(n, ...)`, or a dict of arrays by input name.
        batch_size: Examples per interpreter call. Defaults to `1000`.
        num_threads: Interpreter threads. Defaults to `None`, LiteRT's default.

    Returns:
        float32 array of outputs, shape `(n, ...)`.

    Raises:
        ImportError: if ai-edge-litert is not installed.
        ValueError: if the model has more than one output, or more than one
            input and `x` is not a dict of them.

    Example:

    ```python
    logits = keras_kd.tflite_predict("export/student_int8.tflite", x_test)
    accuracy = (logits.argmax(-1) == y_test).mean()
    ```
    """
    interpreter = litert_interpreter(tflite_model, num_threads=num_threads)
    if isinstance(x, dict):
        return _predict_named(interpreter, x, batch_size)
    num_inputs = len(interpreter.get_input_details())
    num_outputs = len(interpreter.get_output_details())
    if num_inputs != 1 or num_outputs != 1:
        raise ValueError(
            "`tflite_predict` runs models with one input and one output; this "
            f"model has {num_inputs} inputs and {num_outputs} outputs."
        )
    x = np.asarray(x, dtype="float32")
    outputs = []
    current_shape = None
    for start in range(0, len(x), batch_size):
        batch = x[start : start + batch_size]
        if current_shape != batch.shape:
            input_detail, output_detail = resize_input(interpreter, batch.shape)
            current_shape = batch.shape
        interpreter.set_tensor(
            input_detail["index"], quantize_input(batch, input_detail)
        )
        interpreter.invoke()
        output = interpreter.get_tensor(output_detail["index"])
        outputs.append(_float_output(output, output_detail))
    return np.concatenate(outputs)


def convert_to_tflite(
    model,
    quantization="float32",
    representative_data=None,
    num_calibration_samples=500,
    int8_io="int8",
):
    """Converts a Keras model (or a `Distiller`'s student) to `.tflite` bytes.

    On JAX and PyTorch the conversion runs in a TensorFlow child process
    (`keras_kd.deploy.on_tensorflow`). The model goes through a SavedModel
    (`model.export`) and
    `tf.lite.TFLiteConverter.from_saved_model`, the path that keeps the
    weights; converting a traced `tf.function` that reads Keras variables
    yields a file without weights.

    Args:
        model: Built `keras.Model`, or a `keras_kd.Distiller` (its student is
            converted, never its teacher).
        quantization: One of `"float32"`, `"float16"`, `"dynamic_range"`,
            `"int8"` (see the module docstring). Defaults to `"float32"`.
        representative_data: Inputs to calibrate `"int8"` activation ranges
            on: an array `(n, ...)` or a `tf.data.Dataset` of `x` or `(x, y)`
            (labels ignored). Use real training inputs, a few hundred of them.
            Required for `"int8"`, unused otherwise. Defaults to `None`.
        num_calibration_samples: Examples of `representative_data` used.
            Defaults to `500`.
        int8_io: For `"int8"`, the dtype of the model's input and output:
            `"int8"` (integer-only, for microcontrollers and accelerators) or
            `"float32"` (int8 inside, quantize/dequantize at the edges).
            Defaults to `"int8"`.

    Returns:
        The `.tflite` flatbuffer, as `bytes`.

    Raises:
        ValueError: for an unbuilt model, an unknown `quantization` or
            `int8_io`, or `"int8"` without `representative_data`.
        TFLiteConversionError: if TFLite cannot convert the model; the
            message names the unsupported ops.

    Example:

    ```python
    tflite_bytes = keras_kd.convert_to_tflite(
        distiller, quantization="int8", representative_data=x_train[:500]
    )
    ```
    """
    student = student_of(model)
    check_built(student)
    (quantization,) = check_quantizations(quantization)
    check_int8_io(int8_io)
    examples = calibration_examples(
        student, (quantization,), representative_data, num_calibration_samples
    )
    if not on_tensorflow():
        arguments = {"quantization": quantization, "int8_io": int8_io}
        data = {"representative_data": examples}
        return call_in_tensorflow("convert_to_tflite", student, data, arguments)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, SAVED_MODEL_DIR)
        export_saved_model(student, path)
        return convert_saved_model(path, quantization, examples, int8_io)


def calibration_examples(model, quantizations, representative_data, limit):
    """The `"int8"` calibration inputs, or `None` if no mode is `"int8"`."""
    if "int8" not in quantizations:
        return None
    if representative_data is None:
        raise ValueError(
            "Full-integer `'int8'` quantization needs `representative_data`: "
            "a few hundred real inputs (e.g. `representative_data=x_train[:500]`)"
            " to calibrate activation ranges. Or choose `'dynamic_range'`, "
            "which needs no data."
        )
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(
            f"`num_calibration_samples` must be a positive integer, got {limit!r}."
        )
    examples = as_examples(representative_data, model, limit, "representative_data")
    if isinstance(examples, dict):
        raise ValueError(
            "Full-integer `'int8'` export takes models of one input; this one "
            f"takes {sorted(examples)}. Choose `'dynamic_range'` (int8 "
            "weights, float activations) or `'float16'`."
        )
    return examples


def verify_tflite(
    tflite_model,
    model,
    x,
    quantization="float32",
    tolerance=None,
    min_top1_agreement=MIN_TOP1_AGREEMENT,
):
    """Checks a `.tflite` model against the Keras model it came from.

    Both models run on `x`. Float modes (`"float32"`, `"float16"`) must agree
    elementwise: `max |tflite - keras| <= tolerance * max(1, max |keras|)`.
    Quantized modes (`"dynamic_range"`, `"int8"`) must predict the same top-1
    class on at least `min_top1_agreement` of the inputs; their outputs differ
    by design.

    Args:
        tflite_model: Path of a `.tflite` file, or its bytes.
        model: The Keras model (or `Distiller`, for its student).
        x: Real inputs, `(n, ...)`; the more the better (e.g. the test set).
        quantization: How the file was quantized; selects the check.
            Defaults to `"float32"`.
        tolerance: Relative elementwise tolerance for float modes. Defaults
            to `None`: `1e-4` for float32, `2e-3` for float16.
        min_top1_agreement: Required top-1 agreement for quantized modes.
            Defaults to `0.99`.

    Returns:
        dict with `max_abs_diff`, `relative_diff`, `top1_agreement` and
        `num_examples`.

    Raises:
        ExportVerificationError: if the file does not reproduce the model.
        ValueError: for an unknown `quantization` or empty `x`.
        ImportError: if ai-edge-litert is not installed.

    Example:

    ```python
    figures = keras_kd.verify_tflite(
        "export/student_int8.tflite", student, x_test, quantization="int8"
    )
    print(figures["top1_agreement"])
    ```
    """
    student = student_of(model)
    (quantization,) = check_quantizations(quantization)
    # Every example: `len` of a batched dataset would count batches.
    x = as_examples(x, student, sys.maxsize, "x")
    expected = keras_outputs(student, x)
    return compare_tflite(
        tflite_model, x, expected, quantization, tolerance, min_top1_agreement
    )


def compare_tflite(
    tflite_model, x, expected, quantization, tolerance, min_top1_agreement
):
    """`verify_tflite` on outputs already computed: `expected` for `x`."""
    actual = tflite_predict(tflite_model, x)
    if actual.shape != expected.shape:
        raise ExportVerificationError(
            f"The `.tflite` model outputs shape {actual.shape}, the Keras model "
            f"{expected.shape}: the file is not this model."
        )
    max_abs_diff = float(np.max(np.abs(actual - expected)))
    scale = max(1.0, float(np.max(np.abs(expected))))
    figures = {
        "max_abs_diff": max_abs_diff,
        "relative_diff": max_abs_diff / scale,
        "top1_agreement": float(
            np.mean(actual.argmax(axis=-1) == expected.argmax(axis=-1))
        ),
        "num_examples": num_examples(x),
    }
    if quantization in FLOAT_TOLERANCES:
        tolerance = FLOAT_TOLERANCES[quantization] if tolerance is None else tolerance
        if figures["relative_diff"] > tolerance:
            raise ExportVerificationError(
                f"The {quantization} `.tflite` model disagrees with Keras: max "
                f"|difference| {max_abs_diff:.3g} is {figures['relative_diff']:.3g}"
                f" of the output scale {scale:.3g}, above the tolerance "
                f"{tolerance:g}. Do not ship this file; report the model to "
                "keras_kd with the converter version."
            )
    elif figures["top1_agreement"] < min_top1_agreement:
        raise ExportVerificationError(
            f"The {quantization} `.tflite` model predicts the Keras model's class "
            f"on only {figures['top1_agreement']:.2%} of {num_examples(x)} inputs "
            "(needed "
            f"{min_top1_agreement:.0%}). Calibrate on more, and more "
            "representative, `representative_data`, train the student longer, "
            "or ship `'float16'` instead."
        )
    return figures


def require_litert():
    """Raises `ImportError`, saying how to install it, if LiteRT is missing.

    `export_student` and `compression_report` run the `.tflite` files they
    write with the LiteRT interpreter (`ai-edge-litert`); call this first to
    fail before a long training rather than after it.
    """
    try:
        import ai_edge_litert.interpreter  # noqa: F401
    except ImportError as error:
        raise ImportError(
            "Verifying `.tflite` files needs the LiteRT interpreter "
            f"(ai-edge-litert): `{_LITERT_EXTRA}`, or pass `verify_data=None` "
            "and no `representative_data` to skip verification."
        ) from error

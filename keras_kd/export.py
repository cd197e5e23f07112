"""Ship the student: SavedModel and TFLite (LiteRT) export, verified, and measured.

`export_student` writes the trained student (never the teacher) as a
TensorFlow SavedModel with a `serving_default` signature and as `.tflite`
files in any of four quantization modes, then checks every artifact: the
SavedModel holds exactly the student's variables and reproduces its outputs,
and each `.tflite` file, run by the LiteRT interpreter, agrees with the Keras
student on real inputs. `keras_kd.report.compression_report` measures teacher
and students side by side.

Quantization modes (the names used everywhere in this module):

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

import dataclasses
import os
import re
import sys
import tempfile
import warnings

import keras
import numpy as np
import tensorflow as tf

QUANTIZATIONS = ("float32", "float16", "dynamic_range", "int8")
FORMATS = ("saved_model", "tflite")
_INT8_IO = ("int8", "float32")

# Largest |tflite - keras| allowed, as a fraction of max(1, max |keras output|).
# Measured on MNIST CNNs: float32 ~2e-6, float16 ~7e-5.
FLOAT_TOLERANCES = {"float32": 1e-4, "float16": 2e-3}
# Smallest share of inputs on which the quantized model's top-1 class must
# equal the Keras model's.
MIN_TOP1_AGREEMENT = 0.99
_SAVED_MODEL_TOLERANCE = 1e-5
_SAVED_MODEL_DIR = "saved_model"
_LITERT_EXTRA = "pip install keras-kd[export]"
_VERIFY_BATCH = 1000


class TFLiteConversionError(ValueError):
    """TFLite cannot convert the model, for example because of an unsupported op."""


class ExportVerificationError(RuntimeError):
    """An exported artifact does not reproduce the Keras student."""


@dataclasses.dataclass
class ExportResult:
    """What `export_student` wrote and how each artifact was checked.

    Attributes:
        saved_model: Path of the SavedModel directory, or `None`.
        tflite: `{quantization: path}` of the `.tflite` files written.
        sizes: `{artifact: bytes}`; keys `"saved_model"` and the quantization
            modes.
        parameters: The student's parameter count (`model.count_params()`).
        verification: `{artifact: figures}`. For the SavedModel,
            `max_abs_diff` against Keras; for each `.tflite` file,
            `max_abs_diff`, `relative_diff` (over `max(1, max |keras|)`),
            `top1_agreement` and `num_examples`. Empty for an artifact that
            was not verified (no data was given).
    """

    saved_model: str | None
    tflite: dict
    sizes: dict
    parameters: int
    verification: dict


def student_of(model_or_distiller):
    """The model to export: a `Distiller`'s student, or the model itself."""
    from keras_kd.distiller import Distiller

    if isinstance(model_or_distiller, Distiller):
        return model_or_distiller.student
    if not isinstance(model_or_distiller, keras.Model):
        raise ValueError(
            "Expected a `keras.Model` or a `keras_kd.Distiller`, got "
            f"{type(model_or_distiller).__name__}: {model_or_distiller!r}."
        )
    return model_or_distiller


def _check_built(model):
    if not model.built:
        raise ValueError(
            f"Model {model.name!r} is not built, so it has no weights and no "
            "input shape to export. Build it first: start a Sequential model "
            "with `keras.Input(shape=...)`, call `model.build(input_shape)`, "
            "or call the model on a batch of data (training it does this)."
        )


def _check_quantizations(quantization):
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


def _check_int8_io(int8_io):
    if int8_io not in _INT8_IO:
        raise ValueError(f"`int8_io` must be one of {_INT8_IO}, got {int8_io!r}.")


def _prepare_directory(directory):
    """Creates `directory` and proves it is writable, before any slow work."""
    directory = os.fspath(directory)
    try:
        os.makedirs(directory, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory):
            pass
    except OSError as error:
        raise ValueError(
            f"Cannot write the export to {directory!r}: it is not a writable "
            f"directory ({error.strerror or error}). Pass a `directory` you can "
            "write to (it is created if missing)."
        ) from error
    return directory


def _directory_size(path):
    return sum(
        os.path.getsize(os.path.join(root, name))
        for root, _, names in os.walk(path)
        for name in names
    )


def _single_input_shape(model):
    """The static shape of the model's single input, without the batch axis."""
    inputs = getattr(model, "inputs", None)
    if not inputs or len(inputs) != 1:
        return None
    return tuple(inputs[0].shape[1:])


def _as_examples(data, model, limit, argument):
    """Reads up to `limit` input examples from an array or a `tf.data.Dataset`.

    Dataset elements may be `x` or `(x, y[, sample_weight])`, batched or not;
    labels are ignored. Returns one float32 array `(n, ...)`.
    """
    input_shape = _single_input_shape(model)
    if isinstance(data, tf.data.Dataset):
        arrays, count = [], 0
        for element in data:
            x, _, _ = keras.utils.unpack_x_y_sample_weight(element)
            if isinstance(x, (dict, list, tuple)):
                raise ValueError(
                    f"`{argument}` must yield single input tensors; multi-input "
                    "models are not supported by keras_kd's export checks."
                )
            x = np.asarray(x, dtype="float32")
            if input_shape is not None and x.ndim == len(input_shape):
                x = x[None]
            arrays.append(x)
            count += len(x)
            if count >= limit:
                break
        examples = np.concatenate(arrays) if arrays else np.zeros((0,))
    else:
        if isinstance(data, (dict, list, tuple)):
            raise ValueError(
                f"`{argument}` must be an array of inputs `(n, ...)` or a "
                f"`tf.data.Dataset`, got a {type(data).__name__}. Pass the "
                "inputs only, e.g. `x_train[:500]`, not `(x, y)`."
            )
        examples = np.asarray(data, dtype="float32")
    examples = examples[:limit]
    if examples.ndim == 0 or len(examples) == 0:
        raise ValueError(f"`{argument}` is empty: it must hold at least one input.")
    if input_shape is not None and not _shapes_compatible(
        examples.shape[1:], input_shape
    ):
        raise ValueError(
            f"`{argument}` has examples of shape {examples.shape[1:]}, but the "
            f"model expects inputs of shape {input_shape}."
        )
    return examples


def _shapes_compatible(shape, expected):
    return len(shape) == len(expected) and all(
        want is None or got == want for got, want in zip(shape, expected)
    )


def _export_saved_model(model, path, input_signature=None):
    # Keras 3's `model.save` only writes `.keras`/`.h5`; `export` writes a
    # SavedModel with a `serve` endpoint and a `serving_default` signature.
    model.export(
        path, format="tf_saved_model", verbose=False, input_signature=input_signature
    )


def _variable_signature(variables):
    return sorted(
        (tuple(int(d) for d in v.shape), tf.as_dtype(v.dtype).name) for v in variables
    )


def _check_saved_model_variables(path, student, teacher=None):
    """Raises unless the SavedModel holds exactly the student's variables.

    Returns the loaded SavedModel.
    """
    loaded = tf.saved_model.load(path)
    saved = list(loaded.variables)
    fix = (
        "Export the student alone (`keras_kd.export_student(distiller, ...)` "
        "does), not the `Distiller`, whose SavedModel tracks the teacher too."
    )
    if teacher is not None:
        student_paths = {v.path for v in student.variables}
        teacher_paths = {v.path for v in teacher.variables} - student_paths
        leaked = sorted({v.name.split(":")[0] for v in saved} & teacher_paths)
        if leaked:
            raise ExportVerificationError(
                f"The SavedModel at {path!r} holds {len(leaked)} teacher "
                f"variables ({', '.join(leaked[:3])}, ...). {fix}"
            )
    if _variable_signature(saved) != _variable_signature(student.variables):
        saved_count = sum(int(np.prod(v.shape)) for v in saved)
        raise ExportVerificationError(
            f"The SavedModel at {path!r} holds {len(saved)} variables "
            f"({saved_count} values) but the student has "
            f"{len(student.variables)} ({student.count_params()} parameters): "
            f"it is not the student alone. {fix}"
        )
    _check_checkpoint_tensors(path, student, fix)
    return loaded


def _check_checkpoint_tensors(path, student, fix):
    """Raises if the SavedModel's checkpoint stores a tensor the student lacks.

    `loaded.variables` lists what the restored object tracks; the checkpoint
    on disk could hold more. Keras' exporter writes each variable under two
    keys, so the check is by value, not by count.
    """
    reader = tf.train.load_checkpoint(os.path.join(path, "variables", "variables"))
    candidates = {}
    for variable in student.variables:
        value = keras.ops.convert_to_numpy(variable)
        candidates.setdefault(value.shape, []).append(value)
    for key in reader.get_variable_to_shape_map():
        if key.startswith("_CHECKPOINTABLE_OBJECT_GRAPH"):
            continue
        value = reader.get_tensor(key)
        if not any(
            np.array_equal(value, known) for known in candidates.get(value.shape, [])
        ):
            raise ExportVerificationError(
                f"The SavedModel at {path!r} stores a tensor {key!r} of shape "
                f"{value.shape} that is none of the student's variables. {fix}"
            )


def _representative_dataset(examples):
    def generator():
        for example in examples:
            yield [example[None]]

    return generator


def _convert_saved_model(
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
        message = str(error)
        found = re.findall(r"(?:Custom|Flex) ops: ([^\n]+)", message)
        ops = ", ".join(op.strip() for op in found) or None
        what = f"ops TFLite has no kernel for: {ops}" if ops else "an error"
        raise TFLiteConversionError(
            f"The TFLite converter failed on {quantization!r} conversion with "
            f"{what}. Replace those ops in the student with ones TFLite "
            "supports (https://ai.google.dev/edge/litert/models/ops_compatibility)"
            ", or convert it yourself with `tf.lite.TFLiteConverter` and "
            "`target_spec.supported_ops` including `SELECT_TF_OPS` (the app "
            "then needs the Flex delegate). Converter message (end): "
            f"{message[-500:]}"
        ) from error


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


def tflite_predict(tflite_model, x, batch_size=_VERIFY_BATCH, num_threads=None):
    """Runs a single-input `.tflite` model with the LiteRT interpreter.

    Integer inputs and outputs are handled for you: float inputs are quantized
    with the model's input scale and zero point, and integer outputs are
    dequantized, so the result is comparable with `model.predict(x)`.

    Args:
        tflite_model: Path of a `.tflite` file, or its bytes.
        x: Float inputs, shape `(n, ...)`.
        batch_size: Examples per interpreter call. Defaults to `1000`.
        num_threads: Interpreter threads. Defaults to `None`, LiteRT's default.

    Returns:
        float32 array of outputs, shape `(n, ...)`.

    Raises:
        ImportError: if ai-edge-litert is not installed.
        ValueError: if the model has more than one input or output.

    Example:

    ```python
    logits = keras_kd.tflite_predict("export/student_int8.tflite", x_test)
    accuracy = (logits.argmax(-1) == y_test).mean()
    ```
    """
    interpreter = litert_interpreter(tflite_model, num_threads=num_threads)
    input_details = interpreter.get_input_details()
    output_details = interpreter.get_output_details()
    if len(input_details) != 1 or len(output_details) != 1:
        raise ValueError(
            "`tflite_predict` runs models with one input and one output; this "
            f"model has {len(input_details)} inputs and {len(output_details)} "
            "outputs."
        )
    x = np.asarray(x, dtype="float32")
    outputs = []
    current_shape = None
    for start in range(0, len(x), batch_size):
        batch = x[start : start + batch_size]
        input_detail = input_details[0]
        if current_shape != batch.shape:
            interpreter.resize_tensor_input(input_detail["index"], batch.shape)
            interpreter.allocate_tensors()
            current_shape = batch.shape
            input_detail = interpreter.get_input_details()[0]
            output_detail = interpreter.get_output_details()[0]
        if np.issubdtype(input_detail["dtype"], np.integer):
            scale, zero_point = input_detail["quantization"]
            batch = quantize_values(batch, scale, zero_point, input_detail["dtype"])
        interpreter.set_tensor(input_detail["index"], batch)
        interpreter.invoke()
        output = interpreter.get_tensor(output_detail["index"])
        if np.issubdtype(output_detail["dtype"], np.integer):
            scale, zero_point = output_detail["quantization"]
            output = _dequantize(output, scale, zero_point)
        outputs.append(np.asarray(output, dtype="float32").copy())
    return np.concatenate(outputs)


def convert_to_tflite(
    model,
    quantization="float32",
    representative_data=None,
    num_calibration_samples=500,
    int8_io="int8",
):
    """Converts a Keras model (or a `Distiller`'s student) to `.tflite` bytes.

    The model goes through a SavedModel (`model.export`) and
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
    _check_built(student)
    (quantization,) = _check_quantizations(quantization)
    _check_int8_io(int8_io)
    examples = _calibration_examples(
        student, (quantization,), representative_data, num_calibration_samples
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, _SAVED_MODEL_DIR)
        _export_saved_model(student, path)
        return _convert_saved_model(path, quantization, examples, int8_io)


def _calibration_examples(model, quantizations, representative_data, limit):
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
    return _as_examples(representative_data, model, limit, "representative_data")


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
    (quantization,) = _check_quantizations(quantization)
    # Every example: `len` of a batched dataset would count batches.
    x = _as_examples(x, student, sys.maxsize, "x")
    expected = keras_outputs(student, x)
    return _compare_tflite(
        tflite_model, x, expected, quantization, tolerance, min_top1_agreement
    )


def keras_outputs(model, x):
    """`model.predict(x)` in float32, batched as the TFLite checks run."""
    outputs = model.predict(x, batch_size=_VERIFY_BATCH, verbose=0)
    return np.asarray(outputs, dtype="float32")


def _compare_tflite(
    tflite_model, x, expected, quantization, tolerance, min_top1_agreement
):
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
        "num_examples": len(x),
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
            f"on only {figures['top1_agreement']:.2%} of {len(x)} inputs (needed "
            f"{min_top1_agreement:.0%}). Calibrate on more, and more "
            "representative, `representative_data`, train the student longer, "
            "or ship `'float16'` instead."
        )
    return figures


def export_student(
    model,
    directory,
    formats=FORMATS,
    quantization=("float32",),
    representative_data=None,
    verify_data=None,
    num_calibration_samples=500,
    int8_io="int8",
    min_top1_agreement=MIN_TOP1_AGREEMENT,
    input_signature=None,
):
    """Exports the trained student as a SavedModel and `.tflite` files, verified.

    Given a `Distiller`, only its student is exported: the teacher is training
    machinery, and saving the whole `Distiller` ships it too (a "compressed"
    file bigger than the teacher). The directory receives:

    - `saved_model/`: a TensorFlow SavedModel (via `model.export`, since
      Keras 3's `model.save` writes `.keras` files only) with a
      `serving_default` signature, loadable by `tf.saved_model.load`, TF
      Serving and the TFLite converter.
    - `student_<quantization>.tflite` for each requested mode.

    Every artifact is checked before this returns: the SavedModel must hold
    exactly the student's variables (no teacher variable) and, on
    `verify_data`, reproduce its outputs to 1e-5; each `.tflite` file is run
    with the LiteRT interpreter on `verify_data` and checked by
    `verify_tflite`. Without `verify_data` (or `representative_data`, used in
    its place) only the variable check runs, with a warning. Existing files of
    the same names are overwritten.

    Args:
        model: The trained `keras_kd.Distiller` or a built `keras.Model`.
        directory: Where to write; created if missing.
        formats: Any of `"saved_model"`, `"tflite"`. Defaults to both.
        quantization: `.tflite` modes to write, any of `"float32"`,
            `"float16"`, `"dynamic_range"`, `"int8"` (see the module
            docstring). Defaults to `("float32",)`.
        representative_data: Real inputs to calibrate `"int8"` on: an array
            `(n, ...)` or a `tf.data.Dataset` of `x` or `(x, y)`. Required for
            `"int8"`. Defaults to `None`.
        verify_data: Real inputs to verify the artifacts on, e.g. `x_test`.
            Defaults to `None`: `representative_data`, if given.
        num_calibration_samples: Examples of `representative_data` used to
            calibrate. Defaults to `500`.
        int8_io: Input/output dtype of the `"int8"` file: `"int8"`
            (integer-only) or `"float32"`. Defaults to `"int8"`.
        min_top1_agreement: Share of `verify_data` on which the
            `"dynamic_range"` and `"int8"` files must predict the Keras
            student's top-1 class. Defaults to `0.99`.
        input_signature: Passed to `model.export`, for subclassed models whose
            input shape Keras cannot infer. Defaults to `None`.

    Returns:
        An `ExportResult` with the paths, sizes, the student's parameter
        count and the verification figures.

    Raises:
        ValueError: for an unbuilt model, an unwritable `directory`, unknown
            `formats`/`quantization`/`int8_io`, or `"int8"` without
            `representative_data`. Raised before anything is written.
        TFLiteConversionError: if TFLite cannot convert the student.
        ExportVerificationError: if an artifact holds other variables than
            the student's or does not reproduce its outputs.
        ImportError: if `.tflite` files are verified and ai-edge-litert is
            not installed (`pip install keras-kd[export]`).

    Example:

    ```python
    result = keras_kd.export_student(
        distiller,
        "export/",
        quantization=("float32", "int8"),
        representative_data=x_train[:500],
        verify_data=x_test,
    )
    print(result.tflite["int8"], result.verification["int8"]["top1_agreement"])
    ```
    """
    student = student_of(model)
    teacher = getattr(model, "teacher", None) if model is not student else None
    _check_built(student)
    formats = (formats,) if isinstance(formats, str) else tuple(formats)
    if not formats or any(fmt not in FORMATS for fmt in formats):
        raise ValueError(
            f"`formats` must be one or more of {FORMATS}, got {formats!r}."
        )
    quantizations = _check_quantizations(quantization)
    _check_int8_io(int8_io)
    wants_tflite = "tflite" in formats
    examples = (
        _calibration_examples(
            student, quantizations, representative_data, num_calibration_samples
        )
        if wants_tflite
        else None
    )
    if verify_data is None:
        verify_data = representative_data
    x_verify = expected = None
    if verify_data is not None:
        x_verify = _as_examples(verify_data, student, 10**9, "verify_data")
        expected = keras_outputs(student, x_verify)
    if wants_tflite and x_verify is not None:
        require_litert()
    directory = _prepare_directory(directory)

    result = ExportResult(
        saved_model=None,
        tflite={},
        sizes={},
        parameters=student.count_params(),
        verification={},
    )
    with tempfile.TemporaryDirectory() as tmp:
        keep = "saved_model" in formats
        saved_path = os.path.join(directory if keep else tmp, _SAVED_MODEL_DIR)
        _export_saved_model(student, saved_path, input_signature)
        loaded = _check_saved_model_variables(saved_path, student, teacher)
        if keep:
            result.saved_model = saved_path
            result.sizes["saved_model"] = _directory_size(saved_path)
            result.verification["saved_model"] = {}
            if x_verify is not None:
                result.verification["saved_model"] = _verify_saved_model(
                    loaded, x_verify, expected, saved_path
                )
        if wants_tflite:
            for mode in quantizations:
                tflite_bytes = _convert_saved_model(saved_path, mode, examples, int8_io)
                file_path = os.path.join(directory, f"student_{mode}.tflite")
                with open(file_path, "wb") as f:
                    f.write(tflite_bytes)
                result.tflite[mode] = file_path
                result.sizes[mode] = len(tflite_bytes)
                result.verification[mode] = {}
                if x_verify is not None:
                    result.verification[mode] = _compare_tflite(
                        tflite_bytes,
                        x_verify,
                        expected,
                        mode,
                        tolerance=None,
                        min_top1_agreement=min_top1_agreement,
                    )
    if x_verify is None:
        warnings.warn(
            "export_student checked that the artifacts hold only the student's "
            "variables, but did not compare their outputs with Keras: pass "
            "`verify_data` (e.g. `x_test`) to verify them on real inputs.",
            stacklevel=2,
        )
    return result


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


def _verify_saved_model(loaded, x, expected, path):
    x, expected = x[:_VERIFY_BATCH], expected[:_VERIFY_BATCH]
    outputs = loaded.signatures["serving_default"](tf.constant(x))
    actual = np.asarray(next(iter(outputs.values())), dtype="float32")
    max_abs_diff = float(np.max(np.abs(actual - expected)))
    if max_abs_diff > _SAVED_MODEL_TOLERANCE * max(1.0, np.max(np.abs(expected))):
        raise ExportVerificationError(
            f"The SavedModel at {path!r} disagrees with the Keras student: max "
            f"|difference| {max_abs_diff:.3g} on {len(x)} inputs."
        )
    return {"max_abs_diff": max_abs_diff, "num_examples": len(x)}

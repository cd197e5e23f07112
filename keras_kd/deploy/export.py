"""Ship the student: SavedModel and TFLite (LiteRT) export, verified.

`export_student` writes the trained student (never the teacher) as a
TensorFlow SavedModel with a `serving_default` signature and as `.tflite`
files in any of four quantization modes (see `keras_kd.deploy.litert`), then
checks every artifact: the SavedModel holds exactly the student's variables
and reproduces its outputs, and each `.tflite` file, run by the LiteRT
interpreter, agrees with the Keras student on real inputs.
`keras_kd.deploy.report.compression_report` measures teacher and students
side by side.
"""

import dataclasses
import os
import tempfile
import warnings

import keras

from keras_kd._distribute import on_tensorflow
from keras_kd.deploy.inputs import as_examples, check_built, keras_outputs, student_of
from keras_kd.deploy.litert import (
    MIN_TOP1_AGREEMENT,
    calibration_examples,
    check_int8_io,
    check_quantizations,
    compare_tflite,
    convert_saved_model,
    require_litert,
)
from keras_kd.deploy.on_tensorflow import call_in_tensorflow
from keras_kd.deploy.saved_model import (
    SAVED_MODEL_DIR,
    check_saved_model_variables,
    directory_size,
    export_saved_model,
    verify_saved_model,
)

FORMATS = ("saved_model", "tflite")


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


def _check_formats(formats):
    formats = (formats,) if isinstance(formats, str) else tuple(formats)
    if not formats or any(fmt not in FORMATS for fmt in formats):
        raise ValueError(
            f"`formats` must be one or more of {FORMATS}, got {formats!r}."
        )
    return formats


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

    On JAX and PyTorch the export runs in a TensorFlow child process (see
    `keras_kd.deploy.on_tensorflow`), with the same result and errors.

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
            `"float16"`, `"dynamic_range"`, `"int8"` (see the
            `keras_kd.deploy.litert` docstring). Defaults to `("float32",)`.
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
    check_built(student)
    formats = _check_formats(formats)
    quantizations = check_quantizations(quantization)
    check_int8_io(int8_io)
    if not on_tensorflow():
        return _export_elsewhere(
            student,
            directory,
            {"representative_data": representative_data, "verify_data": verify_data},
            {
                "formats": list(formats),
                "quantization": list(quantizations),
                "num_calibration_samples": num_calibration_samples,
                "int8_io": int8_io,
                "min_top1_agreement": min_top1_agreement,
            },
            input_signature,
        )
    wants_tflite = "tflite" in formats
    examples = (
        calibration_examples(
            student, quantizations, representative_data, num_calibration_samples
        )
        if wants_tflite
        else None
    )
    if verify_data is None:
        verify_data = representative_data
    x_verify, expected = _verification_inputs(student, verify_data)
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
        saved_path = os.path.join(directory if keep else tmp, SAVED_MODEL_DIR)
        export_saved_model(student, saved_path, input_signature)
        loaded = check_saved_model_variables(saved_path, student, teacher)
        if keep:
            _record_saved_model(result, loaded, saved_path, x_verify, expected)
        for mode in quantizations if wants_tflite else ():
            tflite_bytes = convert_saved_model(saved_path, mode, examples, int8_io)
            _write_tflite(result, directory, mode, tflite_bytes)
            if x_verify is not None:
                result.verification[mode] = compare_tflite(
                    tflite_bytes, x_verify, expected, mode, None, min_top1_agreement
                )
    if x_verify is None:
        warnings.warn(
            "export_student checked that the artifacts hold only the student's "
            "variables, but did not compare their outputs with Keras: pass "
            "`verify_data` (e.g. `x_test`) to verify them on real inputs.",
            stacklevel=2,
        )
    return result


def _export_elsewhere(student, directory, data, arguments, input_signature):
    """`export_student` from JAX or PyTorch, through a TensorFlow process."""
    if input_signature is not None:
        raise ValueError(
            "`input_signature` applies on TensorFlow only: on the "
            f"{keras.backend.backend()!r} backend the student reaches the "
            "TensorFlow export process as a `.keras` file, which records its "
            "inputs. Build the student on concrete inputs instead."
        )
    arrays = {
        name: None if value is None else as_examples(value, student, 10**9, name)
        for name, value in data.items()
    }
    arguments = dict(arguments, directory=os.path.abspath(directory))
    result = call_in_tensorflow("export_student", student, arrays, arguments)
    return result


def _verification_inputs(student, verify_data):
    """The examples of `verify_data` and the student's outputs, or `None`s."""
    if verify_data is None:
        return None, None
    x_verify = as_examples(verify_data, student, 10**9, "verify_data")
    return x_verify, keras_outputs(student, x_verify)


def _record_saved_model(result, loaded, path, x_verify, expected):
    """Records the kept SavedModel in `result`, verified if there is data."""
    result.saved_model = path
    result.sizes["saved_model"] = directory_size(path)
    result.verification["saved_model"] = {}
    if x_verify is not None:
        result.verification["saved_model"] = verify_saved_model(
            loaded, x_verify, expected, path
        )


def _write_tflite(result, directory, mode, tflite_bytes):
    """Writes `student_<mode>.tflite` to `directory` and records it in `result`."""
    file_path = os.path.join(directory, f"student_{mode}.tflite")
    with open(file_path, "wb") as f:
        f.write(tflite_bytes)
    result.tflite[mode] = file_path
    result.sizes[mode] = len(tflite_bytes)
    result.verification[mode] = {}

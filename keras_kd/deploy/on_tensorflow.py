"""Export from JAX or PyTorch: the same `export_student`, run by TensorFlow.

SavedModel and TFLite conversion, and LiteRT verification, need Keras on
TensorFlow. On another backend `export_student` saves the student as a
`.keras` file (which every backend reads), writes the example data as NumPy
arrays, and runs itself in a child process with `KERAS_BACKEND=tensorflow`.
The child's `ExportResult`, its warnings and its error (same type, same
message) come back as if the export had run here. Custom layers of the
student must be registered (`keras.saving.register_keras_serializable`) in a
module the child can import, as for any `.keras` file. TensorFlow is a
dependency of keras_kd, so it is always installed.

`convert_to_tflite` does the same. The child is `python -m
keras_kd.deploy.on_tensorflow DIRECTORY`, with `DIRECTORY` holding
`model.keras`, `data.npz` and `call.pickle` (the function's name and its
other arguments); it writes `outcome.pickle`.
"""

import os
import pickle
import subprocess
import sys
import tempfile
import warnings

import numpy as np

from keras_kd.deploy.errors import ExportVerificationError, TFLiteConversionError

_ERRORS = {
    error.__name__: error
    for error in (
        ValueError,
        ImportError,
        TFLiteConversionError,
        ExportVerificationError,
        RuntimeError,
    )
}


def call_in_tensorflow(function, model, data, arguments):
    """`keras_kd.deploy.<function>(model, **data, **arguments)` on TensorFlow.

    Args:
        function: The name of a `keras_kd.deploy` function that takes the
            model first: `"export_student"` or `"convert_to_tflite"`.
        model: The built model (a `keras.Model`) on any backend.
        data: `{argument: array, dict of arrays, or None}`: the example
            inputs.
        arguments: The other keyword arguments (picklable).

    Returns:
        What the function returned in the TensorFlow process.
    """
    with tempfile.TemporaryDirectory() as work:
        model.save(os.path.join(work, "model.keras"))
        np.savez(os.path.join(work, "data.npz"), **_flat(data))
        with open(os.path.join(work, "call.pickle"), "wb") as f:
            pickle.dump((function, arguments), f)
        env = dict(os.environ, KERAS_BACKEND="tensorflow")
        process = subprocess.run(
            [sys.executable, "-m", __name__, work],
            env=env,
            capture_output=True,
            text=True,
        )
        outcome_path = os.path.join(work, "outcome.pickle")
        if not os.path.exists(outcome_path):
            raise RuntimeError(
                "The TensorFlow export process failed before it could report "
                f"(exit code {process.returncode}):\n{process.stderr[-3000:]}"
            )
        with open(outcome_path, "rb") as f:
            outcome = pickle.load(f)
    for message in outcome["warnings"]:
        warnings.warn(message, stacklevel=3)
    if "error" in outcome:
        raise _ERRORS.get(outcome["error"], RuntimeError)(outcome["message"])
    return outcome["result"]


# `argument<SEPARATOR>input` names an array of a dict of named inputs in the
# `.npz` file, which holds flat arrays only.
_SEPARATOR = "::"


def _flat(data):
    """`data` as flat `{name: array}`, dicts of inputs under joined names."""
    flat = {}
    for argument, value in data.items():
        if isinstance(value, dict):
            flat.update({f"{argument}{_SEPARATOR}{k}": v for k, v in value.items()})
        elif value is not None:
            flat[argument] = value
    return flat


def _nested(flat):
    """The inverse of `_flat`."""
    data = {}
    for name, value in flat.items():
        argument, _, key = name.partition(_SEPARATOR)
        if key:
            data.setdefault(argument, {})[key] = value
        else:
            data[argument] = value
    return data


def _child(work) -> None:
    """Runs the saved call on `work/model.keras`; pickles the outcome."""
    import keras

    from keras_kd import deploy

    with open(os.path.join(work, "call.pickle"), "rb") as f:
        function, arguments = pickle.load(f)
    with np.load(os.path.join(work, "data.npz")) as saved:
        data = _nested({name: saved[name] for name in saved.files})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        try:
            model = keras.saving.load_model(os.path.join(work, "model.keras"))
            outcome = {"result": getattr(deploy, function)(model, **arguments, **data)}
        except Exception as error:  # reported to the parent, which re-raises it
            outcome = {"error": type(error).__name__, "message": str(error)}
    outcome["warnings"] = [
        str(w.message) for w in caught if issubclass(w.category, UserWarning)
    ]
    with open(os.path.join(work, "outcome.pickle"), "wb") as f:
        pickle.dump(outcome, f)


if __name__ == "__main__":
    _child(sys.argv[1])

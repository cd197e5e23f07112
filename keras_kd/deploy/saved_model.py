"""The student as a TensorFlow SavedModel: written, checked, verified.

`export_saved_model` writes it with `model.export`;
`check_saved_model_variables` proves it holds the student's variables and
nothing else (no teacher variable, no stray checkpoint tensor);
`verify_saved_model` compares its `serving_default` outputs with Keras.
"""

import os

import keras
import numpy as np
import tensorflow as tf

from keras_kd.deploy.errors import ExportVerificationError
from keras_kd.deploy.inputs import VERIFY_BATCH, num_examples, rows

# The SavedModel's directory name, inside the export directory.
SAVED_MODEL_DIR = "saved_model"
_SAVED_MODEL_TOLERANCE = 1e-5


def export_saved_model(model, path, input_signature=None):
    """Writes `model` as a SavedModel with a `serving_default` signature."""
    # Keras 3's `model.save` only writes `.keras`/`.h5`; `export` writes a
    # SavedModel with a `serve` endpoint and a `serving_default` signature.
    model.export(
        path, format="tf_saved_model", verbose=False, input_signature=input_signature
    )


def _variable_signature(variables):
    return sorted(
        (tuple(int(d) for d in v.shape), tf.as_dtype(v.dtype).name) for v in variables
    )


def check_saved_model_variables(path, student, teacher=None):
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


def verify_saved_model(loaded, x, expected, path):
    """Raises unless the loaded SavedModel reproduces `expected` on `x`.

    Runs `serving_default` on the first batch of `x` (an array, or a dict
    of arrays passed by input name); returns `max_abs_diff` and
    `num_examples`.
    """
    x, expected = rows(x, 0, VERIFY_BATCH), expected[:VERIFY_BATCH]
    serve = loaded.signatures["serving_default"]
    if isinstance(x, dict):
        outputs = serve(**{name: tf.constant(values) for name, values in x.items()})
    else:
        outputs = serve(tf.constant(x))
    actual = np.asarray(next(iter(outputs.values())), dtype="float32")
    max_abs_diff = float(np.max(np.abs(actual - expected)))
    if max_abs_diff > _SAVED_MODEL_TOLERANCE * max(1.0, np.max(np.abs(expected))):
        raise ExportVerificationError(
            f"The SavedModel at {path!r} disagrees with the Keras student: max "
            f"|difference| {max_abs_diff:.3g} on {num_examples(x)} inputs."
        )
    return {"max_abs_diff": max_abs_diff, "num_examples": num_examples(x)}


def directory_size(path):
    """Bytes of all files below `path` (a SavedModel is a directory)."""
    return sum(
        os.path.getsize(os.path.join(root, name))
        for root, _, names in os.walk(path)
        for name in names
    )

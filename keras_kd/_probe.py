"""`fit`'s eager check before training: a few examples through both models.

`probe_batch` reads a handful of examples (and their labels) from any data
`fit` takes without consuming it; `forward` runs a model on them and turns a
failure, or string inputs that no model here preprocesses, into a
`ValueError` that names the inputs; `check_labels` checks the labels against
the outputs. The Distiller runs them once, before `super().fit`.
"""

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from keras_kd._training import is_sparse

# Examples that go through both models before `fit`, to check them eagerly:
# few, since a language model's probe logits are (examples, time, vocab).
_PROBE_SIZE = 4


def _first(structure):
    return keras.tree.map_structure(lambda a: a[:_PROBE_SIZE], structure)


def probe_batch(x, y=None):
    """`(inputs, labels)` to check models and data eagerly before `fit`.

    `inputs` holds a few examples; `labels` all of an array's labels, or the
    first batch's of a dataset. Returns `None` when the data cannot be peeked
    at without consuming it (a Python generator). Raises `ValueError` when
    the data is empty.
    """
    if isinstance(x, tf.data.Dataset):
        for batch in x.take(1):
            inputs, labels, _ = keras.utils.unpack_x_y_sample_weight(batch)
            return _first(inputs), labels
        raise ValueError(
            "The dataset passed to `fit` is empty: it yielded no batch. Check "
            "the pipeline (a `filter`, `take` or `skip` may remove everything)."
        )
    if isinstance(x, keras.utils.PyDataset):
        if len(x) == 0:
            raise ValueError("The `PyDataset` passed to `fit` is empty (len 0).")
        inputs, labels, _ = keras.utils.unpack_x_y_sample_weight(x[0])
        return _first(inputs), labels
    if x is None:
        raise ValueError("`fit` needs data: got `x=None`.")
    leaves = keras.tree.flatten(x)
    if leaves and all(hasattr(leaf, "shape") for leaf in leaves):
        if any(leaf.shape[0] == 0 for leaf in leaves):
            raise ValueError(
                "The data passed to `fit` is empty: "
                f"inputs with shapes {[tuple(leaf.shape) for leaf in leaves]}."
            )
        return _first(x), y
    return None


def check_labels(y, logits) -> None:
    """`ValueError` for concrete labels that do not fit `logits`.

    Sparse integer labels must lie in `[0, classes)` (labels below 0 mark "no
    label"), with the shape of the positions; one-hot labels must have the
    shape of the logits.
    """
    if y is None or not hasattr(y, "dtype"):
        return
    classes, positions = logits.shape[-1], tuple(logits.shape[:-1])
    shape = tuple(y.shape)
    if is_sparse(y):
        classifier_column = len(positions) == 1 and shape[1:] == (1,)
        if shape[1:] != positions[1:] and not classifier_column:
            raise ValueError(
                f"Labels of shape {shape} do not match outputs of shape "
                f"{tuple(logits.shape)}: sparse labels need one class index per "
                f"position, shape {positions}."
            )
        values = np.asarray(ops.convert_to_numpy(y))
        if values.size and values.max() >= classes:
            raise ValueError(
                f"Label {int(values.max())} is out of range: the models output "
                f"{classes} classes, so sparse labels must be in [0, {classes}) "
                "(or below 0 for no label)."
            )
    elif shape[1:] != tuple(logits.shape[1:]):
        raise ValueError(
            f"Labels of shape {shape} do not match outputs of shape "
            f"{tuple(logits.shape)}: one-hot or soft labels need the outputs' "
            "shape; sparse labels must be integers."
        )


def _holds_text(inputs):
    return any(
        getattr(getattr(leaf, "dtype", None), "kind", None) in ("U", "S", "O")
        or getattr(leaf, "dtype", None) == "string"
        for leaf in keras.tree.flatten(inputs)
    )


def forward(model, inputs, role: str):
    """`model(inputs, training=False)`, re-raising a failure as a `ValueError`.

    String inputs are refused first: the Distiller calls both models on
    token ids and never runs a KerasHub task's own `preprocessor`.
    """
    if _holds_text(inputs):
        raise ValueError(
            f"The {role} got string inputs, but the Distiller calls the models "
            "on token ids and never runs their own preprocessors. Preprocess "
            "once, in the data pipeline, with the preprocessor both models "
            "share: `x = student.preprocessor(texts)` for arrays, or "
            "`dataset.map(student.preprocessor)`."
        )
    try:
        return model(inputs, training=False)
    except Exception as error:
        shapes = keras.tree.map_structure(
            lambda leaf: tuple(getattr(leaf, "shape", ())), inputs
        )
        raise ValueError(
            f"The {role} failed on a batch of the training data with input "
            f"shape(s) {shapes}: {type(error).__name__}: {error}"
        ) from error

"""What the deployment checks read off a model and its example data.

The model to export (a `Distiller`'s student), whether it is built, and the
example inputs, read from an array or a `tf.data.Dataset` and checked
against the model's single input shape, or, for a model of named inputs (a
KerasHub task: `token_ids`, `padding_mask`, ...), a dict of arrays with one
per input; `keras_outputs` is the Keras side that every exported artifact is
compared with.
"""

import keras
import numpy as np
import tensorflow as tf

# Examples per call when the checks run a model: Keras `predict`, the
# SavedModel signature and the LiteRT interpreter alike.
VERIFY_BATCH = 1000


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


def check_built(model):
    """Raises `ValueError`, saying how to build it, if `model` is not built."""
    if not model.built:
        raise ValueError(
            f"Model {model.name!r} is not built, so it has no weights and no "
            "input shape to export. Build it first: start a Sequential model "
            "with `keras.Input(shape=...)`, call `model.build(input_shape)`, "
            "or call the model on a batch of data (training it does this)."
        )


def _single_input_shape(model):
    """The static shape of the model's single input, without the batch axis."""
    inputs = getattr(model, "inputs", None)
    if not inputs or len(inputs) != 1:
        return None
    return tuple(inputs[0].shape[1:])


def named_inputs(model):
    """`{name: input dtype}` of a model of dict inputs, or None for others."""
    try:
        structure = model.input
    except (AttributeError, ValueError):  # subclassed models have no graph input
        return None
    if not isinstance(structure, dict):
        return None
    return {name: tensor.dtype for name, tensor in sorted(structure.items())}


def num_examples(x):
    """The examples in `x`: an array, or a dict of arrays."""
    return len(next(iter(x.values()))) if isinstance(x, dict) else len(x)


def rows(x, start, stop):
    """Examples `start:stop` of an array or a dict of arrays."""
    return keras.tree.map_structure(lambda array: array[start:stop], x)


def _named_examples(data, dtypes, limit, argument):
    """A dict of arrays for a model of named inputs, each in its input's dtype
    (a KerasHub `padding_mask` of booleans becomes the model's int32)."""
    if sorted(data) != sorted(dtypes):
        raise ValueError(
            f"`{argument}` has inputs {sorted(data)}, but the model takes "
            f"{sorted(dtypes)}: pass one array per input."
        )
    examples = {
        name: np.asarray(data[name]).astype(dtype)[:limit]
        for name, dtype in dtypes.items()
    }
    if len({len(values) for values in examples.values()}) != 1:
        raise ValueError(f"The arrays of `{argument}` have different lengths.")
    if num_examples(examples) == 0:
        raise ValueError(f"`{argument}` is empty: it must hold at least one input.")
    return examples


def as_examples(data, model, limit, argument):
    """Reads up to `limit` input examples from an array or a `tf.data.Dataset`.

    Dataset elements may be `x` or `(x, y[, sample_weight])`, batched or not;
    labels are ignored. Returns one float32 array `(n, ...)`. For a model
    of named inputs, `data` is a dict of arrays, one per input; returns the
    dict, each array in its input's dtype.
    """
    dtypes = named_inputs(model)
    if dtypes is not None and isinstance(data, dict):
        return _named_examples(data, dtypes, limit, argument)
    input_shape = _single_input_shape(model)
    if isinstance(data, tf.data.Dataset):
        examples = _dataset_examples(data, input_shape, limit, argument)
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


def _dataset_examples(dataset, input_shape, limit, argument):
    """The inputs of `dataset`'s elements, concatenated, once `limit` are read."""
    arrays, count = [], 0
    for element in dataset:
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
    return np.concatenate(arrays) if arrays else np.zeros((0,))


def _shapes_compatible(shape, expected):
    return len(shape) == len(expected) and all(
        want is None or got == want for got, want in zip(shape, expected)
    )


def keras_outputs(model, x):
    """`model.predict(x)` in float32, batched as the TFLite checks run; `x`
    an array or, for named inputs, a dict of arrays."""
    outputs = model.predict(x, batch_size=VERIFY_BATCH, verbose=0)
    return np.asarray(outputs, dtype="float32")

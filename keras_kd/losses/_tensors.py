"""Tensor helpers shared by the feature and relation losses; float32 throughout."""

from keras import ops


def float32(x):
    return ops.cast(ops.convert_to_tensor(x), "float32")


def flatten(x):
    """`(batch, ...)` to `(batch, features)`, float32."""
    x = float32(x)
    return ops.reshape(x, (ops.shape(x)[0], -1))


def l2_normalize(x, axis=-1):
    """`x / ||x||` along `axis`; a zero vector stays zero, with zero gradient.

    Dead ReLU units make zero rows common (an empty attention map, two
    examples with equal features); dividing by a small epsilon instead would
    give them gradients of order 1/epsilon.
    """
    squared = ops.sum(ops.square(x), axis=axis, keepdims=True)
    positive = ops.greater(squared, 0.0)
    norm = ops.sqrt(ops.where(positive, squared, 1.0))
    return ops.where(positive, x / norm, 0.0)


def static_shape(shape):
    return tuple(None if d is None else int(d) for d in shape)

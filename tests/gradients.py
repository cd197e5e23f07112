"""Value and gradient of a scalar function on the current Keras backend."""

import keras
import numpy as np


def value_and_gradient(fn, x):
    """`(fn(x), d fn / d x)` as a float and a float32 NumPy array."""
    x = np.asarray(x, "float32")
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        value, gradient = jax.value_and_grad(fn)(jax.numpy.asarray(x))
    elif backend == "torch":
        import torch

        variable = torch.tensor(x, requires_grad=True)
        value = fn(variable)
        value.backward()
        value, gradient = value.detach(), variable.grad
    else:
        import tensorflow as tf

        variable = tf.Variable(x)
        with tf.GradientTape() as tape:
            value = fn(variable)
        gradient = tape.gradient(value, variable)
    return float(keras.ops.convert_to_numpy(value)), np.asarray(
        keras.ops.convert_to_numpy(gradient)
    )

"""Test selection by Keras backend.

The suite runs on every backend (`KERAS_BACKEND=tensorflow|jax|torch
pytest`). A test marked `tensorflow_only` checks what only TensorFlow has
(`tf.distribute`, SavedModel and TFLite export, `tf.function` details) and is
skipped on the other backends.
"""

import keras
import pytest


def pytest_collection_modifyitems(config, items):
    backend = keras.backend.backend()
    if backend == "tensorflow":
        return
    skip = pytest.mark.skip(reason=f"TensorFlow only (this run: {backend})")
    for item in items:
        if "tensorflow_only" in item.keywords:
            item.add_marker(skip)

"""Small reference models used by the examples, tutorials, tests and benchmarks.

All of them output logits (no softmax), as `keras_kd.Distiller` expects.
"""

import keras
from keras import layers


def mnist_cnn(filters=(256, 512), num_classes=10, name=None):
    """The keras.io "Knowledge Distillation" CNN for 28x28x1 images.

    Two strided 3x3 convolutions with LeakyReLU and a max-pool between them,
    then a dense logits layer. `filters=(256, 512)` is the example's teacher,
    `(16, 32)` its student.

    Args:
        filters: Channels of the two convolutions. Defaults to `(256, 512)`.
        num_classes: Output logits. Defaults to `10`.
        name: Model name. Defaults to `None`, `"cnn_<f1>_<f2>"`.

    Returns:
        A `keras.Sequential` model, built.
    """
    first, second = filters
    return keras.Sequential(
        [
            keras.Input(shape=(28, 28, 1)),
            layers.Conv2D(first, (3, 3), strides=(2, 2), padding="same"),
            layers.LeakyReLU(negative_slope=0.2),
            layers.MaxPooling2D(pool_size=(2, 2), strides=(1, 1), padding="same"),
            layers.Conv2D(second, (3, 3), strides=(2, 2), padding="same"),
            layers.Flatten(),
            layers.Dense(num_classes),
        ],
        name=name or f"cnn_{first}_{second}",
    )


def mnist_mlp(units=(100, 100), num_classes=10, name=None):
    """A ReLU multilayer perceptron on flattened 28x28x1 images.

    Args:
        units: Width of each hidden layer. Defaults to `(100, 100)`.
        num_classes: Output logits. Defaults to `10`.
        name: Model name. Defaults to `None`, `"mlp_<units>"`.

    Returns:
        A `keras.Sequential` model, built.
    """
    hidden = [layers.Dense(width, activation="relu") for width in units]
    return keras.Sequential(
        [
            keras.Input(shape=(28, 28, 1)),
            layers.Flatten(),
            *hidden,
            layers.Dense(num_classes),
        ],
        name=name or "mlp_" + "_".join(str(width) for width in units),
    )


def mnist_convnet(filters=(32, 64), units=128, num_classes=10, name="convnet"):
    """A standard small convnet for 28x28x1 images, a strong MNIST teacher.

    Two ReLU 3x3 convolutions, a 2x2 max-pool, dropout 0.25, a ReLU dense
    layer, dropout 0.5, and a dense logits layer (the Keras "mnist_convnet"
    shape).

    Args:
        filters: Channels of the two convolutions. Defaults to `(32, 64)`.
        units: Width of the hidden dense layer. Defaults to `128`.
        num_classes: Output logits. Defaults to `10`.
        name: Model name. Defaults to `"convnet"`.

    Returns:
        A `keras.Sequential` model, built.
    """
    first, second = filters
    return keras.Sequential(
        [
            keras.Input(shape=(28, 28, 1)),
            layers.Conv2D(first, 3, activation="relu"),
            layers.Conv2D(second, 3, activation="relu"),
            layers.MaxPooling2D(2),
            layers.Dropout(0.25),
            layers.Flatten(),
            layers.Dense(units, activation="relu"),
            layers.Dropout(0.5),
            layers.Dense(num_classes),
        ],
        name=name,
    )

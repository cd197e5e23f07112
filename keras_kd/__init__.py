"""keras_kd: knowledge distillation for Keras 3 and TensorFlow."""

from keras_kd import datasets, losses, models
from keras_kd.distiller import Distiller
from keras_kd.losses import KDLoss, kd_loss
from keras_kd.version import __version__

__all__ = [
    "Distiller",
    "KDLoss",
    "__version__",
    "datasets",
    "kd_loss",
    "losses",
    "models",
]

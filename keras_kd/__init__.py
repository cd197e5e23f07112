"""keras_kd: knowledge distillation for Keras 3 and TensorFlow."""

from keras_kd import datasets, losses, models
from keras_kd.caching import attach_teacher_logits, cache_teacher_outputs
from keras_kd.distiller import Distiller
from keras_kd.losses import KDLoss, kd_loss
from keras_kd.version import __version__

__all__ = [
    "Distiller",
    "attach_teacher_logits",
    "cache_teacher_outputs",
    "KDLoss",
    "__version__",
    "datasets",
    "kd_loss",
    "losses",
    "models",
]

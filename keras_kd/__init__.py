"""keras_kd: knowledge distillation for Keras 3 and TensorFlow."""

from keras_kd import datasets, export, losses, models, report
from keras_kd.caching import attach_teacher_logits, cache_teacher_outputs
from keras_kd.distiller import Distiller
from keras_kd.export import (
    ExportResult,
    ExportVerificationError,
    TFLiteConversionError,
    convert_to_tflite,
    export_student,
    tflite_predict,
    verify_tflite,
)
from keras_kd.losses import KDLoss, kd_loss
from keras_kd.report import compression_report, format_report, plot_report
from keras_kd.version import __version__

__all__ = [
    "Distiller",
    "ExportResult",
    "ExportVerificationError",
    "KDLoss",
    "TFLiteConversionError",
    "__version__",
    "attach_teacher_logits",
    "cache_teacher_outputs",
    "compression_report",
    "convert_to_tflite",
    "datasets",
    "export",
    "export_student",
    "format_report",
    "kd_loss",
    "losses",
    "models",
    "plot_report",
    "report",
    "tflite_predict",
    "verify_tflite",
]

"""Deployment: the student as a SavedModel and `.tflite` files, verified and measured.

- `export`: `export_student`, the orchestration, and its `ExportResult`.
- `saved_model`: writing the SavedModel and checking it is the student alone.
- `litert`: TFLite conversion, the LiteRT interpreter, `verify_tflite`.
- `report`: `compression_report`, teacher and students side by side.
- `inputs`: the model to export and its example data; `errors`: the errors.
"""

from keras_kd.deploy.errors import ExportVerificationError, TFLiteConversionError
from keras_kd.deploy.export import ExportResult, export_student
from keras_kd.deploy.litert import (
    convert_to_tflite,
    require_litert,
    tflite_predict,
    verify_tflite,
)
from keras_kd.deploy.report import compression_report, format_report, plot_report

__all__ = [
    "compression_report",
    "convert_to_tflite",
    "export_student",
    "ExportResult",
    "ExportVerificationError",
    "format_report",
    "plot_report",
    "require_litert",
    "tflite_predict",
    "TFLiteConversionError",
    "verify_tflite",
]

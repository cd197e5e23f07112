"""The errors of the deployment unit: a failed conversion, a failed check."""


class TFLiteConversionError(ValueError):
    """TFLite cannot convert the model, for example because of an unsupported op."""


class ExportVerificationError(RuntimeError):
    """An exported artifact does not reproduce the Keras student."""

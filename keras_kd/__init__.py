"""keras_kd: knowledge distillation for Keras 3 and TensorFlow."""

from keras_kd import (
    chains,
    datasets,
    ensembles,
    export,
    features,
    losses,
    models,
    mutual,
    report,
)
from keras_kd.caching import attach_teacher_logits, cache_teacher_outputs
from keras_kd.chains import ChainStage, distill_chain
from keras_kd.distiller import Distiller
from keras_kd.ensembles import LabelMergingTeacher, TeacherEnsemble
from keras_kd.export import (
    ExportResult,
    ExportVerificationError,
    TFLiteConversionError,
    convert_to_tflite,
    export_student,
    tflite_predict,
    verify_tflite,
)
from keras_kd.losses import (
    DKD,
    RKD,
    AttentionTransfer,
    DistillationLoss,
    FeatureLoss,
    HintLoss,
    KDLoss,
    SimilarityPreserving,
    attention_transfer_loss,
    dkd_loss,
    hint_loss,
    kd_loss,
    rkd_angle_loss,
    rkd_distance_loss,
    similarity_preserving_loss,
)
from keras_kd.mutual import MutualLearning
from keras_kd.report import compression_report, format_report, plot_report
from keras_kd.version import __version__

__all__ = [
    "attach_teacher_logits",
    "attention_transfer_loss",
    "AttentionTransfer",
    "cache_teacher_outputs",
    "chains",
    "ChainStage",
    "compression_report",
    "convert_to_tflite",
    "datasets",
    "distill_chain",
    "Distiller",
    "DKD",
    "DistillationLoss",
    "dkd_loss",
    "ensembles",
    "export",
    "export_student",
    "ExportResult",
    "ExportVerificationError",
    "FeatureLoss",
    "features",
    "format_report",
    "hint_loss",
    "HintLoss",
    "kd_loss",
    "KDLoss",
    "LabelMergingTeacher",
    "losses",
    "models",
    "mutual",
    "MutualLearning",
    "plot_report",
    "report",
    "RKD",
    "rkd_angle_loss",
    "rkd_distance_loss",
    "similarity_preserving_loss",
    "SimilarityPreserving",
    "TeacherEnsemble",
    "tflite_predict",
    "TFLiteConversionError",
    "verify_tflite",
    "__version__",
]

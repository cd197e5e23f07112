"""Distillation losses: pure `keras.ops` functions and `keras.losses.Loss` classes.

- `logits`: KD (`kd_loss`, `KDLoss`) and DKD (`dkd_loss`, `DKD`), on the
  outputs of both models, subclasses of `DistillationLoss`;
- `features`: hints (`hint_loss`, `HintLoss`) and attention transfer
  (`attention_transfer_loss`, `AttentionTransfer`), per example;
- `relations`: RKD (`rkd_distance_loss`, `rkd_angle_loss`, `RKD`) and
  similarity preservation (`similarity_preserving_loss`,
  `SimilarityPreserving`), per batch;
- `base`: the two base types, `DistillationLoss` and `FeatureLoss`.
"""

from keras_kd.losses.base import DistillationLoss, FeatureLoss
from keras_kd.losses.features import (
    AttentionTransfer,
    HintLoss,
    attention_map,
    attention_transfer_loss,
    hint_loss,
)
from keras_kd.losses.logits import DKD, KDLoss, dkd_loss, kd_loss, tempered_log_softmax
from keras_kd.losses.relations import (
    RKD,
    SimilarityPreserving,
    rkd_angle_loss,
    rkd_distance_loss,
    similarity_preserving_loss,
)

__all__ = [
    "DKD",
    "RKD",
    "AttentionTransfer",
    "DistillationLoss",
    "FeatureLoss",
    "HintLoss",
    "KDLoss",
    "SimilarityPreserving",
    "attention_map",
    "attention_transfer_loss",
    "dkd_loss",
    "hint_loss",
    "kd_loss",
    "rkd_angle_loss",
    "rkd_distance_loss",
    "similarity_preserving_loss",
    "tempered_log_softmax",
]

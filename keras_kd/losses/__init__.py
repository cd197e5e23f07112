"""Distillation losses: pure `keras.ops` functions and `keras.losses.Loss` classes.

- `logits`: KD (`kd_loss`, `KDLoss`) and DKD (`dkd_loss`, `DKD`), on the
  outputs of both models, subclasses of `DistillationLoss`, with logit
  standardization (`standardize_logits`, `standardize=True`);
- `dist`: DIST (`dist_loss`, `DIST`), correlations of the tempered outputs;
- `features`: hints (`hint_loss`, `HintLoss`) and attention transfer
  (`attention_transfer_loss`, `AttentionTransfer`), per example;
- `relations`: RKD (`rkd_distance_loss`, `rkd_angle_loss`, `RKD`) and
  similarity preservation (`similarity_preserving_loss`,
  `SimilarityPreserving`), per batch;
- `tokens`: forward KL, reverse KL and JSD(beta) per token of a language
  model (`token_divergence`, `TokenDivergence`), in chunks if asked, and
  against a top-k teacher cache (`top_k_divergence`);
- `base`: the two base types, `DistillationLoss` and `FeatureLoss`.
"""

from keras_kd.losses.base import DistillationLoss, FeatureLoss
from keras_kd.losses.dist import DIST, dist_loss, pearson_correlation
from keras_kd.losses.features import (
    AttentionTransfer,
    HintLoss,
    attention_map,
    attention_transfer_loss,
    hint_loss,
)
from keras_kd.losses.logits import (
    DKD,
    KDLoss,
    dkd_loss,
    kd_loss,
    standardize_logits,
    tempered_log_softmax,
)
from keras_kd.losses.relations import (
    RKD,
    SimilarityPreserving,
    rkd_angle_loss,
    rkd_distance_loss,
    similarity_preserving_loss,
)
from keras_kd.losses.tokens import (
    TokenDivergence,
    token_divergence,
    top_k_divergence,
)

__all__ = [
    "DIST",
    "DKD",
    "RKD",
    "AttentionTransfer",
    "DistillationLoss",
    "FeatureLoss",
    "HintLoss",
    "KDLoss",
    "SimilarityPreserving",
    "TokenDivergence",
    "attention_map",
    "attention_transfer_loss",
    "dist_loss",
    "dkd_loss",
    "hint_loss",
    "kd_loss",
    "pearson_correlation",
    "top_k_divergence",
    "rkd_angle_loss",
    "rkd_distance_loss",
    "similarity_preserving_loss",
    "standardize_logits",
    "tempered_log_softmax",
    "token_divergence",
]

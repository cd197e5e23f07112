"""Relation losses: RKD and similarity-preserving KD, one value per batch.

They compare the relations between the examples of a batch (distances,
angles, similarities) and return one scalar: sample weights do not apply to
them, and under `tf.distribute` each replica computes them on its own share
of the batch; the distiller averages them over the replicas. All math runs in
float32, whatever the input dtype.
"""

import keras
from keras import ops

from keras_kd._validation import check_nonnegative
from keras_kd.losses._tensors import flatten, l2_normalize
from keras_kd.losses.base import FeatureLoss

# Floor of the squared pairwise distances before their square root, as in the
# RKD authors' code: keeps the gradient finite where two examples coincide.
_EPSILON = 1e-12


def _smooth_l1(difference):
    """Huber loss with delta 1: `0.5 d²` for `|d| < 1`, `|d| - 0.5` beyond."""
    magnitude = ops.abs(difference)
    quadratic = ops.minimum(magnitude, 1.0)
    return 0.5 * ops.square(quadratic) + (magnitude - quadratic)


def _pairwise_distances(features):
    """Euclidean distances `(batch, batch)`, zero on the diagonal, NaN-free."""
    features = features - ops.mean(features, axis=0, keepdims=True)
    squared = ops.sum(ops.square(features), axis=-1)
    gram = ops.matmul(features, ops.transpose(features))
    distances2 = squared[:, None] + squared[None, :] - 2.0 * gram
    off_diagonal = 1.0 - ops.eye(ops.shape(features)[0], dtype="float32")
    return ops.sqrt(ops.maximum(distances2, _EPSILON)) * off_diagonal


def _normalized_distances(features):
    distances = _pairwise_distances(features)
    batch = ops.cast(ops.shape(distances)[0], "float32")
    mean = ops.divide_no_nan(ops.sum(distances), batch * (batch - 1.0))
    return ops.divide_no_nan(distances, mean)


def rkd_distance_loss(teacher_features, student_features):
    """RKD distance loss: Huber loss between mean-normalized pairwise distances.

    With `e` the features flattened to `(batch, d)`,
    `psi[i, j] = ||e_i - e_j||_2 / mu`, `mu` the mean distance over the
    `b(b-1)` pairs `i != j`; then
    `loss = mean_{i, j} huber(psi_s[i, j] - psi_t[i, j])` over all `b²`
    ordered pairs (the diagonal contributes 0), with the Huber (smooth L1)
    loss of delta 1. This is the authors' code. Widths may differ. One value
    per batch: it compares examples with each other.

    Args:
        teacher_features: Tensor `(batch, ...)`.
        student_features: Tensor `(batch, ...)`, any width.

    Returns:
        A float32 scalar.

    Example:

    >>> import numpy as np, keras_kd
    >>> t = np.array([[0.0, 0.0], [3.0, 4.0], [0.0, 8.0]])
    >>> round(float(keras_kd.losses.rkd_distance_loss(t, 2 * t)), 6)  # same shape
    0.0

    Reference:
        Park, Kim, Lu, Cho, "Relational Knowledge Distillation", CVPR 2019,
        https://arxiv.org/abs/1904.05068
    """
    teacher = _normalized_distances(flatten(teacher_features))
    student = _normalized_distances(flatten(student_features))
    return ops.mean(_smooth_l1(student - teacher))


def _angles(features):
    """`cos` of the angle at `e_i` between `e_j` and `e_k`, `(b, b, b)`.

    `angle[i, j, k] = <normalize(e_j - e_i), normalize(e_k - e_i)>`, 0 when
    `e_j == e_i` or `e_k == e_i` (`j == i` in particular). One anchor `i` at
    a time, so that memory is `b² + b d`, not `b² d`; the differences are
    exact, so coinciding examples give exactly 0, which a Gram-matrix
    shortcut would not.
    """

    def at_anchor(anchor):
        directions = l2_normalize(features - anchor)
        return ops.matmul(directions, ops.transpose(directions))

    return ops.map(at_anchor, features)


def rkd_angle_loss(teacher_features, student_features):
    """RKD angle loss: Huber loss between the angles of example triplets.

    With `e` the features flattened to `(batch, d)`,
    `psi[i, j, k] = <normalize(e_j - e_i), normalize(e_k - e_i)>`, the
    cosine of the angle at `e_i` (0 when `e_j = e_i` or `e_k = e_i`); then
    `loss = mean_{i, j, k} huber(psi_s - psi_t)` over all `b³` triplets, with
    the Huber (smooth L1) loss of delta 1, as in the authors' code. One value
    per batch; widths may differ.

    Args:
        teacher_features: Tensor `(batch, ...)`.
        student_features: Tensor `(batch, ...)`, any width.

    Returns:
        A float32 scalar.

    Example:

    >>> import numpy as np, keras_kd
    >>> t = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    >>> round(float(keras_kd.losses.rkd_angle_loss(t, 3 * t + 1)), 6)  # similar
    0.0

    Reference:
        Park, Kim, Lu, Cho, "Relational Knowledge Distillation", CVPR 2019,
        https://arxiv.org/abs/1904.05068
    """
    teacher = _angles(flatten(teacher_features))
    student = _angles(flatten(student_features))
    return ops.mean(_smooth_l1(student - teacher))


def similarity_preserving_loss(teacher_features, student_features):
    """Similarity-preserving KD: distance between normalized batch Gram matrices.

    With `F` the features flattened to `(b, d)`, `G = F F^T` (`b x b`, the
    similarity of every pair of examples) and `G~ = G / ||G||_row`, each row
    divided by its L2 norm,
    `loss = ||G~_t - G~_s||_F² / b²`. Widths may differ. One value per batch.

    Args:
        teacher_features: Tensor `(batch, ...)`.
        student_features: Tensor `(batch, ...)`, any width.

    Returns:
        A float32 scalar.

    Example:

    >>> import numpy as np, keras_kd
    >>> t = np.array([[1.0, 0.0], [0.0, 1.0]])
    >>> s = np.ones((2, 4))
    >>> round(float(keras_kd.losses.similarity_preserving_loss(t, s)), 4)
    0.2929

    Reference:
        Tung, Mori, "Similarity-Preserving Knowledge Distillation", ICCV 2019,
        https://arxiv.org/abs/1907.09682
    """

    def normalized_gram(features):
        features = flatten(features)
        return l2_normalize(ops.matmul(features, ops.transpose(features)))

    difference = normalized_gram(teacher_features) - normalized_gram(student_features)
    batch = ops.cast(ops.shape(difference)[0], "float32")
    return ops.sum(ops.square(difference)) / (batch * batch)


@keras.saving.register_keras_serializable(package="keras_kd")
class RKD(FeatureLoss):
    """Relational KD: distance and angle structure of the batch's features.

    `loss = distance_weight * rkd_distance_loss(t, s) + angle_weight *
    rkd_angle_loss(t, s)`, added as `weight * loss`; one value per batch
    (see `keras_kd.losses.rkd_distance_loss` and `rkd_angle_loss`). Widths
    and shapes may differ: each example's features are flattened. Batch-level:
    sample weights do not apply, and under `tf.distribute` each replica
    computes it on its own part of the batch (the distiller averages the
    replicas), so the value depends on the per-replica batch size.

    Args:
        teacher_layer_name: Name of the teacher's layer. Defaults to `None`,
            the teacher's logits.
        student_layer_name: Name of the student's layer. Defaults to `None`,
            the student's logits.
        distance_weight: Weight of the distance loss, >= 0. Defaults to
            `25.0` (the paper's).
        angle_weight: Weight of the angle loss, >= 0. Defaults to `50.0` (the
            paper's).
        weight: Weight of the whole term, >= 0. Defaults to `1.0`.
        reduction: Unused (the loss is one scalar per batch). Defaults to
            `"sum_over_batch_size"`.
        name: Loss name and log key. Defaults to `"rkd"`.
        dtype: Dtype of the computation. Defaults to `"float32"`.

    Example:

    ```python
    distiller.compile(optimizer="adam", feature_losses=[keras_kd.losses.RKD()])
    ```

    Reference:
        Park, Kim, Lu, Cho, "Relational Knowledge Distillation", CVPR 2019,
        https://arxiv.org/abs/1904.05068
    """

    batch_level = True

    def __init__(
        self,
        teacher_layer_name=None,
        student_layer_name=None,
        distance_weight=25.0,
        angle_weight=50.0,
        weight=1.0,
        reduction="sum_over_batch_size",
        name="rkd",
        dtype="float32",
    ):
        distance_weight = check_nonnegative(distance_weight, "distance_weight")
        angle_weight = check_nonnegative(angle_weight, "angle_weight")
        super().__init__(
            teacher_layer_name, student_layer_name, weight, reduction, name, dtype
        )
        self.distance_weight = distance_weight
        self.angle_weight = angle_weight

    def call(self, y_true, y_pred):
        value = ops.zeros((), "float32")
        if self.distance_weight:
            value += self.distance_weight * rkd_distance_loss(y_true, y_pred)
        if self.angle_weight:
            value += self.angle_weight * rkd_angle_loss(y_true, y_pred)
        return value

    def get_config(self):
        config = super().get_config()
        config.update(
            {"distance_weight": self.distance_weight, "angle_weight": self.angle_weight}
        )
        return config


@keras.saving.register_keras_serializable(package="keras_kd")
class SimilarityPreserving(FeatureLoss):
    """Similarity-preserving KD: the batch's pairwise similarities.

    `loss = ||G~_t - G~_s||_F² / b²` with `G = F F^T` row-L2-normalized,
    added as `weight * loss`; one value per batch (see
    `keras_kd.losses.similarity_preserving_loss`). Widths and shapes may
    differ. Batch-level: sample weights do not apply, and under
    `tf.distribute` each replica computes it on its own part of the batch
    (the distiller averages the replicas).

    Args:
        teacher_layer_name: Name of the teacher's layer. Defaults to `None`,
            the teacher's logits.
        student_layer_name: Name of the student's layer. Defaults to `None`,
            the student's logits.
        weight: Weight of this term, >= 0. Defaults to `3000.0` (the paper's
            gamma on CIFAR-10).
        reduction: Unused (the loss is one scalar per batch). Defaults to
            `"sum_over_batch_size"`.
        name: Loss name and log key. Defaults to `"similarity_preserving"`.
        dtype: Dtype of the computation. Defaults to `"float32"`.

    Example:

    ```python
    distiller.compile(
        optimizer="adam",
        distillation_loss_fn=keras_kd.DKD(beta=2.0),
        feature_losses=[
            keras_kd.losses.SimilarityPreserving("t_hidden", "s_hidden")
        ],
    )
    ```

    Reference:
        Tung, Mori, "Similarity-Preserving Knowledge Distillation", ICCV 2019,
        https://arxiv.org/abs/1907.09682
    """

    batch_level = True

    def __init__(
        self,
        teacher_layer_name=None,
        student_layer_name=None,
        weight=3000.0,
        reduction="sum_over_batch_size",
        name="similarity_preserving",
        dtype="float32",
    ):
        super().__init__(
            teacher_layer_name, student_layer_name, weight, reduction, name, dtype
        )

    def call(self, y_true, y_pred):
        return similarity_preserving_loss(y_true, y_pred)

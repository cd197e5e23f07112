"""Feature and relation distillation losses, on intermediate layers of both models.

Each loss is a pure `keras.ops` function on two feature tensors (the teacher's
first, as `y_true`, then the student's, as `y_pred`) and a
`keras.losses.Loss` class that also names the layers to compare. Pass the
classes to `keras_kd.Distiller.compile(feature_losses=[...])`, which runs each
model once per step, takes the named layers' outputs, and adds
`weight * loss` to the total; `keras_kd.losses` re-exports everything here.

Two kinds:

- Per-example losses (`HintLoss`, `AttentionTransfer`) return one value per
  example, shape `(batch,)`, and are reduced like the logits losses: weighted
  by `sample_weight` and averaged over the global batch.
- Batch-level losses (`RKD`, `SimilarityPreserving`) compare the relations
  between the examples of a batch and return one scalar. Sample weights do
  not apply to them, and under `tf.distribute` each replica computes them on
  its own share of the batch; the distiller averages them over the replicas.

All math runs in float32, whatever the input dtype.
"""

import keras
from keras import ops

from keras_kd._validation import check_nonnegative

# Floor of the squared pairwise distances before their square root, as in the
# RKD authors' code: keeps the gradient finite where two examples coincide.
_EPSILON = 1e-12
_ADAPTED_RANKS = {2: "Dense", 4: "Conv2D 1x1"}


def _check_layer_name(value, name):
    if value is not None and not (isinstance(value, str) and value):
        raise ValueError(
            f"`{name}` must be a layer name (a non-empty str) or None for the "
            f"model's output, got {value!r}."
        )


def _float32(x):
    return ops.cast(ops.convert_to_tensor(x), "float32")


def _flatten(x):
    """`(batch, ...)` to `(batch, features)`, float32."""
    x = _float32(x)
    return ops.reshape(x, (ops.shape(x)[0], -1))


def _l2_normalize(x, axis=-1):
    """`x / ||x||` along `axis`; a zero vector stays zero, with zero gradient.

    Dead ReLU units make zero rows common (an empty attention map, two
    examples with equal features); dividing by a small epsilon instead would
    give them gradients of order 1/epsilon.
    """
    squared = ops.sum(ops.square(x), axis=axis, keepdims=True)
    positive = ops.greater(squared, 0.0)
    norm = ops.sqrt(ops.where(positive, squared, 1.0))
    return ops.where(positive, x / norm, 0.0)


def _smooth_l1(difference):
    """Huber loss with delta 1: `0.5 d²` for `|d| < 1`, `|d| - 0.5` beyond."""
    magnitude = ops.abs(difference)
    quadratic = ops.minimum(magnitude, 1.0)
    return 0.5 * ops.square(quadratic) + (magnitude - quadratic)


def _static_shape(shape):
    return tuple(None if d is None else int(d) for d in shape)


def hint_loss(teacher_features, student_features):
    """FitNets hint loss: mean squared difference per example.

    `loss[i] = mean_j (t[i, j] - s[i, j])²` over all non-batch axes, with `t`
    the teacher's features and `s` the student's (after the adapter inside
    `keras_kd.Distiller`). FitNets writes `½ ||t - r(s)||²`; the mean instead of
    the sum keeps the scale independent of the features' size.

    Args:
        teacher_features: Tensor `(batch, ...)`.
        student_features: Tensor of the same shape.

    Returns:
        A float32 tensor of shape `(batch,)`.

    Raises:
        ValueError: if the static shapes differ.

    Example:

    >>> import numpy as np, keras_kd
    >>> t = np.array([[1.0, 2.0]]); s = np.array([[0.0, 0.0]])
    >>> float(keras_kd.losses.hint_loss(t, s)[0])
    2.5

    Reference:
        Romero, Ballas, Kahou, Chassang, Gatta, Bengio, "FitNets: Hints for
        Thin Deep Nets", ICLR 2015, https://arxiv.org/abs/1412.6550
    """
    teacher, student = _float32(teacher_features), _float32(student_features)
    if _static_shape(teacher.shape[1:]) != _static_shape(student.shape[1:]):
        raise ValueError(
            "`hint_loss` needs teacher and student features of the same shape, "
            f"got {tuple(teacher.shape)} and {tuple(student.shape)}. Inside "
            "`keras_kd.Distiller`, `HintLoss(adapter=True)` maps the student's "
            "width to the teacher's."
        )
    squared = ops.square(teacher - student)
    return ops.mean(ops.reshape(squared, (ops.shape(squared)[0], -1)), axis=-1)


def attention_map(features, p=2):
    """Spatial attention map of NHWC features, as in attention transfer.

    `Q[i] = normalize(vec(mean_c |a[i, :, :, c]|^p))`: the mean over channels
    of `|a|^p`, flattened to `(batch, H * W)` and divided by its L2 norm per
    example.

    Args:
        features: Tensor `(batch, H, W, channels)`.
        p: Exponent, > 0. Defaults to `2` (the paper's).

    Returns:
        A float32 tensor of shape `(batch, H * W)`.
    """
    features = _float32(features)
    if len(features.shape) != 4:
        raise ValueError(
            "Attention maps need 4-D NHWC features `(batch, H, W, channels)`, "
            f"got shape {tuple(features.shape)}."
        )
    return _l2_normalize(_flatten(ops.mean(ops.abs(features) ** p, axis=-1)))


def attention_transfer_loss(teacher_features, student_features, p=2):
    """Attention transfer: squared distance between normalized attention maps.

    `loss[i] = mean_j (Q_s[i, j] - Q_t[i, j])²`, with
    `Q = normalize(vec(mean_c |a|^p))` per example (`keras_kd.losses.
    attention_map`) over the `H * W` positions. This is the authors' code
    (`(at(x) - at(y)).pow(2).mean()`); the paper writes the p-norm of the
    difference, times `β/2`. Channel counts may differ; spatial sizes must
    match.

    Args:
        teacher_features: Tensor `(batch, H, W, C_t)`, NHWC.
        student_features: Tensor `(batch, H, W, C_s)`, NHWC.
        p: Exponent of the activations, > 0. Defaults to `2`.

    Returns:
        A float32 tensor of shape `(batch,)`.

    Raises:
        ValueError: if a tensor is not 4-D or the spatial sizes differ.

    Example:

    >>> import numpy as np, keras_kd
    >>> t = np.ones((1, 2, 2, 3)); s = np.ones((1, 2, 2, 5))
    >>> float(keras_kd.losses.attention_transfer_loss(t, s)[0])  # same maps
    0.0

    Reference:
        Zagoruyko, Komodakis, "Paying More Attention to Attention: Improving
        the Performance of Convolutional Neural Networks via Attention
        Transfer", ICLR 2017, https://arxiv.org/abs/1612.03928
    """
    _check_p(p)
    _check_spatial(teacher_features.shape, student_features.shape)
    difference = attention_map(student_features, p) - attention_map(teacher_features, p)
    return ops.mean(ops.square(difference), axis=-1)


def _check_p(p):
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not p > 0:
        raise ValueError(f"`p` must be a number > 0 (2 is usual), got {p!r}.")


def _check_spatial(teacher_shape, student_shape):
    teacher_shape, student_shape = tuple(teacher_shape), tuple(student_shape)
    if len(teacher_shape) != 4 or len(student_shape) != 4:
        raise ValueError(
            "Attention transfer needs 4-D NHWC features `(batch, H, W, "
            f"channels)`, got teacher {teacher_shape} and student "
            f"{student_shape}. Pick convolutional layers."
        )
    teacher_hw, student_hw = teacher_shape[1:3], student_shape[1:3]
    if None not in teacher_hw + student_hw and teacher_hw != student_hw:
        raise ValueError(
            f"Attention transfer needs equal spatial sizes (H, W), got teacher "
            f"{teacher_hw} and student {student_hw}. Pick layers at the same "
            "resolution (channel counts may differ)."
        )


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
    teacher = _normalized_distances(_flatten(teacher_features))
    student = _normalized_distances(_flatten(student_features))
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
        directions = _l2_normalize(features - anchor)
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
    teacher = _angles(_flatten(teacher_features))
    student = _angles(_flatten(student_features))
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
        features = _flatten(features)
        return _l2_normalize(ops.matmul(features, ops.transpose(features)))

    difference = normalized_gram(teacher_features) - normalized_gram(student_features)
    batch = ops.cast(ops.shape(difference)[0], "float32")
    return ops.sum(ops.square(difference)) / (batch * batch)


class FeatureLoss(keras.losses.Loss):
    """Base class of the losses `Distiller.compile(feature_losses=...)` takes.

    A feature loss compares the output of the teacher's layer
    `teacher_layer_name` with the output of the student's layer
    `student_layer_name` (`None`: the model's output, its logits), and is
    added to the total loss as `weight * value`. `call(teacher_features,
    student_features)` returns per-example values `(batch,)`, or one scalar
    for a batch-level loss (`batch_level = True`).

    Subclasses may override `check_shapes`, called with the static feature
    shapes before training, to raise `ValueError` or ask for an adapter.
    """

    batch_level = False

    def __init__(
        self,
        teacher_layer_name=None,
        student_layer_name=None,
        weight=1.0,
        reduction="sum_over_batch_size",
        name=None,
        dtype="float32",
    ):
        _check_layer_name(teacher_layer_name, "teacher_layer_name")
        _check_layer_name(student_layer_name, "student_layer_name")
        weight = check_nonnegative(weight)
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.teacher_layer_name = teacher_layer_name
        self.student_layer_name = student_layer_name
        self.weight = weight

    def describe(self):
        """`Name(teacher_layer_name=..., student_layer_name=...)`, for messages."""
        return (
            f"{type(self).__name__}(teacher_layer_name={self.teacher_layer_name!r}, "
            f"student_layer_name={self.student_layer_name!r})"
        )

    def check_shapes(self, teacher_shape, student_shape):
        """Validates the static feature shapes (batch axis included).

        Returns the width of the adapter to put on the student's features,
        or `None` for no adapter. Raises `ValueError` for shapes the loss
        cannot compare.
        """
        return None

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "teacher_layer_name": self.teacher_layer_name,
                "student_layer_name": self.student_layer_name,
                "weight": self.weight,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="keras_kd")
class HintLoss(FeatureLoss):
    """FitNets hints: the student's layer regresses the teacher's layer.

    `loss[i] = mean_j (t[i, j] - r(s)[i, j])²`, added as `weight * loss`
    (per example, averaged over the batch like the KD term), with `t` the
    output of the teacher's layer, `s` the student's, and `r` a learnable
    adapter when the widths differ: `Dense(width_t)` for 2-D features,
    `Conv2D(channels_t, 1)` for 4-D NHWC features (the spatial sizes must
    match). The adapter belongs to the `keras_kd.Distiller`, is trained with
    the student by the same optimizer, and is never part of the student (nor
    of `keras_kd.export_student`'s output). See `keras_kd.losses.hint_loss`.

    Args:
        teacher_layer_name: Name of the teacher's layer. Defaults to `None`,
            the teacher's output.
        student_layer_name: Name of the student's layer. Defaults to `None`,
            the student's output.
        weight: Weight of this term in the total loss, >= 0. Defaults to
            `1.0`.
        adapter: `True` adds an adapter when the widths differ; `False`
            requires equal shapes. Defaults to `True`.
        reduction: Keras loss reduction, for standalone use. Defaults to
            `"sum_over_batch_size"`.
        name: Loss name, also the key of its log in `fit`. Defaults to
            `"hint_loss"`.
        dtype: Dtype of the computation. Defaults to `"float32"`.

    Example:

    ```python
    distiller.compile(
        optimizer="adam",
        feature_losses=[
            keras_kd.losses.HintLoss(
                teacher_layer_name="t_hidden", student_layer_name="s_hidden"
            )
        ],
    )
    ```

    Reference:
        Romero, Ballas, Kahou, Chassang, Gatta, Bengio, "FitNets: Hints for
        Thin Deep Nets", ICLR 2015, https://arxiv.org/abs/1412.6550
    """

    def __init__(
        self,
        teacher_layer_name=None,
        student_layer_name=None,
        weight=1.0,
        adapter=True,
        reduction="sum_over_batch_size",
        name="hint_loss",
        dtype="float32",
    ):
        if not isinstance(adapter, bool):
            raise ValueError(f"`adapter` must be True or False, got {adapter!r}.")
        super().__init__(
            teacher_layer_name, student_layer_name, weight, reduction, name, dtype
        )
        self.adapter = adapter

    def call(self, y_true, y_pred):
        return hint_loss(y_true, y_pred)

    def check_shapes(self, teacher_shape, student_shape):
        teacher_shape = _static_shape(teacher_shape)
        student_shape = _static_shape(student_shape)
        if teacher_shape[1:] == student_shape[1:]:
            return None
        rank = len(teacher_shape)
        fixable = (
            rank == len(student_shape)
            and rank in _ADAPTED_RANKS
            and teacher_shape[1:-1] == student_shape[1:-1]
            and None not in (teacher_shape[-1], student_shape[-1])
        )
        if not fixable:
            raise ValueError(
                f"{self.describe()}: teacher features {teacher_shape} and student "
                f"features {student_shape} cannot be compared. An adapter maps "
                "the last axis only, for 2-D `(batch, width)` (Dense) or 4-D "
                "NHWC `(batch, H, W, channels)` features (Conv2D 1x1) with the "
                "same spatial size. Pick layers of matching shapes."
            )
        if not self.adapter:
            raise ValueError(
                f"{self.describe()}: teacher width {teacher_shape[-1]} differs from "
                f"student width {student_shape[-1]}, and `adapter=False`. Pass "
                f"`adapter=True` to learn a {_ADAPTED_RANKS[rank]} adapter to "
                f"width {teacher_shape[-1]}, or pick layers of equal width."
            )
        return teacher_shape[-1]

    def get_config(self):
        config = super().get_config()
        config.update({"adapter": self.adapter})
        return config


@keras.saving.register_keras_serializable(package="keras_kd")
class AttentionTransfer(FeatureLoss):
    """Attention transfer between convolutional layers (NHWC).

    `loss[i] = mean_j (Q_s[i, j] - Q_t[i, j])²` with
    `Q = normalize(vec(mean_c |a|^p))` per example, added as
    `weight * loss` (per example, averaged over the batch). Channel counts
    may differ (no adapter); the spatial sizes must match, or `compile`/`fit`
    raise `ValueError`. See `keras_kd.losses.attention_transfer_loss`.

    Args:
        teacher_layer_name: Name of the teacher's conv layer. Defaults to
            `None`, the teacher's output.
        student_layer_name: Name of the student's conv layer. Defaults to
            `None`, the student's output.
        weight: Weight of this term, >= 0. Defaults to `1000.0`, the `β`
            that RepDistiller and mdistiller multiply this mean by (the AT
            rows of their CIFAR tables). In keras_kd 0.1 the default was
            `500.0`.
        p: Exponent of the activations, > 0. Defaults to `2`.
        reduction: Keras loss reduction, for standalone use. Defaults to
            `"sum_over_batch_size"`.
        name: Loss name and log key. Defaults to `"attention_transfer"`.
        dtype: Dtype of the computation. Defaults to `"float32"`.

    Example:

    ```python
    distiller.compile(
        optimizer="adam",
        feature_losses=[
            keras_kd.losses.AttentionTransfer(
                teacher_layer_name="t_conv2", student_layer_name="s_conv2"
            )
        ],
    )
    ```

    Reference:
        Zagoruyko, Komodakis, "Paying More Attention to Attention", ICLR 2017,
        https://arxiv.org/abs/1612.03928
    """

    def __init__(
        self,
        teacher_layer_name=None,
        student_layer_name=None,
        weight=1000.0,
        p=2,
        reduction="sum_over_batch_size",
        name="attention_transfer",
        dtype="float32",
    ):
        _check_p(p)
        super().__init__(
            teacher_layer_name, student_layer_name, weight, reduction, name, dtype
        )
        self.p = p

    def call(self, y_true, y_pred):
        return attention_transfer_loss(y_true, y_pred, p=self.p)

    def check_shapes(self, teacher_shape, student_shape):
        try:
            _check_spatial(teacher_shape, student_shape)
        except ValueError as error:
            raise ValueError(f"{self.describe()}: {error}") from None
        return None

    def get_config(self):
        config = super().get_config()
        config.update({"p": self.p})
        return config


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

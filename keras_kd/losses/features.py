"""Feature losses: hints (FitNets) and attention transfer, per example.

Each is a pure `keras.ops` function on two feature tensors (the teacher's
first, as `y_true`, then the student's, as `y_pred`) and a `FeatureLoss`
class that also names the layers to compare. Pass the classes to
`keras_kd.Distiller.compile(feature_losses=[...])`, which adds
`weight * loss` to the total. They return one value per example, `(batch,)`,
weighted by `sample_weight` and averaged over the global batch like the
logits losses. All math runs in float32, whatever the input dtype.
"""

import keras
from keras import ops

from keras_kd._validation import check_flag
from keras_kd.losses._tensors import (
    flatten,
    float32,
    l2_normalize,
    match_spatial,
    pooling_factors,
    static_shape,
)
from keras_kd.losses.base import FeatureLoss

_ADAPTED_RANKS = {2: "Dense", 4: "Conv2D 1x1"}


def hint_loss(teacher_features, student_features):
    """FitNets hint loss: mean squared difference per example.

    `loss[i] = mean_j (t[i, j] - s[i, j])²` over all non-batch axes, with `t`
    the teacher's features and `s` the student's (after the adapter inside
    `keras_kd.Distiller`). NHWC maps whose spatial sizes divide each other
    are compared after average-pooling the larger to the smaller's (H, W),
    as for attention transfer. FitNets writes `½ ||t - r(s)||²`; the mean instead of
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
    teacher, student = float32(teacher_features), float32(student_features)
    if len(teacher.shape) == len(student.shape) == 4:
        teacher, student = match_spatial(teacher, student, "`hint_loss`")
    if static_shape(teacher.shape[1:]) != static_shape(student.shape[1:]):
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
    features = float32(features)
    if len(features.shape) != 4:
        raise ValueError(
            "Attention maps need 4-D NHWC features `(batch, H, W, channels)`, "
            f"got shape {tuple(features.shape)}."
        )
    return l2_normalize(flatten(ops.mean(ops.abs(features) ** p, axis=-1)))


def attention_transfer_loss(teacher_features, student_features, p=2):
    """Attention transfer: squared distance between normalized attention maps.

    `loss[i] = mean_j (Q_s[i, j] - Q_t[i, j])²`, with
    `Q = normalize(vec(mean_c |a|^p))` per example (`keras_kd.losses.
    attention_map`) over the `H * W` positions. This is the authors' code
    (`(at(x) - at(y)).pow(2).mean()`); the paper writes the p-norm of the
    difference, times `β/2`. Channel counts may differ; spatial sizes may
    differ by integer factors: the larger map is average-pooled to the
    smaller's (H, W) first (`keras_kd.losses._tensors.match_spatial`), as the
    reference code pools it.

    Args:
        teacher_features: Tensor `(batch, H_t, W_t, C_t)`, NHWC.
        student_features: Tensor `(batch, H_s, W_s, C_s)`, NHWC.
        p: Exponent of the activations, > 0. Defaults to `2`.

    Returns:
        A float32 tensor of shape `(batch,)`.

    Raises:
        ValueError: if a tensor is not 4-D or the spatial sizes do not divide
            each other.

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
    teacher, student = match_spatial(
        teacher_features, student_features, "Attention transfer"
    )
    difference = attention_map(student, p) - attention_map(teacher, p)
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
    pooling_factors(teacher_shape[1:3], student_shape[1:3], "Attention transfer")


@keras.saving.register_keras_serializable(package="keras_kd")
class HintLoss(FeatureLoss):
    """FitNets hints: the student's layer regresses the teacher's layer.

    `loss[i] = mean_j (t[i, j] - r(s)[i, j])²`, added as `weight * loss`
    (per example, averaged over the batch like the KD term), with `t` the
    output of the teacher's layer, `s` the student's, and `r` a learnable
    adapter when the widths differ: `Dense(width_t)` for 2-D features,
    `Conv2D(channels_t, 1)` for 4-D NHWC features. NHWC maps of different
    spatial sizes (dividing each other: a strided student, say) are compared
    after average-pooling the larger map to the smaller's size, after the
    adapter. The adapter belongs to the `keras_kd.Distiller`, is trained with
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
        check_flag(adapter, "adapter")
        super().__init__(
            teacher_layer_name, student_layer_name, weight, reduction, name, dtype
        )
        self.adapter = adapter

    def call(self, y_true, y_pred):
        return hint_loss(y_true, y_pred)

    def check_shapes(self, teacher_shape, student_shape):
        teacher_shape = static_shape(teacher_shape)
        student_shape = static_shape(student_shape)
        if teacher_shape[1:] == student_shape[1:]:
            return None
        rank = len(teacher_shape)
        fixable = (
            rank == len(student_shape)
            and rank in _ADAPTED_RANKS
            and (rank == 4 or teacher_shape[1:-1] == student_shape[1:-1])
            and None not in (teacher_shape[-1], student_shape[-1])
        )
        if not fixable:
            raise ValueError(
                f"{self.describe()}: teacher features {teacher_shape} and student "
                f"features {student_shape} cannot be compared. An adapter maps "
                "the last axis only, for 2-D `(batch, width)` (Dense) or 4-D "
                "NHWC `(batch, H, W, channels)` features (Conv2D 1x1, spatial "
                "sizes equal or dividing each other). Pick layers of matching "
                "shapes."
            )
        if rank == 4:
            try:
                pooling_factors(teacher_shape[1:3], student_shape[1:3], "A hint")
            except ValueError as error:
                raise ValueError(f"{self.describe()}: {error}") from None
        if teacher_shape[-1] == student_shape[-1]:
            return None  # the spatial sizes only differ: pooled, no adapter
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

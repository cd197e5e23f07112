"""Losses on logits: Hinton's tempered KL (KD) and decoupled KD (DKD).

Both take `standardize=True` for logit standardization (Sun et al., CVPR
2024; `standardize_logits`): each position's logits are z-scored before the
temperature, so that the student matches the teacher's logit *relations*
rather than their scale.

Every function takes logits `(batch, ..., classes)` and returns one value per
position (shape `(batch, ...)`), like
`keras.losses.sparse_categorical_crossentropy`; the Loss classes reduce them
with the usual Keras `reduction`. All math runs in float32, whatever the input
dtype, so that mixed-precision logits do not overflow in `exp`.
"""

import keras
from keras import ops

from keras_kd._validation import check_flag, check_nonnegative, check_temperature
from keras_kd.losses.base import DistillationLoss

_LOG_2 = 0.6931471805599453


def tempered_log_softmax(logits, temperature: float):
    """Returns `log(softmax(logits / temperature))` in float32, computed stably.

    Args:
        logits: Tensor of shape `(..., num_classes)`.
        temperature: Positive float. Defaults to none; required.

    Returns:
        A float32 tensor of the same shape as `logits`.
    """
    logits = ops.cast(logits, "float32")
    return ops.log_softmax(logits / temperature, axis=-1)


def standardize_logits(logits, epsilon: float = 1e-7):
    """Logit standardization: z-scores each position's logits over the classes.

    `z' = (z - mean(z)) / (std(z) + epsilon)`, float32, with `std` the sample
    standard deviation (Bessel's `N - 1`, as `torch.Tensor.std` in the
    authors' code). The variance is floored at 1e-12 inside the square root,
    so that constant logits give zeros with finite gradients.

    Args:
        logits: Tensor `(..., num_classes)`, at least two classes.
        epsilon: Added to the standard deviation. Defaults to `1e-7` (the
            authors').

    Returns:
        A float32 tensor of the same shape.

    Reference:
        Sun, Ren, Li, Wang, Cao, "Logit Standardization in Knowledge
        Distillation", CVPR 2024, https://arxiv.org/abs/2403.01427
    """
    logits = ops.cast(logits, "float32")
    classes = logits.shape[-1]
    if classes is not None and classes < 2:
        raise ValueError(
            f"Logit standardization needs at least 2 classes, got logits of "
            f"shape {tuple(logits.shape)}."
        )
    centered = logits - ops.mean(logits, axis=-1, keepdims=True)
    variance = ops.sum(ops.square(centered), axis=-1, keepdims=True) / (classes - 1)
    return centered / (ops.sqrt(ops.maximum(variance, 1e-12)) + epsilon)


def _maybe_standardized(teacher_logits, student_logits, standardize: bool):
    if not standardize:
        return teacher_logits, student_logits
    return standardize_logits(teacher_logits), standardize_logits(student_logits)


def kd_loss(
    teacher_logits, student_logits, temperature: float = 3.0, standardize=False
):
    """Hinton's tempered KL divergence, per example, with the T² factor.

    `T² * KL(softmax(teacher_logits / T) || softmax(student_logits / T))`
    `= T² * sum_c p_t[c] * (log p_t[c] - log p_s[c])`,

    with `p_t` the teacher's and `p_s` the student's softened distributions.
    The KL runs from the teacher (the target) to the student. The T² factor
    keeps the gradient's magnitude independent of T (Hinton et al., section 2),
    so that the weight between this term and the label loss does not have to be
    retuned when T changes. Both log-probabilities come from `log_softmax`,
    never from `log(softmax(...))`, so that confident logits do not produce
    `log(0)`.

    Args:
        teacher_logits: Tensor `(batch, ..., num_classes)`, pre-softmax
            outputs: `(batch, C)`, `(batch, time, C)`, `(batch, H, W, C)`.
        student_logits: Tensor of the same shape, pre-softmax outputs.
        temperature: Positive float T. Defaults to `3.0`.
        standardize: Whether to z-score both models' logits first
            (`standardize_logits`, logit standardization). Defaults to
            `False`.

    Returns:
        A float32 tensor of shape `(batch, ...)`: one value per position.

    Example:

    >>> import numpy as np, keras_kd
    >>> t = np.array([[2.0, 1.0, 0.0]]); s = np.array([[0.0, 0.0, 0.0]])
    >>> float(keras_kd.losses.kd_loss(t, s, temperature=1.0)[0])  # doctest: +ELLIPSIS
    0.1...

    Reference:
        Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural Network",
        2015, https://arxiv.org/abs/1503.02531
    """
    temperature = check_temperature(temperature)
    teacher_logits, student_logits = _maybe_standardized(
        teacher_logits, student_logits, standardize
    )
    log_p_teacher = tempered_log_softmax(teacher_logits, temperature)
    log_p_student = tempered_log_softmax(student_logits, temperature)
    kl = ops.sum(ops.exp(log_p_teacher) * (log_p_teacher - log_p_student), axis=-1)
    return (temperature**2) * kl


@keras.saving.register_keras_serializable(package="keras_kd")
class KDLoss(DistillationLoss):
    """Hinton's tempered KL divergence as a Keras loss, T² factor included.

    `loss = T² * KL(softmax(y_true / T) || softmax(y_pred / T))`, where
    `y_true` holds the teacher's logits and `y_pred` the student's; see
    `keras_kd.losses.kd_loss`. This is the default `distillation_loss_fn` of
    `keras_kd.Distiller`.

    Args:
        temperature: Positive float T. Defaults to `3.0`.
        standardize: Logit standardization of both models' logits first
            (Sun et al., CVPR 2024). Defaults to `False`.
        reduction: Keras loss reduction. Defaults to `"sum_over_batch_size"`.
        name: Loss name. Defaults to `"kd_loss"`.
        dtype: Dtype of the computation. Defaults to `"float32"`.

    Example:

    >>> import numpy as np, keras_kd
    >>> loss = keras_kd.losses.KDLoss(temperature=4.0)
    >>> value = loss(np.zeros((2, 10)), np.zeros((2, 10)))  # identical: zero

    Reference:
        Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural Network",
        2015, https://arxiv.org/abs/1503.02531
    """

    def __init__(
        self,
        temperature: float = 3.0,
        standardize: bool = False,
        reduction: str = "sum_over_batch_size",
        name: str = "kd_loss",
        dtype: str = "float32",
    ) -> None:
        temperature = check_temperature(temperature)
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.temperature = temperature
        self.standardize = check_flag(standardize, "standardize")

    def call(self, y_true, y_pred):
        return kd_loss(
            y_true, y_pred, temperature=self.temperature, standardize=self.standardize
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {"temperature": self.temperature, "standardize": self.standardize}
        )
        return config


def _check_labels(labels, num_classes):
    """Raises `ValueError` for concrete labels outside [0, num_classes)."""
    try:
        values = keras.ops.convert_to_numpy(labels)
    except Exception:  # A symbolic tensor inside `fit`: checked by the caller.
        return
    if values.size and (values.min() < 0 or values.max() >= num_classes):
        raise ValueError(
            f"`labels` must be class indices in [0, {num_classes}), got values "
            f"from {values.min()} to {values.max()}."
        )


def _log_one_minus(log_p, log_rest):
    """`log(1 - p)` from `log p`, accurate for every p.

    Where `p < 1/2`, `log1p(-exp(log p))` keeps the tiny difference from
    zero; elsewhere `log_rest` (`logsumexp` of the other logits minus the
    normalizer) is accurate, down to `1 - p` far below float32's epsilon. The
    `log1p` branch sees `log p <= log(1/2)` only, so its gradient stays finite.
    """
    small = ops.less(log_p, -_LOG_2)
    safe_log_p = ops.minimum(log_p, -_LOG_2)
    return ops.where(small, ops.log1p(-ops.exp(safe_log_p)), log_rest)


def dkd_loss(
    teacher_logits,
    student_logits,
    labels,
    alpha: float = 1.0,
    beta: float = 8.0,
    temperature: float = 4.0,
    standardize: bool = False,
):
    """Decoupled knowledge distillation (DKD), per position, with the T² factor.

    DKD splits Hinton's KL into a target-class and a non-target-class part
    and weighs them separately:

    `DKD = T² * (alpha * TCKD + beta * NCKD)`, with, for the true class `g`,

    - `p = softmax(logits / T)` for teacher (`p_t`) and student (`p_s`);
    - `TCKD = KL(b_t || b_s)`, the binary KL between
      `b = [p[g], 1 - p[g]]` (target vs. all other classes);
    - `NCKD = KL(q_t || q_s)`, the KL between the distributions over the
      non-target classes only, `q[c] = p[c] / (1 - p[g])` for `c != g`
      (equivalently `softmax` of the logits with class `g` removed).

    Both KLs run from the teacher (the target) to the student. Hinton's loss
    is `T² * (TCKD + (1 - p_t[g]) * NCKD)`: DKD removes the `1 - p_t[g]`
    factor that suppresses NCKD for confidently right teachers. All logs come
    from `log_softmax`/`logsumexp`, so confident logits stay finite. With two
    classes NCKD is 0.

    Args:
        teacher_logits: Tensor `(batch, ..., num_classes)`, pre-softmax
            outputs.
        student_logits: Tensor `(batch, ..., num_classes)`, pre-softmax
            outputs.
        labels: Integer class indices `(batch, ...)` (or `(batch, 1)` for
            `(batch, num_classes)` logits), in
            `[0, num_classes)`. `keras_kd.Distiller` passes the label where
            there is one and the teacher's top class for unlabeled examples.
        alpha: Weight of TCKD, >= 0. Defaults to `1.0` (the paper's).
        beta: Weight of NCKD, >= 0. Defaults to `8.0` (the paper's CIFAR-100
            value; 1 to 8 is usual).
        temperature: Positive float T. Defaults to `4.0` (the paper's).
        standardize: Whether to z-score both models' logits first
            (`standardize_logits`). Defaults to `False`.

    Returns:
        A float32 tensor of shape `(batch, ...)`: one value per position.

    Raises:
        ValueError: for a negative `alpha` or `beta`, `temperature <= 0`, or
            concrete (eager) labels outside `[0, num_classes)`.

    Example:

    >>> import numpy as np, keras_kd
    >>> t = np.array([[3.0, 1.0, 0.0]]); s = np.zeros((1, 3))
    >>> value = keras_kd.losses.dkd_loss(t, s, np.array([0]), temperature=1.0)

    Reference:
        Zhao, Cui, Song, Qiu, Liang, "Decoupled Knowledge Distillation",
        CVPR 2022, https://arxiv.org/abs/2203.08679
    """
    temperature = check_temperature(temperature)
    alpha = check_nonnegative(alpha, "alpha")
    beta = check_nonnegative(beta, "beta")
    num_classes = student_logits.shape[-1]
    _check_labels(labels, num_classes)
    labels = ops.reshape(ops.cast(labels, "int32"), ops.shape(student_logits)[:-1])
    teacher_logits, student_logits = _maybe_standardized(
        teacher_logits, student_logits, standardize
    )
    target = ops.one_hot(labels, num_classes, dtype="float32")
    # A large finite offset, not -inf, keeps the masked logsumexp's gradient
    # free of NaN.
    mask_offset = -1e9 * target

    def parts(logits):
        scaled = ops.cast(logits, "float32") / temperature
        log_z = ops.logsumexp(scaled, axis=-1)
        log_other_z = ops.logsumexp(scaled + mask_offset, axis=-1)
        log_target = ops.sum(scaled * target, axis=-1) - log_z  # log p[g]
        log_other = _log_one_minus(log_target, log_other_z - log_z)
        log_q = scaled + mask_offset - log_other_z[..., None]  # log q, non-target
        return log_target, log_other, log_q

    t_target, t_other, t_q = parts(teacher_logits)
    s_target, s_other, s_q = parts(student_logits)
    tckd = ops.exp(t_target) * (t_target - s_target) + ops.exp(t_other) * (
        t_other - s_other
    )
    non_target = 1.0 - target
    nckd = ops.sum(non_target * ops.exp(t_q) * (t_q - s_q), axis=-1)
    return (temperature**2) * (alpha * tckd + beta * nckd)


@keras.saving.register_keras_serializable(package="keras_kd")
class DKD(DistillationLoss):
    """Decoupled knowledge distillation as a Keras loss, T² factor included.

    `loss = T² * (alpha * TCKD + beta * NCKD)`, the target-class KL
    `KL([p_t[g], 1 - p_t[g]] || [p_s[g], 1 - p_s[g]])` plus the KL between
    teacher and student over the non-target classes, both from teacher to
    student on `softmax(logits / T)`; see `keras_kd.losses.dkd_loss`.

    DKD needs the true class `g`: inside `keras_kd.Distiller` (which knows
    `needs_labels`) it gets the sparse label, or the teacher's top class for
    unlabeled examples and one-hot labels. Called on its own,
    `loss(teacher_logits, student_logits)` uses the teacher's top class.

    Args:
        alpha: Weight of TCKD, >= 0. Defaults to `1.0`.
        beta: Weight of NCKD, >= 0. Defaults to `8.0`.
        temperature: Positive float T. Defaults to `4.0`.
        standardize: Logit standardization of both models' logits first.
            Defaults to `False`.
        reduction: Keras loss reduction. Defaults to `"sum_over_batch_size"`.
        name: Loss name. Defaults to `"dkd"`.
        dtype: Dtype of the computation. Defaults to `"float32"`.

    Example:

    ```python
    distiller = keras_kd.Distiller(student=student, teacher=teacher)
    distiller.compile(
        optimizer="adam", alpha=0.5, distillation_loss_fn=keras_kd.DKD(beta=2.0)
    )
    distiller.fit(x_train, y_train, epochs=10)
    ```

    Reference:
        Zhao, Cui, Song, Qiu, Liang, "Decoupled Knowledge Distillation",
        CVPR 2022, https://arxiv.org/abs/2203.08679
    """

    needs_labels = True

    def __init__(
        self,
        alpha: float = 1.0,
        beta: float = 8.0,
        temperature: float = 4.0,
        standardize: bool = False,
        reduction: str = "sum_over_batch_size",
        name: str = "dkd",
        dtype: str = "float32",
    ) -> None:
        temperature = check_temperature(temperature)
        alpha = check_nonnegative(alpha, "alpha")
        beta = check_nonnegative(beta, "beta")
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.alpha = alpha
        self.beta = beta
        self.temperature = temperature
        self.standardize = check_flag(standardize, "standardize")

    def call(self, y_true, y_pred, labels=None):
        if labels is None:
            labels = ops.argmax(y_true, axis=-1)
        return dkd_loss(
            y_true,
            y_pred,
            labels,
            alpha=self.alpha,
            beta=self.beta,
            temperature=self.temperature,
            standardize=self.standardize,
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "alpha": self.alpha,
                "beta": self.beta,
                "temperature": self.temperature,
                "standardize": self.standardize,
            }
        )
        return config

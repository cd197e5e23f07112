"""Distillation losses: pure `keras.ops` functions and `keras.losses.Loss` classes.

Every function here returns one value per example (shape `(batch,)`), like
`keras.losses.sparse_categorical_crossentropy`; the Loss classes reduce them
with the usual Keras `reduction`. All math runs in float32, whatever the input
dtype, so that mixed-precision logits do not overflow in `exp`.
"""

import keras
from keras import ops


def _check_temperature(temperature):
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise ValueError(
            f"`temperature` must be a positive number, got {temperature!r}."
        )
    if not temperature > 0 or temperature == float("inf"):
        raise ValueError(
            "`temperature` must be a positive, finite number (T > 0; T = 1 is "
            f"the plain softmax, T = 2 to 20 is usual), got {temperature!r}."
        )


def tempered_log_softmax(logits, temperature):
    """Returns `log(softmax(logits / temperature))` in float32, computed stably.

    Args:
        logits: Tensor of shape `(..., num_classes)`.
        temperature: Positive float. Defaults to none; required.

    Returns:
        A float32 tensor of the same shape as `logits`.
    """
    logits = ops.cast(logits, "float32")
    return ops.log_softmax(logits / temperature, axis=-1)


def kd_loss(teacher_logits, student_logits, temperature=3.0):
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
        teacher_logits: Tensor `(batch, num_classes)`, pre-softmax outputs.
        student_logits: Tensor `(batch, num_classes)`, pre-softmax outputs.
        temperature: Positive float T. Defaults to `3.0`.

    Returns:
        A float32 tensor of shape `(batch,)`.

    Example:

    >>> import numpy as np, keras_kd
    >>> t = np.array([[2.0, 1.0, 0.0]]); s = np.array([[0.0, 0.0, 0.0]])
    >>> float(keras_kd.losses.kd_loss(t, s, temperature=1.0)[0])  # doctest: +ELLIPSIS
    0.1...

    Reference:
        Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural Network",
        2015, https://arxiv.org/abs/1503.02531
    """
    _check_temperature(temperature)
    log_p_teacher = tempered_log_softmax(teacher_logits, temperature)
    log_p_student = tempered_log_softmax(student_logits, temperature)
    kl = ops.sum(ops.exp(log_p_teacher) * (log_p_teacher - log_p_student), axis=-1)
    return (temperature**2) * kl


@keras.saving.register_keras_serializable(package="keras_kd")
class KDLoss(keras.losses.Loss):
    """Hinton's tempered KL divergence as a Keras loss, T² factor included.

    `loss = T² * KL(softmax(y_true / T) || softmax(y_pred / T))`, where
    `y_true` holds the teacher's logits and `y_pred` the student's; see
    `keras_kd.losses.kd_loss`. This is the default `distillation_loss_fn` of
    `keras_kd.Distiller`.

    Args:
        temperature: Positive float T. Defaults to `3.0`.
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

    takes_logits = True

    def __init__(
        self,
        temperature=3.0,
        reduction="sum_over_batch_size",
        name="kd_loss",
        dtype="float32",
    ):
        _check_temperature(temperature)
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.temperature = temperature

    def call(self, y_true, y_pred):
        return kd_loss(y_true, y_pred, temperature=self.temperature)

    def get_config(self):
        config = super().get_config()
        config.update({"temperature": self.temperature})
        return config

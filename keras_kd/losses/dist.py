"""DIST: distillation by Pearson correlation of the tempered probabilities.

With `p = softmax(z / T)` for the teacher (`p_t`) and the student (`p_s`),
rows `i` the positions of a batch and columns `c` the classes,

    DIST = T² * (beta * inter + gamma * intra),
    inter = mean_i (1 - rho(p_s[i, :], p_t[i, :]))      (each example's classes)
    intra = mean_c (1 - rho(p_s[:, c], p_t[:, c]))      (each class over the batch)

with `rho` Pearson's correlation, `rho(a, b) = cos(a - mean a, b - mean b)`
and `cos(a, b) = a.b / (|a| |b| + 1e-8)` as in the authors' code. Matching
correlations instead of the KL's exact probabilities relaxes the match: the
student keeps the teacher's ranking and relative confidence without having
to reproduce its scale, which helps when the teacher is much stronger.

`dist_loss` returns one value per position: its own inter term plus the
batch's intra term (the same for every position), so that the mean over the
batch is DIST. The intra term is a batch statistic: sample weights and
padding masks do not enter it (every position counts), and under
`tf.distribute` each replica computes it on its share of the batch, like the
relation losses.

Reference:
    Huang, You, Wang, Qian, Xu, "Knowledge Distillation from A Stronger
    Teacher", NeurIPS 2022, https://arxiv.org/abs/2205.10536
"""

import keras
from keras import ops

from keras_kd._validation import check_nonnegative, check_temperature
from keras_kd.losses.base import DistillationLoss
from keras_kd.losses.logits import tempered_log_softmax

_EPSILON = 1e-8


def pearson_correlation(a, b, axis: int = -1):
    """Pearson's correlation of `a` and `b` along `axis` (float32).

    `cos(a - mean a, b - mean b)`, with `1e-8` added to the product of the
    norms (zero for a constant row, with finite gradients).
    """
    a = a - ops.mean(a, axis=axis, keepdims=True)
    b = b - ops.mean(b, axis=axis, keepdims=True)

    def norm(v):
        return ops.sqrt(ops.maximum(ops.sum(ops.square(v), axis=axis), 1e-24))

    return ops.sum(a * b, axis=axis) / (norm(a) * norm(b) + _EPSILON)


def dist_loss(
    teacher_logits,
    student_logits,
    beta: float = 1.0,
    gamma: float = 1.0,
    temperature: float = 1.0,
):
    """DIST per position: `T² (beta (1 - rho_i) + gamma * intra)`; see the module.

    Args:
        teacher_logits: Tensor `(batch, ..., num_classes)`, pre-softmax.
        student_logits: Tensor of the same shape, pre-softmax.
        beta: Weight of the inter-class term, >= 0. Defaults to `1.0`.
        gamma: Weight of the intra-class term, >= 0. Defaults to `1.0`.
        temperature: Positive float T. Defaults to `1.0` (the paper's on
            ImageNet; 4 on CIFAR-100 in the authors' code).

    Returns:
        A float32 tensor of shape `(batch, ...)`; its mean is DIST.
    """
    temperature = check_temperature(temperature)
    beta = check_nonnegative(beta, "beta")
    gamma = check_nonnegative(gamma, "gamma")
    p_t = ops.exp(tempered_log_softmax(teacher_logits, temperature))
    p_s = ops.exp(tempered_log_softmax(student_logits, temperature))
    inter = 1.0 - pearson_correlation(p_s, p_t, axis=-1)
    classes = p_s.shape[-1]
    flat_t, flat_s = ops.reshape(p_t, (-1, classes)), ops.reshape(p_s, (-1, classes))
    intra = ops.mean(1.0 - pearson_correlation(flat_s, flat_t, axis=0))
    return (temperature**2) * (beta * inter + gamma * intra)


@keras.saving.register_keras_serializable(package="keras_kd")
class DIST(DistillationLoss):
    """DIST as a Keras loss: correlation, not exact match, of tempered outputs.

    `loss = T² * (beta * inter + gamma * intra)`, the mean over examples of
    `1 - Pearson(p_s[i], p_t[i])` and over classes of
    `1 - Pearson(p_s[:, c], p_t[:, c])`; `y_true` holds the teacher's logits
    and `y_pred` the student's. See `keras_kd.losses.dist` for the formula and
    `keras_kd.losses.dist_loss`.

    Args:
        beta: Weight of the inter-class term, >= 0. Defaults to `1.0`.
        gamma: Weight of the intra-class term, >= 0. Defaults to `1.0`.
        temperature: Positive float T. Defaults to `1.0`.
        reduction: Keras loss reduction. Defaults to `"sum_over_batch_size"`.
        name: Loss name. Defaults to `"dist"`.
        dtype: Dtype of the computation. Defaults to `"float32"`.

    Example:

    ```python
    distiller.compile(optimizer="adam", distillation_loss_fn=keras_kd.DIST())
    ```

    Reference:
        Huang, You, Wang, Qian, Xu, "Knowledge Distillation from A Stronger
        Teacher", NeurIPS 2022, https://arxiv.org/abs/2205.10536
    """

    def __init__(
        self,
        beta: float = 1.0,
        gamma: float = 1.0,
        temperature: float = 1.0,
        reduction: str = "sum_over_batch_size",
        name: str = "dist",
        dtype: str = "float32",
    ) -> None:
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.temperature = check_temperature(temperature)
        self.beta = check_nonnegative(beta, "beta")
        self.gamma = check_nonnegative(gamma, "gamma")

    def call(self, y_true, y_pred):
        return dist_loss(y_true, y_pred, self.beta, self.gamma, self.temperature)

    def get_config(self):
        config = super().get_config()
        config.update(
            {"beta": self.beta, "gamma": self.gamma, "temperature": self.temperature}
        )
        return config

"""Token-level divergences for language models: forward KL, reverse KL, JSD(beta).

With `p_t = softmax(t / T)` and `p_s = softmax(s / T)` over the vocabulary
(the last axis) at each position, and `T²` in front as for Hinton's term (so
that the gradients keep their scale as `T` changes; at `T = 1` the values are
TRL's):

- forward KL (the Hinton term, mass-covering):
  `T² * sum_v p_t (log p_t - log p_s)`;
- reverse KL (mode-seeking, MiniLLM): `T² * sum_v p_s (log p_s - log p_t)`;
- the generalized Jensen-Shannon divergence of GKD, with
  `m = beta * p_t + (1 - beta) * p_s`:
  `T² * (beta * KL(p_t || m) + (1 - beta) * KL(p_s || m))`; as in TRL's
  `generalized_jsd_loss`, `beta = 0` is the forward KL and `beta = 1` the
  reverse KL (the JSD itself vanishes at both ends).

Everything is computed from `log_softmax` in float32, `log m` as
`logaddexp(log beta + log p_t, log(1 - beta) + log p_s)`.

**Chunks.** `token_divergence(..., chunk_size=c)` never holds more than `c`
positions per example of float32 `(batch, c, vocab)` probabilities at once:
it walks the time axis in chunks, one after the other, computing each
chunk's values, and, in the backward pass, each chunk's gradient with
respect to the student's logits anew, in closed form,
`dL/ds = T * p_s * (g - sum_v p_s g)` with `g = dD/dp_s`
(`-p_t / p_s`, giving `T (p_s - p_t)`, for the forward KL;
`log p_s - log p_t` for the reverse KL; `(1 - beta)(log p_s - log m)` for
the JSD), in the logits' dtype (`keras.ops.custom_gradient`): the
softmaxes are computed twice, and the gradient's chunks and their
concatenation are the only whole tensors made. Autodiff through the
unchunked formula keeps several float32 copies of the whole `(positions,
vocab)` tensor.

References:
    Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural Network",
    2015, https://arxiv.org/abs/1503.02531
    Gu, Dong, Wei, Huang, "MiniLLM: Knowledge Distillation of Large Language
    Models", ICLR 2024, https://arxiv.org/abs/2306.08543
    Agarwal, Vieillard, Zhou, Stanczyk, Ramos, Geist, Bachem, "On-Policy
    Distillation of Language Models: Learning from Self-Generated Mistakes",
    ICLR 2024, https://arxiv.org/abs/2306.13649
"""

import math

import keras
from keras import ops

from keras_kd._validation import check_positive_int, check_temperature
from keras_kd.losses._tensors import after
from keras_kd.losses.base import DistillationLoss
from keras_kd.losses.logits import tempered_log_softmax
from keras_kd.top_k import INDICES_KEY, LOG_PROBS_KEY, is_top_k

DIVERGENCES = ("forward_kl", "reverse_kl", "jsd")
TOP_K_RESTS = ("bucket", "renormalize")
# The smallest "rest" mass a top-k bucket holds: float32's resolution of
# `1 - sum p_i`, so that `log(rest)` and its gradient stay finite.
_MIN_REST = 1e-7


def check_divergence(divergence, beta):
    """`(divergence, beta)`, validated; `jsd` at beta 0 or 1 is a KL."""
    if divergence not in DIVERGENCES:
        raise ValueError(
            f"`divergence` must be one of {DIVERGENCES}, got {divergence!r}."
        )
    if isinstance(beta, bool) or not isinstance(beta, (int, float)):
        raise ValueError(f"`beta` must be a number in [0, 1], got {beta!r}.")
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"`beta` must be in [0, 1], got {beta!r}.")
    return divergence, float(beta)


def _effective(divergence, beta):
    if divergence == "jsd" and beta == 0.0:
        return "forward_kl"
    if divergence == "jsd" and beta == 1.0:
        return "reverse_kl"
    return divergence


def _log_mixture(log_p_t, log_p_s, beta):
    """`log(beta * p_t + (1 - beta) * p_s)`, for 0 < beta < 1."""
    return ops.logaddexp(log_p_t + math.log(beta), log_p_s + math.log(1.0 - beta))


def _divergence(log_p_t, log_p_s, divergence, beta):
    """`D(p_t, p_s)` on the last axis, from float32 log-probabilities."""
    p_t, p_s = ops.exp(log_p_t), ops.exp(log_p_s)
    if divergence == "forward_kl":
        return ops.sum(p_t * (log_p_t - log_p_s), axis=-1)
    if divergence == "reverse_kl":
        return ops.sum(p_s * (log_p_s - log_p_t), axis=-1)
    log_m = _log_mixture(log_p_t, log_p_s, beta)
    teacher_term = ops.sum(p_t * (log_p_t - log_m), axis=-1)
    student_term = ops.sum(p_s * (log_p_s - log_m), axis=-1)
    return beta * teacher_term + (1.0 - beta) * student_term


def _log_probs(teacher_logits, student_logits, temperature):
    return (
        tempered_log_softmax(teacher_logits, temperature),
        tempered_log_softmax(student_logits, temperature),
    )


def _gradient(teacher_logits, student_logits, divergence, beta, temperature):
    """`d(T² D)/ds` at each position, in closed form: `T p_s (g - <p_s, g>)`."""
    log_p_t, log_p_s = _log_probs(teacher_logits, student_logits, temperature)
    p_s = ops.exp(log_p_s)
    if divergence == "forward_kl":
        return temperature * (p_s - ops.exp(log_p_t))
    if divergence == "reverse_kl":
        g = log_p_s - log_p_t
    else:
        g = (1.0 - beta) * (log_p_s - _log_mixture(log_p_t, log_p_s, beta))
    return temperature * p_s * (g - ops.sum(p_s * g, axis=-1, keepdims=True))


def _in_turn(compute, tensors, starts, size):
    """`[compute(*chunks) for each start]` on axis 1, each after the last.

    A chunk's inputs are read only once the previous chunk's result exists.
    """
    pieces, previous = [], None
    for i in starts:
        # Gate the whole tensor, then slice: a slice is a copy, and ungated
        # slices would all be made at once.
        chunks = [after(tensor, previous)[:, i : i + size] for tensor in tensors]
        previous = compute(*chunks)
        pieces.append(previous)
    return pieces


def _chunked(teacher_logits, student_logits, divergence, beta, temperature, chunk):
    """Values `(batch, ...)`, `chunk` positions per example at a time.

    The positions of each example (all axes but the batch and the vocabulary,
    flattened) are walked in slices of `chunk`, for the whole batch at once,
    so the batch size may be dynamic. The forward pass keeps the values
    only; the backward pass recomputes each chunk's probabilities for its
    closed-form gradient, chunk after chunk, so that no float32 `(positions,
    vocab)` intermediate is ever whole: the full tensors made are the
    gradient's chunks and their concatenation, in the logits' dtype.
    """
    shape = ops.shape(student_logits)
    vocab = shape[-1]
    positions = math.prod(int(d) for d in student_logits.shape[1:-1])
    starts = range(0, positions, chunk)
    teacher = ops.reshape(teacher_logits, (-1, positions, vocab))

    @ops.custom_gradient
    def loss(student):
        flat = ops.reshape(student, (-1, positions, vocab))

        def values(t, s):
            log_p_t, log_p_s = _log_probs(t, s, temperature)
            return temperature**2 * _divergence(log_p_t, log_p_s, divergence, beta)

        def grad(*args, upstream=None):
            if upstream is None:  # TensorFlow passes it positionally
                (upstream,) = args
            upstream = ops.reshape(ops.cast(upstream, "float32"), (-1, positions, 1))

            def gradient(t, s, up):
                direction = _gradient(t, s, divergence, beta, temperature)
                return ops.cast(up * direction, student.dtype)

            pieces = _in_turn(gradient, (teacher, flat, upstream), starts, chunk)
            return ops.reshape(ops.concatenate(pieces, axis=1), shape)

        pieces = _in_turn(values, (teacher, flat), starts, chunk)
        return ops.reshape(ops.concatenate(pieces, axis=1), shape[:-1]), grad

    return loss(student_logits)


def token_divergence(
    teacher_logits,
    student_logits,
    divergence: str = "forward_kl",
    beta: float = 0.5,
    temperature: float = 1.0,
    chunk_size: int | None = None,
):
    """Per-position divergence between teacher and student token distributions.

    `T² * D(softmax(t / T), softmax(s / T))` over the last axis, `D` the
    forward KL, the reverse KL, or the generalized JSD(beta) (see
    `keras_kd.losses.tokens`). With `chunk_size`, the positions of each
    example (the time axis) are walked `chunk_size` at a time for the whole
    batch: at most `batch * chunk_size` positions of float32 probabilities
    exist at once, and the gradient with respect to `student_logits` is the
    closed form. The positions per example must be static (the batch size
    need not be).

    Args:
        teacher_logits: Tensor `(..., vocab)`.
        student_logits: Tensor of the same shape.
        divergence: `"forward_kl"`, `"reverse_kl"` or `"jsd"`. Defaults to
            `"forward_kl"`.
        beta: JSD's mixing weight in [0, 1]. Defaults to `0.5`.
        temperature: Positive float T. Defaults to `1.0`.
        chunk_size: Positions per example per chunk, or `None` for one pass.
            Defaults to
            `None`.

    Returns:
        A float32 tensor of shape `(...)`.

    Raises:
        ValueError: for an unknown `divergence`, `beta` outside [0, 1],
            `temperature <= 0`, a bad `chunk_size`, or different shapes.

    Example:

    >>> import numpy as np, keras_kd
    >>> t = np.array([[0.0, 0.0]]); s = np.array([[0.0, 0.0]])
    >>> float(keras_kd.losses.token_divergence(t, s, "reverse_kl")[0])
    0.0
    """
    divergence, beta = check_divergence(divergence, beta)
    divergence = _effective(divergence, beta)
    temperature = check_temperature(temperature)
    if tuple(teacher_logits.shape) != tuple(student_logits.shape):
        raise ValueError(
            "`token_divergence` needs teacher and student logits of the same "
            f"shape (a shared vocabulary), got {tuple(teacher_logits.shape)} "
            f"and {tuple(student_logits.shape)}."
        )
    if chunk_size is not None:
        check_positive_int(chunk_size, "chunk_size")
        return _chunked(
            ops.convert_to_tensor(teacher_logits),
            ops.convert_to_tensor(student_logits),
            divergence,
            beta,
            temperature,
            chunk_size,
        )
    log_p_t, log_p_s = _log_probs(teacher_logits, student_logits, temperature)
    return temperature**2 * _divergence(log_p_t, log_p_s, divergence, beta)


def _log_rest(log_probs):
    """`log(1 - sum_i exp(log_probs_i))` on the last axis, keepdims.

    `log1mexp(x) = log(-expm1(x))` for `x > -log 2`, `log1p(-exp(x))` below,
    each branch fed only inputs where it is finite (so that `where` passes
    finite gradients); the rest mass is floored at `_MIN_REST`.
    """
    total = ops.logsumexp(log_probs, axis=-1, keepdims=True)
    total = ops.minimum(total, math.log1p(-_MIN_REST))
    near_one = ops.log(-ops.expm1(ops.maximum(total, -math.log(2.0))))
    far = ops.log1p(-ops.exp(ops.minimum(total, -math.log(2.0))))
    return ops.where(total > -math.log(2.0), near_one, far)


def _top_k_buckets(log_probs, rest):
    """The k log-probabilities with the rest bucket appended, or renormalized."""
    if rest == "renormalize":
        return log_probs - ops.logsumexp(log_probs, axis=-1, keepdims=True)
    return ops.concatenate([log_probs, _log_rest(log_probs)], axis=-1)


def check_top_k_rest(rest):
    if rest not in TOP_K_RESTS:
        raise ValueError(f"`top_k_rest` must be one of {TOP_K_RESTS}, got {rest!r}.")
    return rest


def top_k_divergence(
    teacher_log_probs,
    teacher_indices,
    student_logits,
    divergence: str = "forward_kl",
    beta: float = 0.5,
    temperature: float = 1.0,
    rest: str = "bucket",
):
    """Per-position divergence against a top-k teacher cache.

    With `a_i` the teacher's cached `log softmax(t / T)` at its top-k tokens
    `i` and `b_i = log softmax(s / T)_i` the student's at the same tokens:
    `T² * D(P, Q)`, `D` as in `token_divergence`, on

    - `rest="bucket"`: `P = (exp a_1 .. exp a_k, 1 - sum exp a_i)` and
      `Q = (exp b_1 .. exp b_k, 1 - sum exp b_i)`, k + 1 probabilities;
    - `rest="renormalize"`: `P = softmax(a)` and `Q = softmax(b)` over the
      k tokens.

    Args:
        teacher_log_probs: `(..., k)` float (float16 in a cache).
        teacher_indices: `(..., k)` integer token ids.
        student_logits: `(..., vocab)`.
        divergence: `"forward_kl"`, `"reverse_kl"` or `"jsd"`. Defaults to
            `"forward_kl"`.
        beta: JSD's mixing weight in [0, 1]. Defaults to `0.5`.
        temperature: The cache's temperature T. Defaults to `1.0`.
        rest: `"bucket"` or `"renormalize"`. Defaults to `"bucket"`.

    Returns:
        A float32 tensor of shape `(...)`.

    Raises:
        ValueError: for bad arguments, or teacher and student positions that
            differ.
    """
    divergence, beta = check_divergence(divergence, beta)
    divergence = _effective(divergence, beta)
    temperature = check_temperature(temperature)
    rest = check_top_k_rest(rest)
    if tuple(teacher_log_probs.shape[:-1]) != tuple(student_logits.shape[:-1]):
        raise ValueError(
            "The top-k cache and the student's logits must have the same "
            f"positions, got {tuple(teacher_log_probs.shape)} and "
            f"{tuple(student_logits.shape)}."
        )
    log_q = tempered_log_softmax(student_logits, temperature)
    at_top_k = ops.take_along_axis(log_q, ops.cast(teacher_indices, "int32"), axis=-1)
    log_p = ops.cast(teacher_log_probs, "float32")
    buckets = _top_k_buckets(log_p, rest), _top_k_buckets(at_top_k, rest)
    return temperature**2 * _divergence(*buckets, divergence, beta)


@keras.saving.register_keras_serializable(package="keras_kd")
class TokenDivergence(DistillationLoss):
    """Forward KL, reverse KL or JSD(beta) per token, as a Keras loss.

    For `Distiller.compile(distillation_loss_fn=...)` on logits `(batch,
    time, vocab)`: the Distiller averages the per-token values over the real
    tokens (its padding mask and weights). `y_true` holds the teacher's
    logits and `y_pred` the student's. See `keras_kd.losses.tokens` for the
    formulas and `keras_kd.losses.token_divergence`.

    Args:
        divergence: `"forward_kl"`, `"reverse_kl"` or `"jsd"`. Defaults to
            `"forward_kl"`.
        beta: JSD's mixing weight in [0, 1] (0: forward KL, 1: reverse KL).
            Defaults to `0.5`.
        temperature: Positive float T. Defaults to `1.0`.
        chunk_size: Positions per example per chunk (bounded memory at large
            vocabularies), or `None`. Defaults to `None`. Top-k targets are
            not chunked.
        top_k_rest: How a top-k teacher cache (`keras_kd.top_k`) is
            compared: `"bucket"` (the k tokens and the rest's mass) or
            `"renormalize"` (the k tokens only). Defaults to `"bucket"`.
        reduction: Keras loss reduction. Defaults to `"sum_over_batch_size"`.
        name: Loss name. Defaults to `"token_divergence"`.
        dtype: Dtype of the computation. Defaults to `"float32"`.

    Example:

    ```python
    distiller.compile(
        optimizer="adam",
        alpha=0.5,
        distillation_loss_fn=keras_kd.losses.TokenDivergence(
            "jsd", beta=0.5, chunk_size=1024
        ),
    )
    ```
    """

    def __init__(
        self,
        divergence: str = "forward_kl",
        beta: float = 0.5,
        temperature: float = 1.0,
        chunk_size: int | None = None,
        top_k_rest: str = "bucket",
        reduction: str = "sum_over_batch_size",
        name: str = "token_divergence",
        dtype: str = "float32",
    ) -> None:
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.divergence, self.beta = check_divergence(divergence, beta)
        self.temperature = check_temperature(temperature)
        if chunk_size is not None:
            check_positive_int(chunk_size, "chunk_size")
        self.chunk_size = chunk_size
        self.top_k_rest = check_top_k_rest(top_k_rest)

    def call(self, y_true, y_pred):
        if is_top_k(y_true):
            return top_k_divergence(
                y_true[LOG_PROBS_KEY],
                y_true[INDICES_KEY],
                y_pred,
                self.divergence,
                self.beta,
                self.temperature,
                self.top_k_rest,
            )
        return token_divergence(
            y_true,
            y_pred,
            self.divergence,
            self.beta,
            self.temperature,
            self.chunk_size,
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "divergence": self.divergence,
                "beta": self.beta,
                "temperature": self.temperature,
                "chunk_size": self.chunk_size,
                "top_k_rest": self.top_k_rest,
            }
        )
        return config

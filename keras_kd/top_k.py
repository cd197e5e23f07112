"""Top-k teacher caches: the k most likely tokens per position, not the vocabulary.

A dense cache of language-model logits holds `positions x vocabulary`
numbers per example (32,000 float16 values, 64 kB, per token at a 32k
vocabulary). A top-k cache, as DistillKit stores for offline LM
distillation, keeps per position only the teacher's k largest tempered
log-probabilities `log softmax(t / T)_i`, `i` in `top_k(t)`, as float16,
and their indices, as uint16 when the vocabulary has at most 65,536 tokens
(int32 otherwise): `k * 4` bytes per token, 128 bytes at `k = 32`.

The distribution outside the k tokens is unknown except for its mass,
`1 - sum_i p_t,i`. `keras_kd.losses.TokenDivergence` trains on the cache in
one of two ways (`top_k_rest=`):

- `"bucket"` (default): the k tokens and one "rest" bucket, for teacher and
  student alike: `p = (p_1 .. p_k, 1 - sum p_i)`, `q = (q_1 .. q_k, 1 - sum
  q_i)` with `q_i = softmax(s / T)_i`, and the divergence on these k + 1
  probabilities. It asks of the student only what the cache knows: the
  mass it puts outside the k tokens, not how it spreads it.
- `"renormalize"`: both distributions restricted to the k tokens and
  renormalized over them, the rest ignored (the student is free outside
  the k tokens).

The temperature is fixed when the cache is built (the tempered
distribution's normalizer needs the whole vocabulary), and the loss's
temperature must equal it.
"""

from typing import NamedTuple

import numpy as np
from keras import ops

from keras_kd._validation import check_positive_int, check_temperature

# Keys of a top-k cache as it travels inside a batch, next to the inputs.
LOG_PROBS_KEY = "top_k_log_probs"
INDICES_KEY = "top_k_indices"
_UINT16_TOKENS = 2**16


def index_dtype(vocabulary_size):
    """The smallest index dtype for `vocabulary_size` tokens: uint16 or int32."""
    return "uint16" if vocabulary_size <= _UINT16_TOKENS else "int32"


def is_top_k(teacher_targets):
    """Whether a batch's teacher targets are a top-k cache (a dict of two)."""
    return isinstance(teacher_targets, dict) and LOG_PROBS_KEY in teacher_targets


def positions_of(teacher_targets):
    """A tensor with the teacher targets' positions: `(batch, ..., ·)`."""
    if is_top_k(teacher_targets):
        return teacher_targets[LOG_PROBS_KEY]
    return teacher_targets


def check_top_k(top_k, vocabulary_size):
    """`top_k`, validated: a positive int no larger than the vocabulary."""
    check_positive_int(top_k, "top_k")
    if top_k > vocabulary_size:
        raise ValueError(
            f"`top_k` must be at most the vocabulary size {vocabulary_size}, "
            f"got {top_k}."
        )
    return top_k


def top_k_log_probs(logits, k, temperature=1.0):
    """`(log_probs, indices)`: the k largest of `log softmax(logits / T)`.

    Float32 log-probabilities and int32 indices, shape `(..., k)`, largest
    first.
    """
    # Imported here: `keras_kd.losses` reads this module's batch keys.
    from keras_kd.losses.logits import tempered_log_softmax

    log_probs = tempered_log_softmax(logits, check_temperature(temperature))
    values, indices = ops.top_k(log_probs, check_top_k(k, int(logits.shape[-1])))
    return values, ops.cast(indices, "int32")


class TopKTeacherOutputs(NamedTuple):
    """A top-k cache of teacher outputs, from `cache_teacher_outputs(top_k=k)`.

    Pass it to `Distiller.fit(x, y, teacher_logits=...)` with a
    `TokenDivergence` loss at the cache's `temperature`.

    Attributes:
        log_probs: float16 array `(num_examples, ..., k)`, the teacher's k
            largest tempered log-probabilities per position, largest first.
        indices: uint16 or int32 array of the same shape, their tokens.
        temperature: The temperature T of `log softmax(t / T)`.
        vocabulary_size: The teacher's vocabulary size.
    """

    log_probs: np.ndarray
    indices: np.ndarray
    temperature: float
    vocabulary_size: int

    @property
    def nbytes(self):
        """Bytes held: values and indices."""
        return int(self.log_probs.nbytes + self.indices.nbytes)

    def covered_mass(self, rows_per_block=1024):
        """The mean over positions of `sum_i p_t,i`: the share of the
        teacher's tempered probability that the k tokens hold.

        Near 1, the cache is the teacher's distribution; far below, the rest
        bucket (or renormalization) stands for much of it: a larger `k`, or
        a dense cache, is then worth its size (RESULTS.md measures one such
        case). Read in blocks of rows, so a memory-mapped cache is not
        loaded whole.
        """
        total, count = 0.0, 0
        for start in range(0, len(self.log_probs), rows_per_block):
            block = np.asarray(self.log_probs[start : start + rows_per_block])
            mass = np.exp(block.astype("float64")).sum(axis=-1)
            total, count = total + mass.sum(), count + mass.size
        return total / count

    def dense_nbytes(self, dtype="float16"):
        """Bytes of the dense cache of the same positions, in `dtype`."""
        positions = int(np.prod(self.log_probs.shape[:-1]))
        return positions * self.vocabulary_size * np.dtype(dtype).itemsize

    def as_batch_targets(self):
        """The dict that travels with the inputs through Keras' batching."""
        return {LOG_PROBS_KEY: self.log_probs, INDICES_KEY: self.indices}


def check_top_k_training(cache, loss_fn, temperature, student_classes):
    """`ValueError` unless a top-k `cache` can train with `loss_fn`.

    The loss must be a `TokenDivergence` (the only loss that reads a top-k
    cache) at the cache's temperature, and the student's vocabulary (when
    known statically) the cache's.
    """
    from keras_kd.losses.tokens import TokenDivergence

    if not isinstance(loss_fn, TokenDivergence):
        raise ValueError(
            "A top-k teacher cache trains with `distillation_loss_fn="
            "keras_kd.losses.TokenDivergence(...)`, got "
            f"{type(loss_fn).__name__}: compile with a TokenDivergence."
        )
    if temperature != cache.temperature:
        raise ValueError(
            f"The top-k cache holds log-probabilities at temperature "
            f"{cache.temperature}, but the loss uses {temperature}: a tempered "
            "distribution cannot be re-tempered from its top k. Build the cache "
            "at the loss's temperature (`cache_teacher_outputs(..., "
            "temperature=T)`)."
        )
    if student_classes is not None and student_classes != cache.vocabulary_size:
        raise ValueError(
            f"The top-k cache comes from a teacher with {cache.vocabulary_size} "
            f"tokens, but the student outputs {student_classes}: teacher and "
            "student must share one vocabulary."
        )


def check_top_k_batch(targets, student_logits):
    """`ValueError` if a batch's top-k targets do not fit the student's logits."""
    log_probs, indices = targets[LOG_PROBS_KEY], targets[INDICES_KEY]
    if tuple(log_probs.shape[:-1]) != tuple(student_logits.shape[:-1]):
        raise ValueError(
            f"The top-k cache has positions {tuple(log_probs.shape[:-1])} but "
            f"the student's logits {tuple(student_logits.shape[:-1])}."
        )
    vocabulary = int(student_logits.shape[-1])
    largest = int(np.max(ops.convert_to_numpy(indices)))
    if largest >= vocabulary:
        raise ValueError(
            f"The top-k cache names token {largest}, but the student's "
            f"vocabulary has {vocabulary} tokens: teacher and student must "
            "share one vocabulary."
        )


def as_tensors(targets):
    """A batch's top-k targets as the loss reads them: float32 values, int32
    indices, without gradients."""
    return {
        LOG_PROBS_KEY: ops.stop_gradient(ops.cast(targets[LOG_PROBS_KEY], "float32")),
        INDICES_KEY: ops.cast(targets[INDICES_KEY], "int32"),
    }

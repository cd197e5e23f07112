"""Consistent augmentation and mixup for distillation.

`Distiller(..., augmentation=layer)` passes every training batch once through
the augmentation, and both models see the result. `Distiller(...,
mixup_alpha=a)` then mixes the batch with a permutation of itself, `x' = lam *
x + (1 - lam) * x[partners]`, `lam ~ Beta(a, a)` once per batch, before the
teacher and the student see it. `Mixup` is that step (seeded, saved with the
distiller's config); the functions below are its pure pieces, so that they
can be checked by hand. A `MixupDraw` carries one step's `(lam, partners)` to
the losses: each position's label loss, mask and weight mix the same way.

With mixup, the label loss is `lam * L(y, s) + (1 - lam) * L(y[partners],
s)`; the share of an unlabeled example (or partner) carries no label loss,
only the distillation term on the mixed image. Sample weights mix the same
way. Training metrics use the label of the larger share (`lam >= 0.5`: the
example's own). With `jit_compile=True` the augmentation layers must
themselves compile with XLA (`RandomFlip`, `RandomCrop`, `GaussianNoise` do;
`RandomTranslation`, `RandomRotation` and `RandomZoom` do not, in TensorFlow
2.21); `jit_compile="auto"` checks this. Under a `tf.distribute` strategy,
create the augmentation in the strategy's scope with the models.

The draws are stateless (seeded by the optimizer's step counter and the
mixup seed) and come from `keras_kd._random`, a counter-based generator of
32-bit integer operations: they are XLA-compatible (`keras.random.beta` is
not: TensorFlow has no XLA kernel for its gamma sampler), the same on
TensorFlow, JAX and PyTorch (`keras.random` draws differ between backends),
and a resumed run draws the same lambdas as an uninterrupted one.

Reference:
    Zhang, Cisse, Dauphin, Lopez-Paz, "mixup: Beyond Empirical Risk
    Minimization", 2018, https://arxiv.org/abs/1710.09412
"""

import math
from typing import NamedTuple

import keras
import numpy as np
from keras import ops

from keras_kd import _random
from keras_kd._validation import as_float

# Marsaglia-Tsang accepts a proposal with probability > 0.95 for shapes >= 1:
# 32 proposals all fail with probability < 1e-40.
_GAMMA_PROPOSALS = 32


def check_mixup_alpha(mixup_alpha):
    """`None`, or `mixup_alpha` as a float; `ValueError` unless finite and > 0."""
    if mixup_alpha is None:
        return None
    accepted = (
        "None or a finite number > 0 (the Beta(a, a) concentration; 0.1 to 0.4 "
        "is usual)"
    )
    value = as_float(mixup_alpha, "mixup_alpha", accepted)
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"`mixup_alpha` must be {accepted}, got {mixup_alpha!r}.")
    return value


def _log_gamma_sample(concentration, seed, stream: int):
    """`log(g)`, `g ~ Gamma(concentration, 1)`, a float32 scalar, XLA-safe.

    Marsaglia and Tsang's method on shape `concentration + 1` with a fixed
    number of vectorized proposals, then `g = g1 * U ** (1 / concentration)`
    (in log space, so that small shapes do not underflow).
    """
    shape = concentration + 1.0
    d = shape - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    z = _random.normal(seed, _GAMMA_PROPOSALS, stream=3 * stream)
    u = _random.uniform(seed, _GAMMA_PROPOSALS, stream=3 * stream + 1)
    v = (1.0 + c * z) ** 3
    safe_v = ops.maximum(v, 1e-12)
    accepted = ops.logical_and(
        v > 0, ops.log(u) < 0.5 * z**2 + d - d * safe_v + d * ops.log(safe_v)
    )
    first = ops.argmax(ops.cast(accepted, "int32"))
    log_g1 = math.log(d) + ops.log(ops.take(safe_v, first))
    boost = _random.uniform(seed, 1, stream=3 * stream + 2)[0]
    return log_g1 + ops.log(boost) / concentration


def sample_mixup(batch_size, mixup_alpha, seed):
    """Draws a mixup weight and a partner for every example of a batch.

    The draws come from `keras_kd._random`, a counter-based generator that
    gives the same numbers on TensorFlow, JAX and PyTorch.

    Args:
        batch_size: Number of examples (an int or a scalar tensor).
        mixup_alpha: Concentration `a` of `Beta(a, a)`, > 0.
        seed: Two integer words, for example `(step, seed)` (ints, or a
            tensor of shape `(2,)`).

    Returns:
        `(lam, partners)`: `lam ~ Beta(a, a)`, a float32 scalar shared by the
        batch, and `partners`, an int32 random permutation of
        `range(batch_size)`.

    Example:

    ```python
    lam, partners = keras_kd.augmentation.sample_mixup(8, 0.2, [0, 1])
    ```
    """
    check_mixup_alpha(mixup_alpha)
    key = _random.key(seed[0], seed[1])
    log_a = _log_gamma_sample(float(mixup_alpha), key, stream=0)
    log_b = _log_gamma_sample(float(mixup_alpha), key, stream=1)
    lam = ops.sigmoid(log_a - log_b)  # a / (a + b), without under/overflow.
    partners = _random.permutation(key, batch_size, stream=6)
    return lam, partners


def mix_inputs(x, lam, partners):
    """Mixes a batch with its partners: `lam * x + (1 - lam) * x[partners]`.

    Every floating-point array of a nested input structure is mixed with the
    same `lam` and `partners`.

    Args:
        x: A batch: a tensor or a nested structure of tensors.
        lam: Mixing weight of each example's own input, a scalar.
        partners: Integer tensor of shape `(batch,)`: example `i` is mixed
            with example `partners[i]`.

    Returns:
        The mixed batch, with the structure and dtypes of `x`.

    Raises:
        ValueError: for integer or boolean inputs (token ids cannot be mixed).

    Example:

    ```python
    x = np.array([[0.0], [10.0]])
    keras_kd.augmentation.mix_inputs(x, 0.75, [1, 0])  # [[2.5], [7.5]]
    ```
    """

    def mix(value):
        value = ops.convert_to_tensor(value)
        dtype = keras.backend.standardize_dtype(value.dtype)
        if not dtype.startswith(("float", "bfloat")):
            raise ValueError(
                f"mixup needs floating-point inputs, got an input of dtype "
                f"{dtype}. Use `mixup_alpha=None` for token ids or other "
                "discrete inputs."
            )
        weight = ops.cast(lam, dtype)
        return weight * value + (1 - weight) * ops.take(value, partners, axis=0)

    return keras.tree.map_structure(mix, x)


def mix_per_example(values, lam, partners):
    """`lam * values + (1 - lam) * values[partners]` for per-example weights.

    Args:
        values: Tensor of shape `(batch,)` (losses, weights or label masks).
        lam: Mixing weight, a scalar.
        partners: Integer tensor of shape `(batch,)`.

    Returns:
        A float32 tensor of shape `(batch,)`.
    """
    values = ops.cast(values, "float32")
    lam = ops.cast(lam, "float32")
    return lam * values + (1.0 - lam) * ops.take(values, partners, axis=0)


def dominant(values, lam, partners):
    """Each example's own value where `lam >= 0.5`, else its partner's.

    Used for what cannot be mixed: the training metrics and the label that
    label-aware distillation losses receive.
    """
    return ops.where(
        ops.greater_equal(lam, 0.5), values, ops.take(values, partners, axis=0)
    )


class MixupDraw(NamedTuple):
    """One step's mixup: the weight `lam` and each example's partner."""

    lam: object  # float32 scalar
    partners: object  # int32 (batch,)

    def mix(self, values):
        """`lam * values + (1 - lam) * values[partners]`, float32 `(batch,)`."""
        return mix_per_example(values, self.lam, self.partners)

    def dominant(self, values):
        """Each example's value where `lam >= 0.5`, else its partner's."""
        return dominant(values, self.lam, self.partners)

    def partner(self, values):
        """`values[partners]`: each example's partner's value."""
        return ops.take(values, self.partners, axis=0)


class Mixup:
    """Mixes each training batch with a permutation of itself.

    `lam ~ Beta(alpha, alpha)` and the partners are drawn from a stateless
    seed `(step, seed)`: the same step of a resumed run draws the same mix.

    Args:
        alpha: Concentration `a > 0` of `Beta(a, a)`.
        seed: Integer seed, or `None` to draw one from NumPy's global
            generator (which `keras.utils.set_random_seed` seeds).
    """

    def __init__(self, alpha: float, seed: int | None = None) -> None:
        self.alpha = check_mixup_alpha(alpha)
        if seed is None:
            seed = int(np.random.randint(2**31 - 1))
        self.seed = int(seed)

    def draw(self, step, batch_size) -> MixupDraw:
        """The `MixupDraw` of training step `step` for a batch of `batch_size`."""
        return MixupDraw(*sample_mixup(batch_size, self.alpha, (step, self.seed)))

    def __call__(self, x, step):
        """`(mixed x, draw)` for the batch `x` at training step `step`."""
        batch_size = ops.shape(keras.tree.flatten(x)[0])[0]
        draw = self.draw(step, batch_size)
        return mix_inputs(x, draw.lam, draw.partners), draw


def resolve_augmentation(augmentation):
    """A single layer for `augmentation`: a layer, a model or a list of them."""
    if augmentation is None or isinstance(augmentation, keras.layers.Layer):
        return augmentation
    if isinstance(augmentation, (list, tuple)) and all(
        isinstance(layer, keras.layers.Layer) for layer in augmentation
    ):
        if not augmentation:
            return None
        return keras.Sequential(list(augmentation), name="augmentation")
    raise ValueError(
        "`augmentation` must be None, a Keras layer or model (for example "
        "`keras.layers.RandomTranslation(0.1, 0.1)` or a `keras.Sequential` "
        f"of preprocessing layers) or a list of layers; got {augmentation!r}."
    )

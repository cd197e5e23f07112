"""Stateless random numbers that are the same on every Keras backend.

`keras.random` draws with each backend's own generator, so a seed gives
different numbers on TensorFlow, JAX and PyTorch, and TensorFlow's gamma
sampler has no XLA kernel. Mixup draws a few numbers per step; here they come
from a counter-based generator built of 32-bit integer operations that every
backend computes alike, inside or outside compiled functions:

    bits(key, n)[i] = h(key + i)      (int32, wrapping)

with `h` the bijective integer hash "lowbias32" (C. Wellons, "Prospecting for
hash functions", 2018):

    x ^= x >> 16; x *= 0x7feb352d; x ^= x >> 15; x *= 0x846ca68b; x ^= x >> 16

(logical shifts, products modulo 2**32). `h` is a bijection, so the `n` bits
of one key are distinct: sorting them gives a permutation without ties.
Keys are derived from a seed by hashing it word by word (`key`).
"""

import math

from keras import ops

_MULTIPLIERS = (0x7FEB352D, 0x846CA68B - 2**32)  # as int32
_SHIFTS = (16, 15, 16)
_KEY_START = 0x9E3779B9 - 2**32  # the golden ratio's bits, as int32
_UNIFORM_BITS = 24  # float32 holds 24-bit integers exactly


def _logical_right_shift(x, shift: int):
    """`x >> shift` on int32 as if it were unsigned (zeros shifted in)."""
    return ops.bitwise_and(ops.right_shift(x, shift), (1 << (32 - shift)) - 1)


def _hash(x):
    """lowbias32 of an int32 tensor, elementwise."""
    x = ops.cast(x, "int32")
    for shift, multiplier in zip(_SHIFTS, _MULTIPLIERS + (None,)):
        x = ops.bitwise_xor(x, _logical_right_shift(x, shift))
        if multiplier is not None:
            x = ops.multiply(x, ops.convert_to_tensor(multiplier, "int32"))
    return x


def key(*words):
    """An int32 scalar key from integer words (ints or integer scalars)."""
    state = ops.convert_to_tensor(_KEY_START, "int32")
    for word in words:
        state = _hash(ops.bitwise_xor(state, ops.cast(word, "int32")))
    return state


def bits(seed, n):
    """`n` distinct pseudo-random int32 values `h(seed + i)`, `i < n`."""
    counters = ops.arange(n, dtype="int32")
    return _hash(ops.add(ops.cast(seed, "int32"), counters))


def uniform(seed, n, stream: int = 0):
    """`n` float32 values uniform on the open interval (0, 1)."""
    top = _logical_right_shift(bits(key(seed, stream), n), 32 - _UNIFORM_BITS)
    return (ops.cast(top, "float32") + 0.5) / float(2**_UNIFORM_BITS)


def normal(seed, n, stream: int = 0):
    """`n` float32 standard normals (Box-Muller on two uniform streams)."""
    radius = ops.sqrt(-2.0 * ops.log(uniform(seed, n, 2 * stream + 1)))
    angle = (2.0 * math.pi) * uniform(seed, n, 2 * stream + 2)
    return radius * ops.cos(angle)


def permutation(seed, n, stream: int = 0):
    """A random permutation of `range(n)`, int32 (no ties: `h` is a bijection)."""
    return ops.cast(ops.argsort(bits(key(seed, stream), n)), "int32")

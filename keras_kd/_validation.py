"""Argument checks shared by the losses and the trainers.

Every check accepts a Python number, a NumPy scalar (`np.float32(2.0)`) or a
0-d tensor or array, returns it as a Python `float`, and raises a
`ValueError` that names the argument, the value and what is accepted.
"""

import numbers

import numpy as np


def as_float(value, name: str, accepted: str) -> float:
    """`value` as a Python float; `ValueError` for bools and non-scalars."""
    if isinstance(value, (bool, np.bool_)):
        raise ValueError(f"`{name}` must be {accepted}, got {value!r}.")
    if isinstance(value, numbers.Real):
        return float(value)
    try:
        array = np.asarray(value)
    except Exception:  # A symbolic tensor or an arbitrary object.
        array = None
    if array is None or array.ndim != 0 or array.dtype.kind not in "iuf":
        raise ValueError(f"`{name}` must be {accepted}, got {value!r}.")
    return float(array)


def check_temperature(temperature, name: str = "temperature") -> float:
    """A positive, finite temperature T as a float."""
    accepted = "a positive, finite number (T > 0; T = 1 is the plain softmax)"
    value = as_float(temperature, name, accepted)
    if not 0.0 < value < float("inf"):
        raise ValueError(
            f"`{name}` must be {accepted}; T = 2 to 20 is usual. Got {temperature!r}."
        )
    return value


def check_nonnegative(value, name: str = "weight") -> float:
    """A finite weight >= 0 as a float."""
    accepted = "a finite number >= 0 (a weight)"
    number = as_float(value, name, accepted)
    if not 0.0 <= number < float("inf"):
        raise ValueError(f"`{name}` must be {accepted}, got {value!r}.")
    return number


def check_positive_int(value, name: str) -> int:
    """An int >= 1 (a count or a batch size); bools are rejected."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"`{name}` must be a positive int, got {value!r}.")
    if value < 1:
        raise ValueError(f"`{name}` must be a positive int, got {value!r}.")
    return int(value)


def check_fraction(value, name: str, meaning: str) -> float:
    """A number in [0, 1] as a float; `meaning` says what it weighs."""
    accepted = "a number in [0, 1]"
    number = as_float(value, name, accepted)
    if not 0.0 <= number <= 1.0:
        raise ValueError(
            f"`{name}` must be in [0, 1]: {meaning}. Got {name}={value!r}."
        )
    return number


def check_flag(value, name: str) -> bool:
    """`value` if it is `True` or `False` (a NumPy bool too); else `ValueError`."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"`{name}` must be True or False, got {value!r}.")
    return bool(value)

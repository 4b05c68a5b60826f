"""Small value checks shared by every layer (configs, data, retrieval)."""

import numbers

import numpy as np


def is_int(value) -> bool:
    """Whether ``value`` is an integer (NumPy's too), but not a bool."""
    return (isinstance(value, numbers.Integral)
            and not isinstance(value, (bool, np.bool_)))

"""On/off settings as they arrive from bundle configs and command lines.

``python -m monai.bundle run ... --dicom_output false`` passes the *string* ``"false"`` (the command line is parsed
by ``fire``, which knows ``False`` but not JSON's ``false``), and any non-empty string is true in Python: a flag
read with a plain ``if`` would do the opposite of what was asked. :func:`as_flag` reads the spellings people write
and refuses the rest by name.
"""

from __future__ import annotations

import numpy as np

__all__ = ["as_flag"]

_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


def as_flag(value, name: str) -> bool:
    """``value`` as a ``bool``: a bool (Python or numpy), 0 or 1, or one of ``true/false/yes/no/on/off/1/0`` in any case.

    Args:
        value: the setting as read from a config or command line.
        name: the setting's name, for the error message.

    Raises:
        ValueError: anything else (e.g. ``"flase"``, ``2``, ``None``), naming ``name`` and the value.

    Example:
        >>> as_flag("False", "dicom_output"), as_flag(True, "progress")
        (False, True)
    """
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError(f"{name} must be true or false, got {value!r}.")

"""On/off settings as they arrive from bundle configs and command lines.

``python -m monai.bundle run ... --dicom_output false`` passes the *string* ``"false"`` (the command line is parsed
by ``fire``, which knows ``False`` but not JSON's ``false``), and any non-empty string is true in Python: a flag
read with a plain ``if`` would do the opposite of what was asked. :func:`as_flag` reads the spellings people write
and refuses the rest by name.
"""

from __future__ import annotations

import numpy as np

__all__ = ["as_flag", "as_flag_or_file"]

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


def as_flag_or_file(value, name: str, expected: str = "a file"):
    """A setting that is either on/off or a file, as ``--resume`` is (``true``: the newest checkpoint; a path: that
    one): ``False`` for an empty value or any false spelling, ``True`` for a true one, else the existing file as a
    ``pathlib.Path``.

    Args:
        value: the setting.
        name: its name, for the message.
        expected: what the file should be, for the message.

    Raises:
        FileNotFoundError: a path that does not exist.
    """
    from pathlib import Path

    if value is None or (isinstance(value, str) and not value.strip()):
        return False
    if isinstance(value, str) and value.strip().lower() not in _TRUE + _FALSE:
        if not Path(value).is_file():
            raise FileNotFoundError(f"{name} names {value}, which does not exist; give {expected} or true.")
        return Path(value)
    return as_flag(value, name)

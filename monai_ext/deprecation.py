"""Old names kept working for one release, with a ``DeprecationWarning`` that says the new one.

- :func:`renamed_keyword`: a function or constructor whose keyword was renamed (``geom`` -> ``geometry``).
- :func:`alias_modules`: modules that moved (``monai_ext.pet.recon`` -> ``monai_ext.pet.expectation_maximisation``):
  importing the old dotted name gives the new module.
"""

from __future__ import annotations

import functools
import importlib
import importlib.abc
import importlib.util
import sys
import warnings

__all__ = ["renamed_keyword", "alias_modules"]


def renamed_keyword(old: str, new: str):
    """Decorator: accept the keyword ``old`` as ``new``, with a ``DeprecationWarning``.

    Example:
        >>> @renamed_keyword("geom", "geometry")
        ... def size(geometry):
        ...     return geometry
        >>> import warnings
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore")
        ...     size(geom=3)
        3
    """

    def decorate(function):
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            if old in kwargs:
                if new in kwargs:
                    raise TypeError(f"{function.__qualname__}() got both {new!r} and its old name {old!r}.")
                warnings.warn(
                    f"{function.__qualname__}(): the keyword {old!r} is now {new!r}; {old!r} goes in the next release.",
                    DeprecationWarning,
                    stacklevel=2,
                )
                kwargs[new] = kwargs.pop(old)
            return function(*args, **kwargs)

        return wrapper

    return decorate


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, old: str, new: str) -> None:
        self.old, self.new = old, new

    def create_module(self, spec):
        warnings.warn(f"{self.old} moved to {self.new}; the old name goes in the next release.", DeprecationWarning, stacklevel=2)
        return importlib.import_module(self.new)

    def exec_module(self, module) -> None:  # the new module is already executed
        sys.modules[self.old] = module


class _AliasFinder(importlib.abc.MetaPathFinder):
    aliases: dict[str, str] = {}

    def find_spec(self, fullname, path=None, target=None):
        new = self.aliases.get(fullname)
        if new is None:
            return None
        return importlib.util.spec_from_loader(fullname, _AliasLoader(fullname, new))


def alias_modules(aliases: dict[str, str]) -> None:
    """Make ``import old`` give the module ``new`` (with a ``DeprecationWarning``) for every ``old: new`` pair."""
    _AliasFinder.aliases.update(aliases)
    if not any(isinstance(f, _AliasFinder) for f in sys.meta_path):
        sys.meta_path.append(_AliasFinder())

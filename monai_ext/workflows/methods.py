"""Choosing a reconstruction method by name in a bundle config, and loading trained weights for it."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import torch

__all__ = ["check_choice", "select_method", "weights_name", "load_method_weights", "count_parameters"]


def check_choice(name: str, value, choices: Iterable) -> object:
    """Return ``value`` if it is one of ``choices``, else raise a ``ValueError`` that names ``name`` and the choices.

    Example:
        >>> check_choice("method", "lpd", ["fbp", "lpd"])
        'lpd'
    """
    options = list(choices)
    if value not in options:
        raise ValueError(f"unknown {name} {value!r}; choose one of {options}.")
    return value


def select_method(methods: Mapping[str, torch.nn.Module], method: str, known: Iterable[str] | None = None) -> torch.nn.Module:
    """``methods[method]``, with a clear error for a name that is not there.

    Args:
        methods: reconstruction modules by name.
        method: the name asked for (e.g. a ``--method`` override).
        known: every valid name (defaults to ``methods``' keys); a bundle whose config instantiates only the
            selected method passes the full list so the error can show it.

    Raises:
        ValueError: ``method`` is not a known name, or is known but was not built.
    """
    check_choice("method", method, known if known is not None else methods.keys())
    if method not in methods:
        raise ValueError(f"method {method!r} is known but was not built by this config.")
    return methods[method]


def weights_name(method: str, model_method: str | None = None) -> str:
    """File name of a method's trained weights: ``model.pt`` for the bundle's default network (``model_method``),
    the file the Model Zoo, ``monai.bundle load`` and MONAI Label look for; ``<method>.pt`` for the others.

    Example:
        >>> weights_name("lpd", "lpd"), weights_name("unrolled", "lpd")
        ('model.pt', 'unrolled.pt')
    """
    return "model.pt" if model_method is not None and method == model_method else f"{method}.pt"


def load_method_weights(methods: Mapping[str, torch.nn.Module], names: Iterable[str], directory: str, device=None,
                        model_method: str | None = None) -> dict:
    """Load each method's weights (a state dict, :func:`weights_name`) from ``directory`` into ``methods[name]``.

    Args:
        methods: modules by name.
        names: the methods that have trained weights.
        directory: folder of the ``.pt`` files.
        device: ``map_location`` for ``torch.load``.
        model_method: the bundle's default network, whose weights are ``model.pt``.

    Returns:
        ``methods`` (for chaining in configs).

    Raises:
        FileNotFoundError: a weights file is missing (the message says how to regenerate it).
        ValueError: a name not in ``methods``.
    """
    root = Path(directory)
    for name in names:
        check_choice("method", name, methods.keys())
        path = root / weights_name(name, model_method)
        if not path.is_file():
            raise FileNotFoundError(f"trained weights for {name!r} not found at {path}; train them with configs/train.json --method {name}.")
        state = torch.load(path, map_location=device or "cpu", weights_only=True)
        methods[name].load_state_dict(state)
    return dict(methods)


def count_parameters(module: torch.nn.Module) -> dict:
    """``{"trainable": n, "fixed": m}``: learned parameters, and fixed learned values (frozen parameters, buffers)."""
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in module.parameters() if not p.requires_grad)
    buffers = sum(b.numel() for b in module.buffers())
    return {"trainable": int(trainable), "fixed": int(frozen + buffers)}

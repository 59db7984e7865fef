"""Reading a bundle config under other settings, e.g. the inference methods at another projection count."""

from __future__ import annotations

from pathlib import Path

__all__ = ["config_content"]


def config_content(config_file: str, key: str, **overrides):
    """The parsed content of ``key`` in ``config_file`` with ``overrides`` set first (a fresh parser per call).

    Args:
        config_file: a bundle config (JSON/YAML).
        key: the config id to instantiate, e.g. ``"networks"``.
        overrides: config ids and values to set before parsing (``bundle_root``, ``n_views``, ...).

    Raises:
        FileNotFoundError: ``config_file`` does not exist.
        KeyError: ``key`` is not in the config.

    Example:
        >>> nets = config_content("bundles/cbct_learned_primal_dual/configs/inference.json", "networks",
        ...                       bundle_root="bundles/cbct_learned_primal_dual", n_views=100)  # doctest: +SKIP
    """
    from monai.bundle import ConfigParser

    path = Path(config_file)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    parser = ConfigParser()
    parser.read_config(str(path))
    for name, value in overrides.items():
        parser[name] = value
    if key not in parser:
        raise KeyError(f"{key!r} is not defined in {path}.")
    return parser.get_parsed_content(key)

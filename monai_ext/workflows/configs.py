"""Bundle configs in this process: a config's content under other settings, and the bundle whose ``scripts``
package ``import scripts`` finds.

A bundle's own experiment code lives in ``<bundle>/scripts/`` and its configs name it as ``"_target_":
"scripts.module.name"`` (the Model Zoo pattern). ``monai.bundle run`` puts the bundle root on ``sys.path``; code that
parses configs of several bundles in one process (tests, the MONAI Label app) calls :func:`use_bundle_scripts`
before each, so that one bundle's ``scripts`` is never taken for another's.
"""

from __future__ import annotations

import sys
from pathlib import Path

__all__ = ["config_content", "use_bundle_scripts", "bundle_module"]


def use_bundle_scripts(bundle_root) -> None:
    """Make ``bundle_root``'s ``scripts`` package the one ``import scripts`` finds: forget the ``scripts`` modules
    imported so far (another bundle's) and put the bundle root first on ``sys.path``.

    Raises:
        FileNotFoundError: ``bundle_root`` is not a folder.
    """
    root = Path(bundle_root).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"bundle_root is not a folder: {root}")
    for name in [m for m in sys.modules if m == "scripts" or m.startswith("scripts.")]:
        del sys.modules[name]
    while str(root) in sys.path:
        sys.path.remove(str(root))
    sys.path.insert(0, str(root))


def bundle_module(bundle_root, name: str):
    """The module ``scripts.<name>`` of the bundle at ``bundle_root`` (its own code), imported as its configs import it
    (for tests and studies that call it directly).

    Raises:
        FileNotFoundError: ``bundle_root`` is not a folder.
        ModuleNotFoundError: the bundle has no ``scripts/<name>.py``.
    """
    import importlib

    use_bundle_scripts(bundle_root)
    return importlib.import_module(f"scripts.{name}")


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
    if path.parent.name == "configs":
        use_bundle_scripts(path.parent.parent)
    parser = ConfigParser()
    parser.read_config(str(path))
    for name, value in overrides.items():
        parser[name] = value
    if key not in parser:
        raise KeyError(f"{key!r} is not defined in {path}.")
    return parser.get_parsed_content(key)

"""Shared by the bundle tests: a bundle's config parsed for CPU, with overrides."""

from __future__ import annotations

from pathlib import Path


def bundle_parser(bundle: Path, config: str = "inference.json", **overrides):
    """``ConfigParser`` of ``bundle/configs/<config>`` with ``bundle_root`` set, the CPU as device, and ``overrides``;
    ``import scripts`` finds this bundle's ``scripts`` package, as under ``monai.bundle run``."""
    from monai.bundle import ConfigParser

    from monai_ext.workflows import use_bundle_scripts

    use_bundle_scripts(bundle)

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / config))
    parser["bundle_root"] = str(bundle)
    parser["device"] = "$torch.device('cpu')"
    for key, value in overrides.items():
        parser[key] = value
    return parser


def bundle_scripts(bundle: Path, module: str):
    """The module ``scripts.<module>`` of ``bundle`` (its own experiment code), imported as its configs import it."""
    from monai_ext.workflows import bundle_module

    return bundle_module(bundle, module)

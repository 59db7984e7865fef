"""Shared by the bundle tests: a bundle's config parsed for CPU, with overrides."""

from __future__ import annotations

from pathlib import Path


def bundle_parser(bundle: Path, config: str = "inference.json", **overrides):
    """``ConfigParser`` of ``bundle/configs/<config>`` with ``bundle_root`` set, the CPU as device, and ``overrides``."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / config))
    parser["bundle_root"] = str(bundle)
    parser["device"] = "$torch.device('cpu')"
    for key, value in overrides.items():
        parser[key] = value
    return parser

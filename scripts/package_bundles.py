#!/usr/bin/env python
"""Package bundles for distribution the way the MONAI Model Zoo does: ``<name>_v<version>.zip`` per bundle.

Before packaging, each bundle is checked, and refused with the reasons when it fails:
- ``configs/metadata.json`` validates against the MONAI metadata schema (offline, from ``--schema``);
- its ``changelog`` has an entry for its ``version``;
- every ``configs/*.json`` / ``*.yaml`` parses with ``monai.bundle.ConfigParser``;
- the required files exist (``configs/inference.json``, ``configs/logging.conf``, ``docs/README.md``, ``LICENSE``).

Network checks (``--check-networks``, Model Zoo CI style), per bundle where they apply:
- ``verify_net_in_out``: when ``inference.json`` defines ``network_def`` and the metadata describes a fixed
  ``image`` input, the network is built and run on a random input of that shape, and its output checked;
- ``ckpt_export``: when ``inference.json`` names the weights to export in ``export_ckpt``, the network is traced
  to TorchScript (``models/model.ts`` in a temporary folder) and the export's output compared with the eager
  network's on the same input;
- ``torch.export``: the same network as an ``ExportedProgram`` (``<bundle>.pt2``), reloaded and compared likewise
  (TorchScript is deprecated in torch 2.13; ``torch.export`` is its successor).

The zip holds the bundle folder (``<name>/configs``, ``docs``, ``models``, ``LICENSE``, ``scripts`` if any) and a
``models/model_info.json`` listing the SHA-256 and size of every file under ``models/`` (written into the
archive only; the working tree is not modified). Archives are written atomically, with ordinary file permissions,
and are byte-reproducible: the same bundle gives the same bytes (sorted entries, fixed time stamps and modes).

Beside the zips, the wheel of ``monai_ext`` (distribution ``monai-recon-ext``, the name and version every bundle's
``required_packages_version`` gives): ``pip install <wheel>`` on another machine, then unzip a bundle and run it.

Usage:
    python scripts/package_bundles.py [--bundles NAME ...] [--out dist] [--schema scripts/schema/meta_schema_20240725.json] [--no-wheel]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SCHEMA = ROOT / "scripts" / "schema" / "meta_schema_20240725.json"  # vendored, see SOURCE.md beside it
REQUIRED = ("configs/metadata.json", "configs/inference.json", "configs/logging.conf", "docs/README.md", "LICENSE")
SKIP_DIRS = {"__pycache__", "outputs", ".ipynb_checkpoints"}


class BundleCheckError(ValueError):
    """A bundle failed a packaging check; the message lists every problem found."""


def config_files_for(config: Path) -> list[str]:
    """The files to parse for ``config``: itself, or, for an override (a ``multi_gpu_*.json`` as in the Model Zoo,
    any config with top-level ids holding ``#``, or one without ``bundle_root``, which every whole config defines),
    the base config it extends (``train.json``, else ``inference.json``) and it."""
    if config.suffix != ".json" or config.name == "metadata.json":
        return [str(config)]
    content = json.loads(config.read_text())
    overrides = isinstance(content, dict) and (any("#" in key for key in content) or "bundle_root" not in content)
    if config.name.startswith("multi_gpu_") or overrides:
        for name in ("train.json", "inference.json"):
            base = config.parent / name
            if base.is_file() and base != config:
                return [str(base), str(config)]
    return [str(config)]


def check_bundle(bundle: Path, schema_path: Path) -> dict:
    """Run the packaging checks; return the metadata or raise ``BundleCheckError`` listing the problems."""
    import jsonschema
    from monai.bundle import ConfigParser

    problems = [f"missing {rel}" for rel in REQUIRED if not (bundle / rel).is_file()]
    meta: dict = {}
    meta_path = bundle / "configs" / "metadata.json"
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as err:
            problems.append(f"configs/metadata.json is not valid JSON: {err}")
    if meta:
        if not schema_path.is_file():
            problems.append(f"schema file not found: {schema_path}")
        else:
            schema = json.loads(schema_path.read_text())
            validator = jsonschema.Draft201909Validator(schema)
            for error in sorted(validator.iter_errors(meta), key=lambda e: list(e.path)):
                where = "/".join(str(p) for p in error.path) or "(top level)"
                problems.append(f"metadata {where}: {error.message}")
        version = meta.get("version")
        if version not in meta.get("changelog", {}):
            problems.append(f"changelog has no entry for version {version!r}")
    for config in sorted((bundle / "configs").glob("*")):
        if config.suffix not in (".json", ".yaml", ".yml"):
            continue
        try:
            parser = ConfigParser()
            parser.read_config(config_files_for(config))
            parser.parse()
        except Exception as err:  # any parse failure is a packaging blocker
            problems.append(f"{config.name} does not parse: {err}")
    if problems:
        raise BundleCheckError(f"bundle {bundle.name} cannot be packaged:\n  - " + "\n  - ".join(problems))
    return meta


def _inference_config(bundle: Path) -> dict:
    return json.loads((bundle / "configs" / "inference.json").read_text())


def verify_network(bundle: Path) -> bool:
    """``monai.bundle verify_net_in_out`` on ``network_def``; False when the bundle has no fixed-shape network."""
    from monai.bundle import verify_net_in_out

    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    if "network_def" not in _inference_config(bundle) or "image" not in meta["network_data_format"].get("inputs", {}):
        return False
    # a network that fits each case (an optimisation per input) names, in "verify_net", the config overrides that make
    # that fit short and the extra forward arguments it takes (e.g. the voxel spacing)
    check = _inference_config(bundle).get("verify_net", {})
    verify_net_in_out(
        net_id="network_def", meta_file=str(bundle / "configs" / "metadata.json"),
        config_file=str(bundle / "configs" / "inference.json"), device="cpu", bundle_root=str(bundle),
        extra_forward_args=check.get("forward_args"), **check.get("overrides", {}),
    )
    return True


def _trained_network(bundle: Path):
    """``(network_def with the export_ckpt weights, in eval mode, on the CPU; a fixed random input of the metadata's
    image shape; the checkpoint path; the key of the state in it)`` for the exports."""
    import torch
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser.read_meta(str(bundle / "configs" / "metadata.json"))
    parser["bundle_root"] = str(bundle)
    parser["device"] = "$torch.device('cpu')"
    image = parser.get("_meta_#network_data_format#inputs#image")
    shape = [1, image["num_channels"], *image["spatial_shape"]]
    ckpt = parser.get_parsed_content("export_ckpt")
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    key = "model" if "model" in state else ""  # ignite's CheckpointSaver stores a lone object's state unwrapped
    net = parser.get_parsed_content("network_def")
    net.load_state_dict(state[key] if key else state)
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(0))
    return net.eval(), x, ckpt, key


def _check_export(bundle: Path, what: str, exported, expected, atol: float) -> None:
    import torch

    if not torch.allclose(exported, expected, atol=atol, rtol=1e-4):
        raise BundleCheckError(f"{bundle.name}: {what} differs from the network by {float((exported - expected).abs().max()):.3g}")


EXPORT_FORMATS = ("torch.export", "torchscript")
"""What a bundle naming ``export_ckpt`` offers unless its ``inference.json`` lists ``export_formats``."""


def export_network(bundle: Path, out_dir: Path, atol: float = 1e-5) -> Path | None:
    """Trace ``network_def`` with the weights ``export_ckpt`` to TorchScript and check it reproduces the eager
    network on a random input of the metadata's shape; returns the ``.ts`` path, None when the bundle offers no
    TorchScript export (no ``export_ckpt``, or ``export_formats`` in ``inference.json`` without ``"torchscript"``)."""
    import torch
    from monai.bundle import ckpt_export

    config = _inference_config(bundle)
    if "export_ckpt" not in config or "torchscript" not in config.get("export_formats", EXPORT_FORMATS):
        return None
    net, x, ckpt, key = _trained_network(bundle)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{bundle.name}.ts"
    ckpt_export(
        net_id="network_def", filepath=str(target), ckpt_file=ckpt, meta_file=str(bundle / "configs" / "metadata.json"),
        config_file=str(bundle / "configs" / "inference.json"), key_in_ckpt=key, use_trace=True, input_shape=list(x.shape),
        bundle_root=str(bundle),
    )
    with torch.no_grad():
        _check_export(bundle, "TorchScript export", torch.jit.load(str(target)).eval()(x), net(x), atol)
    return target


def export_program(bundle: Path, out_dir: Path, atol: float = 1e-5) -> Path | None:
    """``torch.export`` of ``network_def`` with the weights ``export_ckpt`` (the successor of TorchScript, which torch
    2.13 deprecates), saved as ``<bundle>.pt2``; the reloaded program must reproduce the eager network on a random
    input of the metadata's shape. Returns None when the bundle names no ``export_ckpt``.

    Raises:
        BundleCheckError: the exported program differs from the network.
    """
    import torch

    config = _inference_config(bundle)
    if "export_ckpt" not in config or "torch.export" not in config.get("export_formats", EXPORT_FORMATS):
        return None
    net, x, _, _ = _trained_network(bundle)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{bundle.name}.pt2"
    with torch.no_grad():
        torch.export.save(torch.export.export(net, (x,)), str(target))
        _check_export(bundle, "torch.export program", torch.export.load(str(target)).module()(x), net(x), atol)
    return target


def model_info(bundle: Path) -> dict:
    """SHA-256 and size of every file under ``models/``."""
    files = {}
    for path in sorted((bundle / "models").rglob("*")):
        if path.is_file() and path.name != "model_info.json":
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            files[str(path.relative_to(bundle))] = {"sha256": digest, "bytes": path.stat().st_size}
    return {"bundle": bundle.name, "files": files}


_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip can hold: entries carry no build time


def _add_entry(archive: zipfile.ZipFile, name: str, data: bytes) -> None:
    """Add ``data`` as ``name`` with a fixed time stamp and ``rw-r--r--`` permissions, so that the same inputs
    give the same archive bytes on any machine and a file unpacked from it is readable by everyone."""
    info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.create_system = 3  # Unix, so that the permission bits below are read
    info.external_attr = (0o100644 & 0xFFFF) << 16
    archive.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)


def package_bundle(bundle: Path, out_dir: Path, schema_path: Path) -> Path:
    """Check ``bundle`` and write ``out_dir/<name>_v<version>.zip``; returns the archive path.

    The archive is byte-reproducible (entries sorted, fixed time stamps and permissions) and is written atomically
    with the permissions of an ordinary new file (``0o666`` less the umask).
    """
    meta = check_bundle(bundle, schema_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{bundle.name}_v{meta['version']}.zip"
    fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=".zip", dir=out_dir)
    os.close(fd)
    try:
        with zipfile.ZipFile(tmp, "w") as archive:
            for path in sorted(bundle.rglob("*")):
                rel = path.relative_to(bundle)
                if path.is_dir() or SKIP_DIRS.intersection(rel.parts) or rel.as_posix() == "models/model_info.json":
                    continue
                _add_entry(archive, f"{bundle.name}/{rel.as_posix()}", path.read_bytes())
            info = json.dumps(model_info(bundle), indent=2) + "\n"
            _add_entry(archive, f"{bundle.name}/models/model_info.json", info.encode())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def build_wheel(out_dir: Path) -> Path:
    """Build the wheel of ``monai_ext`` (distribution ``monai-recon-ext``, pure Python) into ``out_dir``, offline
    (``pip wheel --no-deps --no-build-isolation``: the build uses the setuptools already installed); returns its path.

    Raises:
        RuntimeError: the build failed (pip's output is in the message).
    """
    import subprocess
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    name = project["name"].replace("-", "_")
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".wheel-") as tmp:
        cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet", "--disable-pip-version-check", "-w", tmp, str(ROOT)]
        result = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp)
        built = sorted(Path(tmp).glob(f"{name}-{project['version']}-*.whl"))
        if result.returncode != 0 or len(built) != 1:
            raise RuntimeError(f"building the {project['name']} wheel failed:\n{(result.stdout + result.stderr)[-3000:]}")
        target = out_dir / built[0].name
        os.replace(built[0], target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundles", nargs="*", help="bundle names (default: every folder under bundles/)")
    parser.add_argument("--out", default=str(ROOT / "dist"), help="output folder for the zips")
    parser.add_argument("--schema", default=str(DEFAULT_SCHEMA), help="MONAI metadata schema file (offline)")
    parser.add_argument("--check-networks", action="store_true", help="also run verify_net_in_out and ckpt_export")
    parser.add_argument("--no-wheel", action="store_true", help="do not build the monai_ext wheel beside the zips")
    args = parser.parse_args(argv)
    names = args.bundles or sorted(p.name for p in (ROOT / "bundles").iterdir() if p.is_dir())
    failed = 0
    for name in names:
        bundle = ROOT / "bundles" / name
        if not bundle.is_dir():
            print(f"{name}: no such bundle under {ROOT / 'bundles'}", file=sys.stderr)
            failed += 1
            continue
        try:
            path = package_bundle(bundle, Path(args.out), Path(args.schema))
            print(f"{name}: packaged -> {path}")
            if args.check_networks:
                verified = verify_network(bundle)
                exported = export_network(bundle, Path(args.out) / "torchscript")
                program = export_program(bundle, Path(args.out) / "torch_export")
                print(f"{name}: verify_net_in_out {'passed' if verified else 'n/a (no network_def taking the metadata image input)'}; "
                      f"ckpt_export {f'-> {exported}' if exported else 'n/a (no export_ckpt)'}; "
                      f"torch.export {f'-> {program}' if program else 'n/a (no export_ckpt)'}")
        except Exception as err:  # a failed check of one bundle must not hide the others'
            print(f"{name}: {type(err).__name__}: {err}", file=sys.stderr)
            failed += 1
    if not args.no_wheel:
        try:
            print(f"monai_ext: wheel -> {build_wheel(Path(args.out))}")
        except RuntimeError as err:
            print(f"monai_ext: {err}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

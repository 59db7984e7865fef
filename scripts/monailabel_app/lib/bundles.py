"""Discovery of the MONAI bundles the app serves, and their inference run in-process with ``monai.bundle``.

A bundle is a folder with ``configs/inference.json`` and ``configs/metadata.json`` whose inference config takes
its input from ``dataset_dir`` (a folder of input files, each a case) or ``input_path`` (one file or folder), and
``output_dir``, and writes ``summary.json`` there, with ``cases[i]["file"]`` the output NIfTI of case ``i``
(``monai_ext.workflows.ReconstructionSummary`` and the like).
"""

from __future__ import annotations

import gc
import json
import logging
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from monai_ext.workflows import use_bundle_scripts

logger = logging.getLogger(__name__)

# config ids the app sets itself: a client must not point a bundle at other folders or replace its root
RESERVED_IDS = frozenset({"bundle_root", "dataset_dir", "input_path", "output_dir", "device", "imports"})
# the config ids a bundle may take its input from, in order of preference: a folder of cases, or one file/folder
INPUT_IDS = ("dataset_dir", "input_path")
# bundles share process-wide state (seeds set by `initialize`, numba/torch thread pools): one run at a time
_RUN_LOCK = threading.Lock()


@dataclass(frozen=True)
class BundleInfo:
    """A servable bundle.

    Args:
        name: folder name (the MONAI Label model name).
        root: bundle folder.
        version: ``version`` from ``configs/metadata.json``.
        description: the metadata's ``task`` (or ``name``), shown by MONAI Label clients.
        dimension: number of spatial axes of the output (from the metadata's ``network_data_format.outputs``).
        input_id: the config id the input goes to (one of ``INPUT_IDS``).
        options: the inference config's top-level scalar settings a request may override, with their defaults.
    """

    name: str
    root: Path
    version: str
    description: str
    dimension: int
    input_id: str
    options: dict[str, Any]

    @property
    def inference_config(self) -> Path:
        return self.root / "configs" / "inference.json"


def _is_literal(value: Any) -> bool:
    """A JSON scalar that the config parser keeps as is (strings starting with ``$``, ``@`` or ``%`` are code or
    references)."""
    if isinstance(value, str):
        return not value.startswith(("$", "@", "%"))
    return isinstance(value, (bool, int, float))


def overridable_options(config: dict) -> dict[str, Any]:
    """Top-level ids of an inference config a client may set: literal scalars other than paths and app-set ids.

    Ids ending in ``_dir``, ``_file`` or ``_path`` are left out: a remote client must not choose where a bundle
    reads or writes.
    """
    return {
        key: value
        for key, value in config.items()
        if key not in RESERVED_IDS and not key.endswith(("_dir", "_file", "_path")) and _is_literal(value)
    }


def load_bundle(root: Path) -> BundleInfo:
    """Read a bundle's metadata and inference config.

    A bundle whose input a MONAI Label datastore cannot hold says so in its metadata,
    ``"monailabel": {"served": false, "why": "..."}``, and is not served.

    Raises:
        FileNotFoundError: ``configs/inference.json`` or ``configs/metadata.json`` is missing.
        ValueError: either file is not valid JSON, the inference config has none of ``INPUT_IDS``, or the metadata
            says the bundle is not served (with why).
    """
    root = Path(root).resolve()
    files = {name: root / "configs" / f"{name}.json" for name in ("inference", "metadata")}
    content = {}
    for name, path in files.items():
        if not path.is_file():
            raise FileNotFoundError(f"bundle {root.name} has no {path.relative_to(root)}.")
        try:
            content[name] = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"bundle {root.name}: {path.relative_to(root)} is not valid JSON ({err}).") from err
    meta = content["metadata"]
    serving = meta.get("monailabel", {})
    if isinstance(serving, dict) and serving.get("served") is False:
        raise ValueError(f"bundle {root.name} is not served by MONAI Label: {serving.get('why', 'its metadata says so')}")
    input_ids = [key for key in INPUT_IDS if key in content["inference"]]
    if not input_ids:
        raise ValueError(f"bundle {root.name}: configs/inference.json takes no input (none of {INPUT_IDS}).")
    outputs = meta.get("network_data_format", {}).get("outputs", {})
    shapes = [len(o.get("spatial_shape", [])) for o in outputs.values() if o.get("spatial_shape")]
    return BundleInfo(
        name=root.name,
        root=root,
        version=str(meta.get("version", "")),
        description=str(meta.get("task") or meta.get("name") or root.name),
        dimension=shapes[0] if shapes else 3,
        input_id=input_ids[0],
        options=overridable_options(content["inference"]),
    )


def discover_bundles(bundles_dir: Path, names: list[str] | None = None) -> list[BundleInfo]:
    """The bundles under ``bundles_dir`` (each sub-folder with ``configs/inference.json``), sorted by name.

    Without ``names``, a folder whose configs cannot be read (a bundle still being written) is skipped with a
    warning, so that one broken bundle does not take the others off the server.

    Args:
        bundles_dir: folder holding one sub-folder per bundle.
        names: serve only these bundles (default: all found); each must load.

    Raises:
        FileNotFoundError: ``bundles_dir`` does not exist, or a requested bundle is not in it or lacks a config.
        ValueError: no servable bundle, or a requested bundle's config is not valid JSON.
    """
    bundles_dir = Path(bundles_dir)
    if not bundles_dir.is_dir():
        raise FileNotFoundError(f"bundles folder not found: {bundles_dir}")
    found = {p.name: p for p in sorted(bundles_dir.iterdir()) if (p / "configs" / "inference.json").is_file()}
    if names:
        missing = sorted(set(names) - set(found))
        if missing:
            raise FileNotFoundError(f"bundles {missing} not found in {bundles_dir} (found: {sorted(found)}).")
        return [load_bundle(found[n]) for n in sorted(names)]
    bundles = []
    for path in found.values():
        try:
            bundles.append(load_bundle(path))
        except (FileNotFoundError, ValueError) as err:
            logger.warning(f"skipping bundle {path.name}: {err}")
    if not bundles:
        raise ValueError(f"no servable bundle (a folder with configs/inference.json and metadata.json) in {bundles_dir}.")
    return bundles


def run_inference(bundle: BundleInfo, input_dir: Path, output_dir: Path, overrides: dict[str, Any]) -> dict:
    """Run a bundle's ``configs/inference.json`` in this process, as ``monai.bundle run`` does, and return its
    ``summary.json``.

    The bundle's ``logging.conf`` is not applied (it would reconfigure the server's logging); ``sys.path`` is
    restored afterwards (``ConfigWorkflow.run`` prepends the bundle root), and ``import scripts`` finds this bundle's
    ``scripts`` package (``monai_ext.workflows.use_bundle_scripts``).

    Args:
        bundle: the bundle to run.
        input_dir: a folder holding the input (one file or folder): given as ``dataset_dir``, or its single entry as
            ``input_path``, as the bundle takes it.
        output_dir: where the bundle writes its outputs and ``summary.json``.
        overrides: further config overrides (id -> value).

    Raises:
        RuntimeError: the run finished without writing ``summary.json``.
    """
    from monai.bundle import ConfigWorkflow

    if bundle.input_id == "dataset_dir":
        source = Path(input_dir)
    else:
        entries = sorted(Path(input_dir).iterdir())
        if len(entries) != 1:
            raise ValueError(f"bundle {bundle.name} takes one input (input_path); {input_dir} holds {len(entries)}.")
        source = entries[0]
    settings = {**overrides, "bundle_root": str(bundle.root), bundle.input_id: str(source), "output_dir": str(output_dir)}
    saved_path = list(sys.path)
    with _RUN_LOCK:
        try:
            use_bundle_scripts(bundle.root)  # this bundle's scripts package, not the one of the bundle served before
            workflow = ConfigWorkflow(config_file=str(bundle.inference_config), logging_file=False, **settings)
            workflow.initialize()
            workflow.run()
            workflow.finalize()
        finally:
            sys.path[:] = saved_path
            workflow = None
            gc.collect()
            _empty_cuda_cache()
    summary = Path(output_dir) / "summary.json"
    if not summary.is_file():
        raise RuntimeError(f"bundle {bundle.name} finished without writing {summary}.")
    return json.loads(summary.read_text())


def _empty_cuda_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()

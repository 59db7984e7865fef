"""MONAI Label app serving every bundle under ``bundles/`` as an image-to-image infer task (type "others").

Start it from the MONAI Label environment (``scripts/setup_monailabel_env.sh``)::

    .venv-monailabel/bin/monailabel start_server --app scripts/monailabel_app --studies <folder of images>

Each bundle is a model named after its folder: ``POST /infer/<bundle>?image=<image id>`` runs the bundle's
``configs/inference.json`` on that image and returns the output NIfTI and a result JSON
(``lib/infers/bundle_reconstruction.py``).

App options (``--conf <key> <value>``):
    bundles_dir: folder of bundles (default: ``bundles/`` of this repository).
    bundles: comma-separated names of the bundles to serve (default: all).
"""

from __future__ import annotations

import logging
from pathlib import Path

from lib.bundles import discover_bundles
from lib.infers import BundleReconstructionTask
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.tasks.infer_v2 import InferTask

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]


class ReconstructionBundlesApp(MONAILabelApp):
    """The repository's reconstruction bundles behind a MONAI Label server (inference only).

    Args:
        app_dir: this folder.
        studies: the datastore (a local folder of images, or a DICOMweb URL).
        conf: app options (see the module docstring).

    Raises:
        FileNotFoundError: ``bundles_dir`` or a requested bundle does not exist.
        ValueError: no bundle found.
    """

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]):
        conf = conf or {}
        names = [n.strip() for n in conf.get("bundles", "").split(",") if n.strip()]
        self.bundles = discover_bundles(Path(conf.get("bundles_dir", REPO_ROOT / "bundles")), names or None)
        logger.info(f"serving bundles: {[f'{b.name} v{b.version}' for b in self.bundles]}")
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="monai-recon-bundles",
            description="Physics-informed learned reconstruction bundles, served as image-to-image infer tasks",
            version="0.1.0",
        )

    def init_infers(self) -> dict[str, InferTask]:
        return {bundle.name: BundleReconstructionTask(bundle) for bundle in self.bundles}

"""A MONAI Label infer task that runs one reconstruction bundle's inference on the requested image.

Image in, image out (infer type "others"): the bundle's output NIfTI is returned as the bundle wrote it, on the
bundle's own grid (a reconstruction, a 2x supersampled deblurred volume, ...), with no label post-processing and
no resampling to the input's grid. Written on ``InferTask`` (not ``BundleInferTask``, which imports torchvision,
nor ``BasicInferTask``, whose pre-transforms/network/writer pipeline a bundle replaces as a whole).
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from lib.bundles import BundleInfo, run_inference
from monai_ext.io import projection_sidecar
from monai_ext.workflows import root_cause
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType
from monailabel.utils.others.generic import device_list, name_to_device

logger = logging.getLogger(__name__)

_DEVICE = re.compile(r"^(cpu|cuda(:\d+)?)$")
_TRUE, _FALSE = {"true", "1", "yes"}, {"false", "0", "no"}


def coerce_option(name: str, value: Any, default: Any) -> Any:
    """``value`` as the type of the config's ``default`` (clients may send numbers and booleans as strings).

    Raises:
        ValueError: a value that does not convert, or a string that the config parser would evaluate
            (``$``, ``@``, ``%``).
    """
    if isinstance(default, bool):
        text = str(value).strip().lower()
        if isinstance(value, bool) or text in _TRUE | _FALSE:
            return value if isinstance(value, bool) else text in _TRUE
        raise ValueError(f"option {name!r} must be a boolean, got {value!r}.")
    if isinstance(default, (int, float)):
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"option {name!r} must be a number, got {value!r}.") from None
        if isinstance(default, int):
            if number != int(number):
                raise ValueError(f"option {name!r} must be an integer, got {value!r}.")
            return int(number)
        return number
    text = str(value)
    if text.startswith(("$", "@", "%")):
        raise ValueError(f"option {name!r} must be a plain string, got the expression {text!r}.")
    return text


class BundleReconstructionTask(InferTask):
    """Serve a bundle's ``configs/inference.json`` as a MONAI Label model.

    A request's image (a file, or a folder such as an exam or a DICOM series) is copied into a fresh folder, given
    to the bundle as its ``dataset_dir`` (or the copy itself as its ``input_path``), the bundle runs in-process
    (``monai.bundle.ConfigWorkflow``) with a fresh ``output_dir``, and the output NIfTI of its single case is returned with a result JSON (bundle, version,
    method, the case's entry of ``summary.json``, the options used, the output's shape and spacing).

    Request keys (besides MONAI Label's own): ``device`` (``cpu``, ``cuda`` or ``cuda:<i>``), and any of the
    bundle's overridable options (``BundleInfo.options``: top-level scalar settings of the inference config,
    e.g. ``method`` or ``n_views``), listed with their defaults in the task's ``config``.

    Args:
        bundle: the bundle to serve.
    """

    def __init__(self, bundle: BundleInfo):
        super().__init__(
            type=InferType.OTHERS,
            labels=None,
            dimension=bundle.dimension,
            description=f"{bundle.description} (bundle {bundle.name} v{bundle.version})",
            config={"device": device_list(), **bundle.options},
        )
        self.bundle = bundle

    def is_valid(self) -> bool:
        return self.bundle.inference_config.is_file()

    @staticmethod
    def device(request: dict) -> str:
        """The torch device a request asks for (MONAI Label's device names map to ``cpu``/``cuda[:i]``).

        Raises:
            ValueError: a device that is not ``cpu``, ``cuda`` or ``cuda:<index>``.
        """
        device = name_to_device(request.get("device"))
        if not _DEVICE.match(device):
            raise ValueError(f"device must be cpu, cuda or cuda:<index>, got {request.get('device')!r}.")
        return device

    def overrides(self, request: dict) -> dict[str, Any]:
        """The request's values of the bundle's options that differ from the config's, as config overrides.

        Raises:
            ValueError: an option value of the wrong type.
        """
        return {
            name: coerce_option(name, request[name], default)
            for name, default in self.bundle.options.items()
            if name in request and request[name] != default
        }

    def __call__(self, request: dict) -> tuple[str, dict]:
        """Run the bundle on ``request["image"]`` (a path); returns the output NIfTI's path and the result JSON.

        Raises:
            FileNotFoundError: the image path does not exist.
            ValueError: a bad option (see :meth:`overrides`).
            RuntimeError: the bundle failed, or did not produce exactly one output NIfTI.
        """
        start = time.perf_counter()
        image = Path(str(request.get("image", "")))
        if not image.exists():
            raise FileNotFoundError(f"{self.bundle.name}: input image not found: {image}")
        device, overrides = self.device(request), self.overrides(request)
        with tempfile.TemporaryDirectory(prefix=f"{self.bundle.name}_") as work:
            input_dir, output_dir = Path(work) / "input", Path(work) / "output"
            input_dir.mkdir()
            if image.is_dir():
                shutil.copytree(image, input_dir / image.name)
            else:
                shutil.copy2(image, input_dir / image.name)
                sidecar = projection_sidecar(image)
                if sidecar is not None:  # a projections study: its geometry sidecar travels with it
                    shutil.copy2(sidecar, input_dir / sidecar.name)
            logger.info(f"{self.bundle.name}: running inference on {image} ({device}, overrides {overrides})")
            try:
                summary = run_inference(
                    self.bundle, input_dir, output_dir, {**overrides, "device": f"$torch.device('{device}')"}
                )
            except Exception as err:
                cause = root_cause(err)
                raise RuntimeError(f"bundle {self.bundle.name} failed on {image.name}: {type(cause).__name__}: {cause}") from err
            cases = summary.get("cases", [])
            if len(cases) != 1 or "file" not in cases[0]:
                raise RuntimeError(f"bundle {self.bundle.name} gave {len(cases)} output case(s) for {image.name}; "
                                   "expected one with a 'file'.")
            produced = Path(cases[0]["file"])
            produced = produced if produced.is_absolute() else output_dir / produced.name
            # the server deletes the returned file once sent: hand it a copy outside the work folder
            suffix = ".nii.gz" if produced.name.endswith(".nii.gz") else produced.suffix
            with tempfile.NamedTemporaryFile(prefix=f"{self.bundle.name}_", suffix=suffix, delete=False) as out:
                result_file = out.name
            shutil.copyfile(produced, result_file)
        result = {
            "bundle": self.bundle.name,
            "version": self.bundle.version,
            "method": summary.get("method"),
            # files other than the returned one are deleted with the work folder
            "case": {k: v for k, v in cases[0].items() if not k.endswith("file")},
            "overrides": overrides,
            "device": device,
            **_geometry(result_file),
            "seconds": round(time.perf_counter() - start, 2),
        }
        logger.info(f"{self.bundle.name}: {result}")
        return result_file, result


def _geometry(path: str) -> dict:
    """Shape (NIfTI axis order) and voxel size of a NIfTI file, for the result JSON."""
    import nibabel as nib

    header = nib.load(path).header
    shape = [int(s) for s in header.get_data_shape()]
    return {"shape": shape, "spacing": [float(z) for z in header.get_zooms()[: len(shape)]]}

"""``cbct_neural_field`` inference on the user's files: projections with a geometry sidecar, or a volume to simulate.

The fits are cut to a few steps (what is tested is the data path and the outputs, not the fit's quality, which
``tests/test_neural_fields.py`` and ``tests/test_bundles.py`` cover).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bundle_config import bundle_parser
from monai_ext.data.cbct_datasets import cbct_geometry, cbct_scans
from monai_ext.io import load_nifti, save_nifti, save_projections

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "cbct_neural_field"
# a coarser grid over the bundle's 256 mm box (the backbone is a continuous field: any grid over the box works)
SMALL = {"volume_shape": [16, 16, 16], "voxel_size": 16.0, "det_shape": [16, 16], "n_views": 10}
QUICK_FIT = {
    "per_scan": {"n_steps": 5, "rays_per_step": 256, "n_samples": 16, "lr": 0.01},
    "conditioned": {"n_steps": 5, "rays_per_step": 256, "n_samples": 16, "lr": 0.1},
}


def _run(tmp_path: Path, data: Path, method: str) -> dict:
    out = tmp_path / f"out_{method}"
    parser = bundle_parser(BUNDLE, dataset_dir=str(data), output_dir=str(out), method=method, fit=QUICK_FIT, **SMALL, progress=False, num_threads=1)
    parser.get_parsed_content("run")
    return json.loads((out / "summary.json").read_text())


@pytest.fixture(scope="module")
def scan():
    geometry = cbct_geometry(SMALL["n_views"], SMALL["volume_shape"], SMALL["voxel_size"], SMALL["det_shape"])
    return geometry, cbct_scans("test", 1, geometry, 1e5)


def test_inference_reads_projections_with_sidecar_and_volumes(scan, tmp_path):
    geometry, scans = scan
    data = tmp_path / "data"
    save_projections(scans.projections[0, 0], geometry, data / "measured.npz")
    save_nifti(scans.volumes[0, 0].numpy(), data / "phantom.nii.gz", spacing=geometry.pixel_size)
    summary = _run(tmp_path, data, "conditioned")
    cases = {case["name"]: case for case in summary["cases"]}
    assert set(cases) == {"measured", "phantom"}
    for case in cases.values():
        volume, affine = load_nifti(case["file"])
        assert volume.shape == (16, 16, 16)
        assert abs(abs(affine[0, 0]) - 16.0) < 1e-6
        assert Path(case["file"].replace(".nii.gz", ".png")).is_file()
    # the volume had a reference to score against; measured projections have none
    assert "psnr_db" in cases["phantom"] and "psnr_db" not in cases["measured"]


def test_own_data_projections_of_another_geometry_per_scan_fits_them_conditioned_refuses(scan, tmp_path):
    """Projections acquired with 20 views (the config has another count): the per-scan field fits them at their
    sidecar's geometry; the conditioned field, whose backbone is tied to the bundle's scan, refuses them naming both."""
    geometry, scans = scan
    other = cbct_geometry(20, geometry.image_shape, geometry.pixel_size[0], geometry.det_shape)
    data = tmp_path / "other"
    save_projections(scans.projections[0, 0].repeat(2, 1, 1)[:20], other, data / "scan.npz")
    summary = _run(tmp_path, data, "per_scan")
    (case,) = summary["cases"]
    assert case["reconstructed_from"] == "measured projections" and case["shape"] == list(geometry.image_shape)
    with pytest.raises(Exception) as err:
        _run(tmp_path, data, "conditioned")
    from monai_ext.workflows import root_cause

    cause = root_cause(err.value)
    assert isinstance(cause, ValueError) and "geometry different" in str(cause) and "20 views" in str(cause), repr(cause)



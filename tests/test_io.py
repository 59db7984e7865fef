"""File input/output: atomic writes, round trips, clear errors for corrupt or incomplete files."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from monai_ext.io import (
    atomic_path,
    geometry_from_dict,
    geometry_to_dict,
    load_nifti,
    load_projections,
    save_nifti,
    save_projections,
    tomography_cases,
)
from monai_ext.tomo import ConeBeamGeometry, ParallelBeamGeometry, uniform_angles


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    target = tmp_path / "result.txt"
    target.write_text("precious")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half-writ")
            raise RuntimeError("interrupted")
    assert target.read_text() == "precious"
    assert [p.name for p in tmp_path.iterdir()] == ["result.txt"]


def test_atomic_write_gives_plain_file_permissions(tmp_path):
    import os
    import stat

    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    with atomic_path(tmp_path / "atomic.txt") as tmp:
        tmp.write_text("x")
    mode = stat.S_IMODE(os.stat(tmp_path / "atomic.txt").st_mode)
    assert mode == stat.S_IMODE(os.stat(plain).st_mode), oct(mode)  # not mkstemp's 0600


def test_nifti_round_trip_keeps_axis_order_and_spacing(tmp_path):
    vol = np.random.default_rng(0).random((5, 6, 7)).astype(np.float32)
    path = save_nifti(vol, tmp_path / "v.nii.gz", spacing=(3.0, 2.0, 1.0))
    back, affine = load_nifti(path)
    assert np.array_equal(back, vol)
    assert np.allclose(np.diag(affine)[:3], [1.0, 2.0, 3.0])  # NIfTI (x, y, z)
    series = np.random.default_rng(1).random((4, 8, 9)).astype(np.float32)  # (t, y, x)
    path_t = save_nifti(series, tmp_path / "t.nii.gz", spacing=2.0, time_step=60.0)
    back_t, _ = load_nifti(path_t)
    assert np.array_equal(back_t, series)
    import nibabel as nib

    header = nib.load(str(path_t)).header
    assert header.get_data_shape() == (9, 8, 1, 4) and header.get_zooms()[3] == 60.0


def test_corrupt_nifti_is_named(tmp_path):
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"\x1f\x8b\x08\x00garbage")
    with pytest.raises(ValueError, match="broken.nii.gz"):
        load_nifti(bad)
    with pytest.raises(ValueError, match="non-finite"):
        save_nifti(np.array([[np.nan, 1.0]]), tmp_path / "nan.nii.gz")


@pytest.mark.parametrize("suffix", [".npz", ".nii.gz"])
def test_projection_files_round_trip(tmp_path, suffix):
    geometry = ConeBeamGeometry((8, 8, 8), 2.0, uniform_angles(5, 2 * math.pi), (4, 6), 3.0, source_to_center=100, source_to_detector=150)
    proj = torch.rand(5, 4, 6)
    path = save_projections(proj, geometry, tmp_path / f"scan{suffix}", extra={"i0": 1e5})
    back, geom_back, meta = load_projections(path)
    assert torch.allclose(back, proj) and geom_back == geometry and meta["i0"] == 1e5


def test_projection_file_errors_name_the_problem(tmp_path):
    geometry = ParallelBeamGeometry((8, 8), 1.0, uniform_angles(4), n_det=11)
    path = save_projections(torch.rand(4, 11), geometry, tmp_path / "s.npz")
    sidecar = tmp_path / "s.json"
    spec = json.loads(sidecar.read_text())
    del spec["geometry"]["n_det"]
    sidecar.write_text(json.dumps(spec))
    with pytest.raises(ValueError, match="lacks field.*n_det"):
        load_projections(path)
    sidecar.unlink()
    with pytest.raises(FileNotFoundError, match="sidecar"):
        load_projections(path)
    save_projections(torch.rand(4, 11), geometry, path)
    spec = json.loads(sidecar.read_text())
    spec["geometry"]["n_det"] = 13
    sidecar.write_text(json.dumps(spec))
    with pytest.raises(ValueError, match=r"expects \(4, 13\)"):
        load_projections(path)
    with pytest.raises(ValueError, match="unknown geometry type"):
        geometry_from_dict({"type": "HelicalGeometry"})


def test_geometry_dict_round_trip():
    geometry = ParallelBeamGeometry((16, 12), (1.0, 0.5), uniform_angles(7), n_det=21, det_spacing=0.7, det_offset=0.2)
    assert geometry_from_dict(json.loads(json.dumps(geometry_to_dict(geometry)))) == geometry


def test_tomography_cases(tmp_path):
    geometry = ParallelBeamGeometry((16, 16), 1.0, uniform_angles(6), n_det=23)
    example = tomography_cases("", geometry)
    assert example[0]["name"] == "shepp_logan_example" and example[0]["image"].shape == (1, 16, 16)
    save_nifti(np.zeros((16, 16), np.float32), tmp_path / "img.nii.gz")
    save_projections(torch.rand(6, 23), geometry, tmp_path / "meas.npz")
    cases = tomography_cases(str(tmp_path), geometry)
    assert sorted(c["name"] for c in cases) == ["img", "meas"]
    other = ParallelBeamGeometry((16, 16), 1.0, uniform_angles(6), n_det=25)
    save_projections(torch.rand(6, 25), other, tmp_path / "meas.npz")
    with pytest.raises(ValueError, match="different from the bundle"):
        tomography_cases(str(tmp_path), geometry)
    with pytest.raises(FileNotFoundError):
        tomography_cases(str(tmp_path / "missing"), geometry)


def test_prepare_output_dir_creates_probes_and_names_a_bad_path(tmp_path):
    from monai_ext.io import prepare_output_dir

    folder = prepare_output_dir(tmp_path / "a" / "b")
    assert folder.is_dir() and not any(folder.iterdir())  # the probe file is gone
    blocker = tmp_path / "file"
    blocker.write_text("keep")
    with pytest.raises(ValueError, match=f"output_dir {blocker} is a file"):
        prepare_output_dir(blocker)
    with pytest.raises(ValueError, match="cannot be written"):
        prepare_output_dir(blocker / "below")  # a folder below a file cannot be created
    assert blocker.read_text() == "keep"


def test_own_data_inputs_with_one_name_are_refused(tmp_path):
    """``scan.nii.gz`` and ``scan.npz`` would both write ``scan_<method>.nii.gz``: refused before anything runs."""
    from monai_ext.io import save_nifti, save_projections, tomography_cases
    from monai_ext.tomo import ParallelBeamGeometry, uniform_angles

    geometry = ParallelBeamGeometry((8, 8), 4.0, uniform_angles(5), n_det=8, det_spacing=4.0)
    save_nifti(np.zeros((8, 8), np.float32), tmp_path / "scan.nii.gz", affine=np.diag([4.0, 4.0, 1.0, 1.0]))
    save_projections(torch.zeros(5, 8), geometry, tmp_path / "scan.npz")
    with pytest.raises(ValueError, match="scan.nii.gz and scan.npz"):
        tomography_cases(str(tmp_path), geometry)
    (tmp_path / "scan.npz").rename(tmp_path / "other.npz")
    (tmp_path / "scan.json").rename(tmp_path / "other.json")
    assert sorted(c["name"] for c in tomography_cases(str(tmp_path), geometry)) == ["other", "scan"]


def test_own_data_bad_files_get_errors_that_name_them(tmp_path):
    """A truncated .npz, numbers given as strings in a sidecar and a dataset_dir that is a file: each a ValueError
    naming the file or the field, not a raw BadZipFile/TypeError or a wrong "does not exist"."""
    import json

    from monai_ext.io import load_projections, save_projections, tomography_cases
    from monai_ext.tomo import ParallelBeamGeometry, uniform_angles

    geometry = ParallelBeamGeometry((8, 8), 4.0, uniform_angles(5), n_det=8, det_spacing=4.0)
    path = save_projections(torch.zeros(5, 8), geometry, tmp_path / "scan.npz")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cannot read projection file .*scan.npz \(truncated"):
        load_projections(path)
    path.write_bytes(data)
    sidecar = tmp_path / "scan.json"
    meta = json.loads(sidecar.read_text())
    meta["geometry"]["det_spacing"] = "4.0"
    sidecar.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="geometry field 'det_spacing' of ParallelBeamGeometry must hold numbers, got '4.0'"):
        load_projections(path)
    with pytest.raises(ValueError, match=f"dataset_dir {path} is a file"):
        tomography_cases(str(path), geometry)

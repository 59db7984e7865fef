"""Old names keep working for one release, each with a DeprecationWarning that names the new one."""

from __future__ import annotations

import importlib
import sys

import pytest
import torch

from monai_ext.deprecation import renamed_keyword
from monai_ext.dynamic_pet.regularised_mm import spatial_differences
from monai_ext.tomo import FBP, ParallelBeamGeometry, ParallelBeamProjector, joseph_matrix, projector_for, uniform_angles

GEOMETRY = ParallelBeamGeometry((8, 8), 1.0, uniform_angles(4), n_det=11)


@pytest.mark.parametrize("make", [ParallelBeamProjector, projector_for, FBP, joseph_matrix])
def test_geom_keyword_still_works(make):
    with pytest.warns(DeprecationWarning, match="'geom' is now 'geometry'"):
        old = make(geom=GEOMETRY)
    new = make(geometry=GEOMETRY)
    if isinstance(new, torch.Tensor):
        torch.testing.assert_close(old.to_dense(), new.to_dense())
    else:
        assert old.geometry == new.geometry == GEOMETRY


def test_both_names_at_once_is_an_error():
    with pytest.raises(TypeError, match="both 'geometry' and its old name 'geom'"):
        ParallelBeamProjector(geometry=GEOMETRY, geom=GEOMETRY)


def test_renamed_keyword_passes_other_calls_through():
    @renamed_keyword("old", "new")
    def f(new, other=1):
        return new, other

    assert f(2, other=3) == (2, 3)


@pytest.mark.parametrize(
    "old, new",
    [
        ("monai_ext.pet.dose_adaptive_reconstruction", "monai_ext.dynamic_pet.dose_adaptive_reconstruction"),
        ("monai_ext.pet.blind_deconvolution", "monai_ext.deconvolution.blind_deconvolution"),
        ("monai_ext.pet.recon", "monai_ext.pet.expectation_maximisation"),
    ],
)
def test_moved_modules_import_under_their_old_names(old, new):
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=f"{old} moved to {new}"):
        module = importlib.import_module(old)
    assert module is importlib.import_module(new)


def test_moved_names_import_from_their_old_package():
    import monai_ext.pet as pet
    from monai_ext.dynamic_pet import DoseModel

    with pytest.warns(DeprecationWarning, match="monai_ext.dynamic_pet.DoseModel"):
        assert pet.DoseModel is DoseModel


def test_spatial_differences_take_any_leading_axes():
    x = torch.rand(2, 3, 4, 5, 6, dtype=torch.float64)
    dh, dv = spatial_differences(x)
    assert dh.shape == dv.shape == x.shape
    torch.testing.assert_close(dh[..., :-1], x[..., 1:] - x[..., :-1])
    torch.testing.assert_close(dv[..., :-1, :], x[..., 1:, :] - x[..., :-1, :])
    assert float(dh[..., -1].abs().max()) == 0.0 and float(dv[..., -1, :].abs().max()) == 0.0

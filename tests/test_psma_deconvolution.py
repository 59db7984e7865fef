"""Neural blind deconvolution of PET (issue 9): forward model, geometry, SUV, DICOM checks, kernels, metrics, a fit."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from monai_ext.io import load_nifti
from monai_ext.io.pet_dicom import read_pet_series
from monai_ext.metrics.deconvolution import kernel_similarity, recovery_coefficients
from monai_ext.networks.blind_deconvolution import ImageGenerator, KernelGenerator
from monai_ext.deconvolution.blind_deconvolution import (
    BlindDeconvolutionConfig,
    BlurDownsample,
    blur_and_downsample,
    crop_affine,
    interpolate_2x,
    neural_blind_deconvolution,
    supersampled_affine,
)
from monai_ext.pet.suv import hume_lean_body_mass, suv_factors
from monai_ext.phantoms.spheres import gaussian_kernel, sphere_phantom
from bundle_config import bundle_scripts

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "psma_pet_neural_blind_deconvolution"
deconvolution = bundle_scripts(BUNDLE, "deconvolution")
evaluation = bundle_scripts(BUNDLE, "evaluation")
deblur_cases, pet_cases = deconvolution.deblur_cases, deconvolution.pet_cases


# ---------------------------------------------------------------- forward model and geometry
def test_blur_downsample_is_valid_convolution_then_block_mean():
    torch.manual_seed(0)
    op = BlurDownsample((5, 3, 5))
    x = torch.rand(1, 1, 2 * 3 + 4, 2 * 4 + 2, 2 * 5 + 4, dtype=torch.float64)
    k = torch.rand(1, 1, 5, 3, 5, dtype=torch.float64)
    direct = F.avg_pool3d(F.conv3d(x, torch.flip(k, dims=(2, 3, 4))), 2)  # conv3d correlates: flip for a convolution
    assert op(x, k).shape == (1, 1, 3, 4, 5)
    torch.testing.assert_close(op(x, k), direct, rtol=1e-10, atol=1e-10)


def test_blur_downsample_rejects_wrong_shapes():
    with pytest.raises(ValueError, match="odd"):
        BlurDownsample(4)
    with pytest.raises(ValueError, match="2 N \\+ K - 1"):
        BlurDownsample(5)(torch.rand(1, 1, 9, 12, 12), torch.rand(1, 1, 5, 5, 5))


def test_supersampled_affine_halves_spacing_and_shifts_origin_by_a_quarter_voxel():
    affine = np.array([[-2.73, 0, 0, 100.0], [0, -2.73, 0, 50.0], [0, 0, 2.8, -30.0], [0, 0, 0, 1]])
    fine = supersampled_affine(affine)
    np.testing.assert_allclose(np.linalg.norm(fine[:3, :3], axis=0), [1.365, 1.365, 1.4])
    # fine voxels 0 and 1 are the two halves of coarse voxel 0: their mean centre is the coarse centre
    centre = (fine @ [0, 0, 0, 1] + fine @ [1, 1, 1, 1]) / 2
    np.testing.assert_allclose(centre, affine @ [0, 0, 0, 1])
    np.testing.assert_allclose(fine @ [0, 0, 0, 1], affine @ [-0.25, -0.25, -0.25, 1])
    np.testing.assert_allclose(crop_affine(affine, (1, 2, 3)) @ [0, 0, 0, 1], affine @ [3, 2, 1, 1])


def test_interpolation_grid_matches_the_supersampled_affine():
    ramp = np.broadcast_to(np.arange(6.0)[None, None, :], (4, 5, 6))  # value = x index
    linear = interpolate_2x(ramp, 1)
    np.testing.assert_allclose(linear[1, 1, 1:-1], np.arange(1, 11) / 2 - 0.25, atol=1e-6)  # fine j -> coarse j/2 - 1/4
    np.testing.assert_array_equal(interpolate_2x(ramp, 0)[0, 0], np.repeat(np.arange(6.0), 2))
    # the phantom's 2x reference averages back to its block means (same grid convention)
    phantom = sphere_phantom(shape=(8, 28, 28), ring_radius=22.0, cylinder_radius=34.0, diameters=(10.0, 8.0))
    assert phantom.reference_2x.shape == (16, 56, 56) and phantom.sphere_masks_2x.shape == (2, 16, 56, 56)
    rc = recovery_coefficients(phantom.reference_2x, phantom.sphere_masks_2x, phantom.sphere_activity)
    assert min(rc) > 0.9  # partial volume only at the rims


# ---------------------------------------------------------------- networks and kernels
def test_kernel_generator_is_a_non_negative_kernel_summing_to_one():
    gk = KernelGenerator((5, 7, 3), input_size=20, hidden=50)
    k = gk(torch.randn(20)).detach()
    assert k.shape == (1, 1, 5, 7, 3)
    assert float(k.min()) >= 0 and abs(float(k.sum()) - 1) < 1e-6
    with pytest.raises(ValueError):
        KernelGenerator(4)


def test_image_generator_doubles_odd_sizes():
    gx = ImageGenerator(2, (4, 8), 2, 4, output_scale=2.0)
    with torch.no_grad():
        out = gx(torch.rand(1, 2, 7, 9, 11))
    assert out.shape == (1, 1, 14, 18, 22) and float(out.min()) > 0 and float(out.max()) < 2


def test_kernel_similarity():
    g = gaussian_kernel((3.0, 2.0, 2.0), 9)
    assert kernel_similarity(g, g) == pytest.approx(1.0)
    assert kernel_similarity(g, gaussian_kernel((3.0, 2.0, 2.0), 11)) == pytest.approx(1.0, abs=1e-3)
    shifted = np.roll(g, 2, axis=2)
    assert kernel_similarity(g, shifted) < 0.7


# ---------------------------------------------------------------- SUV
def test_hume_lean_body_mass_by_hand():
    assert hume_lean_body_mass(80.0, 180.0, "M") == pytest.approx(0.32810 * 80 + 0.33929 * 180 - 29.5336)
    assert hume_lean_body_mass(80.0, 180.0, "M") == pytest.approx(57.7866, abs=1e-4)
    assert hume_lean_body_mass(60.0, 165.0, "F") == pytest.approx(43.43955, abs=1e-4)
    with pytest.raises(ValueError, match="sex"):
        hume_lean_body_mass(60.0, 165.0, "O")


def _pet_header(weight=80.0, height=1.80, sex="M"):
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.Modality = "PT"
    ds.Units = "BQML"
    ds.DecayCorrection = "START"
    ds.SeriesDate = "20240105"
    ds.SeriesTime = "110000"
    if weight is not None:
        ds.PatientWeight = str(weight)
    ds.PatientSize = str(height)
    ds.PatientSex = sex
    info = Dataset()
    info.RadionuclideTotalDose = "370000000"
    info.RadionuclideHalfLife = "6586.2"
    info.RadiopharmaceuticalStartTime = "100000"
    ds.RadiopharmaceuticalInformationSequence = [info]
    return ds


def test_suv_factors_against_hand_computed_values():
    factors = suv_factors(_pet_header())
    decayed = 370e6 * 0.6846329  # 2^(-3600 / 6586.2) = exp(-ln2 * 0.546597): one hour of 18F decay
    assert factors.decayed_dose_bq == pytest.approx(decayed, rel=1e-5)
    assert factors.body_weight == pytest.approx(80_000.0 / decayed, rel=1e-5)  # g / Bq
    assert factors.lean_body_mass == pytest.approx(57_786.6 / decayed, rel=1e-5)
    # 10 kBq/mL in an 80 kg patient 1 h after 370 MBq of 18F: SUVbw = 10e3 * 80e3 / 253.3e6 = 3.158
    assert 10e3 * factors.body_weight == pytest.approx(3.158, abs=1e-3)


def test_suv_needs_the_patient_weight():
    with pytest.raises(ValueError, match="PatientWeight"):
        suv_factors(_pet_header(weight=None))


# ---------------------------------------------------------------- DICOM series
def _write_series(folder: Path, n: int = 6, modality: str = "PT", weight=80.0, skip=(), rows=None):
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    series_uid = generate_uid()
    for i in range(n):
        if i in skip:
            continue
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.128"
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / f"s{i}.dcm"), _pet_header(weight=weight), file_meta=meta, preamble=b"\0" * 128)
        ds.Modality = modality
        ds.SOPClassUID = meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.SeriesInstanceUID = series_uid
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [-10.0, -20.0, 100.0 + 2.8 * i]
        ds.PixelSpacing = [2.73, 2.5]
        ds.SliceThickness = 2.8
        ds.NumberOfSlices = n
        r = rows if (rows is not None and i == 2) else 8
        ds.Rows, ds.Columns = r, 10
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleSlope, ds.RescaleIntercept = "2.0", "0"
        ds.PixelData = (np.arange(r * 10, dtype=np.uint16).reshape(r, 10) + 100 * i).tobytes()
        ds.save_as(str(folder / f"s{i}.dcm"), enforce_file_format=True)
    return folder


def test_dicom_series_reads_volume_and_affine(tmp_path):
    series = read_pet_series(_write_series(tmp_path / "pet"))
    assert series.volume.shape == (6, 8, 10)
    assert series.volume[3, 0, 1] == pytest.approx(2.0 * (1 + 300))
    assert series.spacing == pytest.approx((2.8, 2.73, 2.5))
    # NIfTI voxel (column, row, slice) -> RAS: LPS position with x and y negated
    np.testing.assert_allclose(series.affine @ [0, 0, 0, 1], [10.0, 20.0, 100.0, 1])
    np.testing.assert_allclose(series.affine @ [1, 1, 1, 1], [10.0 - 2.5, 20.0 - 2.73, 102.8, 1])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"skip": (3,)}, "missing slices"),
        ({"skip": (5,)}, "missing slices"),  # an end slice: only NumberOfSlices tells
        ({"rows": 9}, "inconsistent slices"),
        ({"modality": "CT"}, "not a PET series"),
    ],
)
def test_dicom_series_errors(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        read_pet_series(_write_series(tmp_path / "pet", **kwargs))


def test_bad_input_writes_nothing(tmp_path):
    folder = _write_series(tmp_path / "pet", weight=None)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="PatientWeight"):
        deblur_cases(pet_cases(str(folder), suv="bw"), BlindDeconvolutionConfig(), out)
    assert not out.exists()


def test_dicom_to_suv_volume(tmp_path):
    case = pet_cases(str(_write_series(tmp_path / "pet")), suv="lbm")[0]
    bq = read_pet_series(tmp_path / "pet").volume
    np.testing.assert_allclose(case["volume"], bq * suv_factors(_pet_header()).lean_body_mass, rtol=1e-6)
    assert case["unit"] == "SUVlbm"


# ---------------------------------------------------------------- BRISQUE
def test_brisque_prefers_a_sharp_natural_image():
    from scipy.ndimage import gaussian_filter
    from skimage import data

    from monai_ext.metrics.brisque import brisque_score, load_brisque_model

    model = load_brisque_model(str(BUNDLE / "models/brisque_svr.txt"), str(BUNDLE / "models/brisque_feature_range.json"))
    image = data.camera().astype(float)[::2, ::2]
    assert brisque_score(image, model, (0, 255)) + 20 < brisque_score(gaussian_filter(image, 2.0), model, (0, 255))


# ---------------------------------------------------------------- a small fit
@pytest.mark.slow  # 110 Adam steps on a 20 x 56 x 56 grid: 3.5 min wall on the shared 2-core machine
def test_small_fit_improves_recovery_over_cubic_interpolation():
    phantom = sphere_phantom(shape=(10, 28, 28), ring_radius=22.0, cylinder_radius=34.0, diameters=(10.0, 8.0, 7.0))
    config = BlindDeconvolutionConfig(kernel_sizes=(5, 9), iterations=(20, 60), pretrain_steps=30, progress=False, seed=0)
    result = neural_blind_deconvolution(phantom.measured, phantom.spacing, config)
    assert abs(float(result.kernel.sum()) - 1) < 1e-5 and float(result.kernel.min()) >= 0
    rc = recovery_coefficients(result.image, phantom.sphere_masks_2x, phantom.sphere_activity)
    cubic = recovery_coefficients(interpolate_2x(phantom.measured, 3), phantom.sphere_masks_2x, phantom.sphere_activity)
    assert np.mean(rc) > np.mean(cubic), (rc, cubic)


def test_crop_box_moves_the_affine_and_rejects_bad_boxes():
    crop_volume = deconvolution.crop_volume

    affine = np.diag([2.73, 2.73, 2.8, 1.0])
    case = {"name": "c", "volume": np.arange(10 * 12 * 14, dtype=np.float32).reshape(10, 12, 14), "affine": affine, "spacing": (2.8, 2.73, 2.73)}
    cropped = crop_volume(case, [[2, 8], [3, 9], [4, 12]])
    assert cropped["volume"].shape == (6, 6, 8) and cropped["volume"][0, 0, 0] == case["volume"][2, 3, 4]
    np.testing.assert_allclose(cropped["affine"] @ [0, 0, 0, 1], affine @ [4, 3, 2, 1])
    for box in ([[0, 11], [0, 12], [0, 14]], [[0, 3], [0, 12], [0, 14]], [[0, 10], [0, 12]]):
        with pytest.raises(ValueError, match="crop box"):
            crop_volume(case, box)


# ---------------------------------------------------------------- DICOM output
def test_written_pet_series_reads_back_to_the_same_values_and_affine(tmp_path):
    from monai_ext.io.pet_dicom import write_pet_series

    rng = np.random.default_rng(0)
    volume = rng.gamma(2.0, 1500.0, size=(5, 6, 7)).astype(np.float32)  # Bq/mL
    source = read_pet_series(_write_series(tmp_path / "pet"))
    source.header.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    affine = supersampled_affine(source.affine)  # the 2x grid of a real series: halved spacing, quarter-voxel shift
    folder = write_pet_series(volume, affine, tmp_path / "out" / "deblurred", template=source.header)
    back = read_pet_series(folder)
    np.testing.assert_allclose(back.affine, affine, atol=1e-4)
    assert back.spacing == pytest.approx((1.4, 1.365, 1.25))
    # one RescaleSlope per slice: the error is at most half a step of the slice maximum / 65535
    np.testing.assert_allclose(back.volume, volume, atol=0.5 * volume.max() / 65535 * 1.01)
    assert str(back.header.SeriesInstanceUID) != str(source.header.SeriesInstanceUID)
    assert str(back.header.StudyInstanceUID) == str(source.header.StudyInstanceUID)
    assert back.header.Units == "BQML" and float(back.header.PatientWeight) == 80.0
    assert suv_factors(back.header).body_weight == pytest.approx(suv_factors(source.header).body_weight)


def test_pet_series_writer_is_atomic_and_checks_its_input(tmp_path):
    from monai_ext.io.pet_dicom import write_pet_series

    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    out = tmp_path / "series"
    write_pet_series(np.ones((3, 4, 4)), affine, out)
    first = sorted(p.name for p in out.iterdir())
    with pytest.raises(ValueError, match="finite 3D"):
        write_pet_series(np.full((3, 4, 4), np.nan), affine, out)
    assert sorted(p.name for p in out.iterdir()) == first  # the failed write left the old series alone
    assert [p.name for p in tmp_path.iterdir()] == ["series"]  # and no temporary folder
    sheared = affine.copy()
    sheared[0, 1] = 1.0
    with pytest.raises(ValueError, match="orthogonal"):
        write_pet_series(np.ones((3, 4, 4)), sheared, tmp_path / "other")
    signed = write_pet_series(np.array([[[-2.0, 3.0]]] * 2), affine, tmp_path / "signed")
    np.testing.assert_allclose(read_pet_series(signed).volume, [[[-2.0, 3.0]]] * 2, atol=1e-3)


def test_dicom_output_of_the_workflow_has_the_suv_of_the_nifti(tmp_path):
    from monai_ext.io import load_nifti
    from monai_ext.pet.suv import suv_factors as factors_of

    cases = pet_cases(str(_write_series(tmp_path / "pet")), suv="lbm")
    config = BlindDeconvolutionConfig(kernel_sizes=(3,), iterations=(2,), pretrain_steps=1, channels=(4,), progress=False)
    summary = deblur_cases(cases, config, tmp_path / "out", dicom=True)
    entry = summary["cases"][0]
    nifti, affine = load_nifti(entry["file"])
    series = read_pet_series(entry["dicom_folder"])
    np.testing.assert_allclose(series.affine, affine, atol=1e-4)
    # written in Bq/mL with the input's dose and patient fields: its SUVlbm is the NIfTI's
    suv = series.volume * factors_of(series.header).lean_body_mass
    np.testing.assert_allclose(suv, nifti, rtol=1e-3, atol=1e-4 * float(nifti.max()))
    assert series.header.Units == "BQML"


# ---------------------------------------------------------------- kernel identification tools
def test_kernel_shape_moments_of_a_skewed_anisotropic_kernel():
    from monai_ext.metrics.deconvolution import kernel_shape
    skewed_kernel = evaluation.skewed_kernel

    spacing = (1.4, 1.365, 1.365)
    gauss = kernel_shape(gaussian_kernel((4.0, 2.0, 3.0), 21), (1.0, 1.0, 1.0))
    np.testing.assert_allclose(gauss["fwhm_mm"], [4.0, 2.0, 3.0], rtol=1e-3)
    np.testing.assert_allclose(gauss["principal_fwhm_mm"], [4.0, 3.0, 2.0], rtol=1e-3)
    np.testing.assert_allclose(np.abs(gauss["major_axis_zyx"]), [1, 0, 0], atol=1e-6)
    np.testing.assert_allclose(gauss["skewness"], 0, atol=1e-9)
    skewed = kernel_shape(skewed_kernel((5.0, 5.0, 5.0), (0.0, 0.0, 4.0), spacing, 15), spacing)
    assert skewed["skewness"][2] > 0.5 and abs(skewed["skewness"][0]) < 1e-6
    np.testing.assert_allclose(skewed["centroid_mm"], 0, atol=0.1)  # mass-centred
    with pytest.raises(ValueError):
        kernel_shape(-np.ones((3, 3, 3)))


def test_similarity_matrix_identifies_kernels_by_their_diagonal():
    from monai_ext.metrics.deconvolution import kernel_similarity_matrix

    applied = [gaussian_kernel(f, 11) for f in ((5.0, 2.0, 2.0), (2.0, 5.0, 2.0), (2.0, 2.0, 5.0))]
    noisy = [k + 0.002 * np.random.default_rng(i).random(k.shape) for i, k in enumerate(applied)]
    matrix = kernel_similarity_matrix(noisy, applied)
    assert matrix.shape == (3, 3)
    assert np.all(np.argmax(matrix, axis=1) == np.arange(3))
    blob = [gaussian_kernel(3.0, 11)] * 3  # one blob for all: high similarities, but no row peaks on its diagonal
    rows = kernel_similarity_matrix(blob, applied)
    assert np.ptp(rows, axis=1).max() < 1e-9


def test_normalised_sparsity_grows_with_blur():
    from scipy.ndimage import gaussian_filter

    from monai_ext.deconvolution.blind_deconvolution import DeconvolutionLoss

    phantom = sphere_phantom(shape=(8, 28, 28), ring_radius=22.0, cylinder_radius=34.0, diameters=(10.0, 8.0))
    sharp = torch.as_tensor(phantom.reference_2x)[None, None]
    values = [float(DeconvolutionLoss.normalised_sparsity(sharp))]
    for sigma in (1.0, 2.0):
        values.append(float(DeconvolutionLoss.normalised_sparsity(torch.as_tensor(gaussian_filter(phantom.reference_2x, sigma))[None, None])))
    assert values[0] < values[1] < values[2], values
    # while TV falls with blur (Levin et al.: the no-blur solution wins under TV)
    tv = [float(DeconvolutionLoss.total_variation(torch.as_tensor(gaussian_filter(phantom.reference_2x, s))[None, None])) for s in (0.01, 2.0)]
    assert tv[1] < tv[0]


def test_scale_steps():
    from monai_ext.deconvolution.blind_deconvolution import scale_steps

    assert scale_steps([20, 20, 100], 0.5) == (10, 10, 50)
    assert scale_steps([20, 20, 100], 0.01) == (1, 1, 1)
    assert scale_steps(50, 2.0) == 100
    with pytest.raises(ValueError, match="steps_scale"):
        scale_steps([20], 0.0)


def test_steps_scale_of_the_inference_config():
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "inference.json"))
    parser["bundle_root"] = str(BUNDLE)
    parser["steps_scale"] = 0.25
    config = parser.get_parsed_content("deconvolution")
    assert config.iterations == (5, 5, 25) and config.pretrain_steps == 12


@pytest.mark.parametrize("entry", ["inference.json", "evaluate.json"])
def test_paper_schedule_and_scale_layer_on_the_quick_configs(entry):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(BUNDLE / "configs" / name) for name in (entry, "paper_schedule.json", "paper_scale.json")])
    parser["bundle_root"] = str(BUNDLE)
    parser["steps_scale"] = 0.1
    config = parser.get_parsed_content("deconvolution")
    assert not config.residual and not config.image_input
    assert tuple(config.kernel_sizes) == (7, 11, 15) and config.iterations == (100, 100, 500) and config.pretrain_steps == 30
    assert tuple(config.channels) == (16, 32, 64) and config.lr_image == 0.005  # the rest stays as in the entry config
    assert parser.get_parsed_content("example").measured.shape == (24, 48, 48)


def test_kernel_estimation_with_the_image_known_identifies_anisotropic_kernels():
    """Gk + floor + the loss, fitted with x fixed (the warm-up / non-blind part): each kernel is closest to its own."""
    from monai_ext.metrics.deconvolution import kernel_similarity_matrix
    from monai_ext.deconvolution.blind_deconvolution import DeconvolutionLoss, fit_kernel_to_image, kernel_model

    phantom = sphere_phantom(shape=(8, 24, 24), ring_radius=18.0, cylinder_radius=30.0, diameters=(10.0, 8.0, 6.0))
    config = BlindDeconvolutionConfig(kernel_sizes=(9,), iterations=(80,), lr_kernel=1e-3, kernel_hidden=200, min_fwhm_mm=(2.0, 2.0, 2.0))
    x = torch.as_tensor(phantom.reference_2x / phantom.reference_2x.max())[None, None]
    applied = [gaussian_kernel(f, 9) for f in ((6.0, 2.0, 2.0), (2.0, 6.0, 2.0), (2.0, 2.0, 6.0))]  # 2x voxels
    recovered = []
    for k_star in applied:
        target = blur_and_downsample(x, torch.as_tensor(k_star, dtype=torch.float32)[None, None])
        torch.manual_seed(0)
        kernels = kernel_model(config, phantom.spacing)
        gk = KernelGenerator(9, config.kernel_input_size, config.kernel_hidden)
        kernels.initialise(gk, kernels.initial_raw)
        code = torch.rand(config.kernel_input_size)
        kernel_of = kernels.kernel_function(gk, code)
        fit_kernel_to_image(kernel_of, gk.parameters(), blur_and_downsample, x, target, DeconvolutionLoss(), 80, 1e-3, 0.06)
        recovered.append(kernel_of().detach()[0, 0].numpy())
    matrix = kernel_similarity_matrix(recovered, applied)
    assert np.all(np.argmax(matrix, axis=1) == np.arange(3)), matrix
    assert np.diag(matrix).min() > 0.9, matrix


def test_evaluation_without_pseudokernels_scores_the_fit_only(tmp_path):
    evaluate_psma_deconvolution = evaluation.evaluate_psma_deconvolution

    phantom = sphere_phantom(shape=(6, 16, 16), ring_radius=12.0, cylinder_radius=18.0, diameters=(8.0, 6.0))
    config = BlindDeconvolutionConfig(kernel_sizes=(5,), iterations=(2,), pretrain_steps=1, channels=(4,), kernel_hidden=50, progress=False)
    models = BUNDLE / "models"
    report = evaluate_psma_deconvolution(phantom, config, tmp_path, str(models / "brisque_svr.txt"), str(models / "brisque_feature_range.json"), pseudokernels=[])
    assert report["pseudokernels"] == [] and not list(tmp_path.glob("pseudokernel_*"))
    assert set(report["recovery_coefficients"]) == {"deblurred", "nearest", "linear", "quadratic", "cubic"}
    assert len(report["recovery_coefficients"]["cubic"]) == 2 and "deblurred" in report["brisque"]
    assert json.loads((tmp_path / "evaluation.json").read_text())["psnr_db"] == report["psnr_db"]
    assert "not run" in (tmp_path / "evaluation.md").read_text()


def test_pseudokernel_test_scores_each_recovered_kernel_against_every_applied_one(tmp_path):
    PSEUDOKERNELS, pseudokernel_test = evaluation.PSEUDOKERNELS, evaluation.pseudokernel_test

    phantom = sphere_phantom(shape=(6, 16, 16), ring_radius=12.0, cylinder_radius=18.0, diameters=(8.0, 6.0))
    config = BlindDeconvolutionConfig(kernel_sizes=(5,), iterations=(2,), pretrain_steps=1, channels=(4,), kernel_hidden=50, progress=False)
    out = pseudokernel_test(phantom.reference_2x, phantom.spacing, config, PSEUDOKERNELS[:2], output_dir=tmp_path)
    matrix = np.asarray(out["similarity_matrix"])
    assert matrix.shape == (2, 2) and np.all((matrix > 0) & (matrix <= 1 + 1e-9))
    for i, row in enumerate(out["rows"]):
        assert row["similarity"] == pytest.approx(matrix[i, i])
        assert row["identified"] == bool(matrix[i, i] > matrix[i, 1 - i])
        assert set(row["null_similarity"]) == {"initial", "floor"} and len(row["kernel_history"]) >= 1
        assert len(row["applied_shape"]["fwhm_mm"]) == 3
    assert (tmp_path / "pseudokernel_2.png").is_file()
    for i in (1, 2):  # the kernels as written give back the scores
        applied, recovered = (load_nifti(tmp_path / f"pseudokernel_{i}_{kind}.nii.gz")[0] for kind in ("applied", "recovered"))
        assert kernel_similarity(recovered, applied) == pytest.approx(matrix[i - 1, i - 1], abs=1e-5)


def test_own_data_series_without_units_is_not_taken_as_bqml():
    """A PET header without Units (0054,1001) is refused for SUV, with the way out named, instead of being read as Bq/mL."""
    ds = _pet_header()
    del ds.Units
    with pytest.raises(ValueError, match=r"no Units \(0054,1001\).*suv: null"):
        suv_factors(ds)


def test_own_data_raw_values_of_a_series_without_units_keep_an_unknown_unit(tmp_path):
    """``suv: null`` on a series without Units: deblurred as it is, labelled unknown, never written back as Bq/mL."""
    import pydicom

    folder = _write_series(tmp_path / "pet")
    for f in sorted(Path(folder).glob("*.dcm")):
        ds = pydicom.dcmread(f)
        del ds.Units
        ds.save_as(f)
    case = pet_cases(str(folder), suv=None)[0]
    assert case["unit"].startswith("unknown") and "bqml_per_unit" not in case
    with pytest.raises(ValueError, match=r"no Units \(0054,1001\)"):
        pet_cases(str(folder), suv="lbm")


def test_own_data_pet_series_writers_racing_for_one_folder_take_turns(tmp_path):
    """Eight writers of one series folder at once: none fails, the folder holds one complete series (the last
    swap's), and no hidden temporary or ``.old`` folder is left beside it."""
    from concurrent.futures import ThreadPoolExecutor

    from monai_ext.io.pet_dicom import read_pet_series, write_pet_series

    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    out = tmp_path / "series"

    def write(value: int):
        return write_pet_series(np.full((3, 4, 4), float(value), np.float32), affine, out)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(write, range(1, 9)))
    series = read_pet_series(out)
    assert series.volume.shape == (3, 4, 4) and len(np.unique(series.volume)) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["series"]


def test_own_data_pet_inputs_one_key_for_every_layout(tmp_path):
    """dataset_dir takes a NIfTI file, a folder of NIfTI files, a DICOM series folder, a folder of series folders
    (as MONAI Label hands a DICOM study over) or a datalist JSON; every case is read before any is deblurred."""
    from monai_ext.io import save_nifti

    niftis = tmp_path / "niftis"
    for name in ("b", "a"):
        save_nifti(np.ones((4, 6, 6), np.float32), niftis / f"{name}.nii.gz", spacing=[3.0, 2.0, 2.0])
    assert [c["name"] for c in pet_cases(str(niftis))] == ["a", "b"]
    assert [c["name"] for c in pet_cases(str(niftis / "a.nii.gz"))] == ["a"]
    series = _write_series(tmp_path / "study" / "pet1")
    assert [c["name"] for c in pet_cases(str(series), suv="bw")] == ["pet1"]
    _write_series(tmp_path / "study" / "pet2")
    assert [c["name"] for c in pet_cases(str(tmp_path / "study"), suv="bw")] == ["pet1", "pet2"]
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"test": [{"image": "niftis/b.nii.gz"}]}))
    assert [c["name"] for c in pet_cases(str(datalist))] == ["b"]
    assert pet_cases(str(niftis / "a.nii.gz"), suv="null")[0]["unit"] == "as stored"
    with pytest.raises(FileNotFoundError, match="PET input not found"):
        pet_cases(str(tmp_path / "missing"))

"""Tests for monai_ext.pet: scanner geometry, system model, likelihood, MLEM/OSEM, kinetics, phantom, simulator, I/O."""

from __future__ import annotations

import json
import math
import os

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import integrate, stats

from monai_ext.pet import (
    BIOGRAPH_6_TRUEPOINT_TRUEV,
    C11_HALF_LIFE_MIN,
    DEMO_SCANNER,
    MU_BONE,
    MU_WATER,
    PE2I_LIKE_INPUT,
    DynamicPETSimulator,
    FengInput,
    FrameSchedule,
    GaussianPSF,
    PETScanner,
    PETSystemModel,
    TwoTissueParameters,
    batch_system_model,
    brain_phantom,
    frame_decay_factors,
    frame_tacs,
    load_exam,
    mlem,
    osem,
    poisson_nll,
    poisson_nll_gradient,
    poisson_nll_image_gradient,
    save_exam,
    two_tissue_tac,
)
from monai_ext.pet.system_model import FWHM_PER_SIGMA

F64 = torch.float64
SHAPE, PIXEL = (32, 32), 8.0  # the demo scanner's test grid: 256 mm field of view
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")


@pytest.fixture(scope="module")
def geometry():
    return DEMO_SCANNER.sinogram_geometry(SHAPE, PIXEL)


@pytest.fixture(scope="module")
def simulator():
    return DynamicPETSimulator(DEMO_SCANNER, SHAPE, PIXEL)


@pytest.fixture(scope="module")
def exam(simulator):
    return simulator.simulate(300e6, subject_seed=1, noise_seed=2)


def full_model(geometry, dtype=F64, n_frames=3, batch=1, backend="auto", seed=0):
    """A model with every factor on: attenuation, normalisation, PSF, per-frame scale and a background."""
    g = torch.Generator().manual_seed(seed)
    mu = brain_phantom(SHAPE, PIXEL, seed=seed).mu_map
    return PETSystemModel(
        geometry,
        psf_fwhm=10.0,
        mu_map=torch.as_tensor(mu, dtype=dtype).expand(batch, 1, *SHAPE),
        normalisation=0.8 + 0.4 * torch.rand(geometry.sinogram_shape, generator=g, dtype=dtype),
        scale=(1.0 + torch.rand(1, n_frames, 1, 1, generator=g, dtype=dtype)),
        background=0.5 + torch.rand(1, n_frames, *geometry.sinogram_shape, generator=g, dtype=dtype),
        backend=backend,
    )


# -- scanner -------------------------------------------------------------------------------------------------------


def test_biograph_preset_and_sinogram_sampling():
    scanner = BIOGRAPH_6_TRUEPOINT_TRUEV
    assert (scanner.detectors_per_ring, scanner.n_rings, scanner.n_views) == (624, 52, 312)
    assert scanner.radial_bin_width == pytest.approx(math.pi * 842.0 / 624 / 2)  # half the crystal pitch
    assert scanner.plane_spacing == pytest.approx(216.0 / 52)
    geometry = scanner.sinogram_geometry((128, 128), 2.0)
    assert geometry.sinogram_shape == (312, 171)
    assert geometry.n_det * geometry.det_spacing >= math.hypot(256.0, 256.0)  # every pixel seen from every view
    assert geometry.angles[1] - geometry.angles[0] == pytest.approx(math.pi / 312)
    mashed = scanner.sinogram_geometry((128, 128), 2.0, view_mashing=2)
    assert mashed.n_angles == 156 and mashed.angles[0] == pytest.approx(0.5 * math.pi / 312)
    demo = DEMO_SCANNER.sinogram_geometry(SHAPE, PIXEL)
    assert demo.sinogram_shape == (80, 77)  # radial bins clipped to the 300 mm transaxial FOV
    assert demo.n_det * demo.det_spacing == pytest.approx(300.0, abs=demo.det_spacing)


def test_lor_crystals_match_the_ring():
    scanner, geometry = DEMO_SCANNER, DEMO_SCANNER.sinogram_geometry(SHAPE, PIXEL)
    pairs = scanner.lor_crystals(geometry)
    centre = geometry.n_det // 2
    n = scanner.detectors_per_ring
    # view 0 rays run along +y through x = u: the central ray joins the crystals at +-90 degrees
    assert sorted(pairs[0, centre]) == [n // 4, 3 * n // 4]
    # the sum of the two crystal indices is constant along a view (the definition of a view)
    sums = (pairs[5, :, 0] + pairs[5, :, 1]) % n
    assert np.ptp(sums) <= 1


@pytest.mark.parametrize(
    "field, value",
    [("detectors_per_ring", 161), ("crystal_size", (9.0, 7.5)), ("transaxial_fov", 500.0), ("ring_diameter", -1.0), ("n_rings", 0)],
)
def test_invalid_scanner_names_the_field(field, value):
    fields = {f: getattr(DEMO_SCANNER, f) for f in DEMO_SCANNER.__dataclass_fields__}
    with pytest.raises(ValueError, match=field):
        PETScanner(**{**fields, field: value})


def test_image_wider_than_the_fov_is_refused():
    with pytest.raises(ValueError, match="transaxial FOV"):
        DEMO_SCANNER.sinogram_geometry((64, 64), 8.0)
    with pytest.raises(ValueError, match="view_mashing"):
        DEMO_SCANNER.sinogram_geometry(SHAPE, PIXEL, view_mashing=3)


# -- PSF and system model ------------------------------------------------------------------------------------------


def test_psf_has_the_right_width():
    psf = GaussianPSF(10.0, (2.0, 2.5))
    delta = torch.zeros(1, 1, 40, 36, dtype=F64)
    delta[0, 0, 20, 18] = 1.0
    blurred = psf(delta)[0, 0]
    assert float(blurred.sum()) == pytest.approx(1.0, abs=1e-9)  # kernel normalised, no mass lost inside
    for axis, d in ((0, 2.0), (1, 2.5)):
        profile = blurred.sum(1 - axis)
        pos = (torch.arange(profile.numel(), dtype=F64) - (20 if axis == 0 else 18)) * d
        variance = float((profile * pos**2).sum())
        # pixel-integrated Gaussian: sigma^2 + d^2 / 12
        assert variance == pytest.approx((10.0 / FWHM_PER_SIGMA) ** 2 + d**2 / 12, rel=0.02)


def test_system_model_stack_of_planes_shape(geometry):
    """A 3D image as a stack of direct planes, with an axial PSF (adjointness: ``test_operators.py``)."""
    g = torch.Generator().manual_seed(2)
    mu = torch.full((1, 1, 4, *SHAPE), MU_WATER, dtype=F64)
    stack = PETSystemModel(geometry, n_planes=4, plane_spacing=8.0, psf_fwhm=(8.0, 10.0), mu_map=mu)
    x, y = torch.rand(2, 3, 4, *SHAPE, generator=g, dtype=F64), torch.rand(2, 3, 4, *geometry.sinogram_shape, generator=g, dtype=F64)
    assert stack(x).shape == (2, 3, 4, *geometry.sinogram_shape)
    assert stack.adjoint(y).shape == x.shape


def test_frames_go_through_in_one_projector_call(geometry):
    model = full_model(geometry, n_frames=5)
    x = torch.rand(1, 5, *SHAPE, dtype=F64)
    calls = []
    original = model.projector._apply_forward
    model.projector._apply_forward = lambda t: calls.append(tuple(t.shape)) or original(t)
    together = model(x)
    assert calls == [(1, 5, *SHAPE)]
    # frame by frame with the frame's own scale gives the same
    for t in range(5):
        single = PETSystemModel(
            geometry,
            psf_fwhm=10.0,
            attenuation_factors=model.attenuation_factors,
            normalisation=model.normalisation,
            scale=model.scale[:, t : t + 1],
        )
        torch.testing.assert_close(single(x[:, t : t + 1]), together[:, t : t + 1])


def test_attenuation_background_and_sensitivity(geometry):
    radius, mu = 100.0, MU_WATER
    y_mm, x_mm = torch.meshgrid(*(((torch.arange(n, dtype=F64) - (n - 1) / 2) * PIXEL) for n in SHAPE), indexing="ij")
    disc = (x_mm**2 + y_mm**2 <= radius**2).to(F64) * mu
    background = torch.full((1, 1, *geometry.sinogram_shape), 2.0, dtype=F64)
    model = PETSystemModel(geometry, mu_map=disc, background=background)
    centre = geometry.n_det // 2
    # the central ray crosses the full diameter: exp(-mu * 2 R), up to the disc's pixelation
    assert model.attenuation_factors[0, 0, :, centre].mean().item() == pytest.approx(math.exp(-mu * 2 * radius), rel=0.05)
    assert float(model.attenuation_factors.max()) == pytest.approx(1.0)  # rays that miss the disc
    x = torch.rand(1, 1, *SHAPE, dtype=F64)
    torch.testing.assert_close(model.expected_counts(x), model(x) + 2.0)  # b is added, never part of A
    assert float(model(torch.zeros_like(x)).abs().max()) == 0.0
    torch.testing.assert_close(model.sensitivity(), model.adjoint(torch.ones(1, 1, *geometry.sinogram_shape, dtype=F64)))


def test_system_model_is_differentiable(geometry):
    model = full_model(geometry, n_frames=2)
    x = torch.rand(1, 2, *SHAPE, dtype=F64, requires_grad=True)
    y = torch.poisson(model.expected_counts(x.detach()) * 5)
    loss = poisson_nll(y, model.expected_counts(x))
    (grad,) = torch.autograd.grad(loss, x)
    torch.testing.assert_close(grad, poisson_nll_image_gradient(model, x.detach(), y))


# -- likelihood ----------------------------------------------------------------------------------------------------


def test_poisson_nll_values_and_gradient():
    y = torch.tensor([0.0, 0.0, 3.0, 7.0, 2.0], dtype=F64)
    ybar = torch.tensor([0.0, 1.5, 2.0, 7.5, 0.0], dtype=F64)
    eps = 1e-9
    expected = torch.tensor([0.0, 1.5, 2.0 - 3 * math.log(2.0), 7.5 - 7 * math.log(7.5), -2 * math.log(eps)], dtype=F64)
    torch.testing.assert_close(poisson_nll(y, ybar, reduction="none", eps=eps), expected)
    assert torch.isfinite(poisson_nll(y, ybar)).all()  # 0 log 0 = 0, ybar -> 0 clamped
    # with the constant it is the exact negative log-pmf
    positive = ybar[1:4]
    torch.testing.assert_close(
        poisson_nll(y[1:4], positive, reduction="none", include_constant=True),
        torch.as_tensor(-stats.poisson.logpmf(y[1:4].numpy(), positive.numpy())),
    )
    grad = poisson_nll_gradient(y, ybar, eps=eps)
    assert torch.isfinite(grad).all() and grad[0] == 1.0 and grad[1] == 1.0
    ybar_free = positive.clone().requires_grad_(True)
    poisson_nll(y[1:4], ybar_free).backward()
    torch.testing.assert_close(ybar_free.grad, poisson_nll_gradient(y[1:4], positive))
    assert poisson_nll(torch.ones(2, 3, 4, 5), torch.ones(2, 3, 4, 5), reduction="per_sinogram").shape == (2, 3)
    with pytest.raises(ValueError, match="reduction"):
        poisson_nll(y, ybar, reduction="max")


# -- reconstruction ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def recon_problem(exam):
    """Two frames of the simulated exam (an early and a late one) with the exam's own model."""
    frames = [3, 15]
    model = exam.system_model()
    model.set_scale(model.scale[:, frames])
    model.set_background(model.background[:, frames])
    return model, exam.activity[None, frames], exam.counts[None, frames], exam.expected_counts[None, frames]


def test_mlem_increases_likelihood_keeps_positivity_and_converges(recon_problem):
    model, truth, counts, expected = recon_problem
    minima = []
    x, info = mlem(counts, model, n_iter=50, callback=lambda k, x: minima.append(float(x.min())))
    ll = info.log_likelihood_per_sinogram  # (51, 1, 2)
    assert ll.shape == (51, 1, 2) and len(info.log_likelihood) == 51
    steps = ll[1:] - ll[:-1]
    assert bool((steps >= -1e-9 * ll[1:].abs()).all()), f"likelihood decreased: {steps.min()}"
    assert min(minima) >= 0.0 and float(x.min()) >= 0.0
    # noise-free data: the image error keeps falling
    errors = []
    track = lambda k, x: errors.append(float((x - truth).norm() / truth.norm()))  # noqa: E731
    mlem(expected, model, n_iter=50, compute_likelihood=False, callback=track)
    assert errors[49] < errors[19] < errors[4] < errors[0]
    assert errors[49] < 0.3


def test_osem_agrees_with_mlem_and_is_faster_per_pass(recon_problem):
    model, truth, _, expected = recon_problem
    x_osem, info_osem = osem(expected, model, n_iter=5, n_subsets=8)
    x_mlem, info_mlem = mlem(expected, model, n_iter=40)
    # 5 passes of 8 subsets reach about where 40 MLEM iterations do, and beyond 5 MLEM iterations
    assert float((x_osem - x_mlem).norm() / x_mlem.norm()) < 0.05
    assert info_osem.log_likelihood[5] > info_mlem.log_likelihood[5]
    gap = info_mlem.log_likelihood[40] - info_mlem.log_likelihood[0]
    assert abs(info_osem.log_likelihood[5] - info_mlem.log_likelihood[40]) < 0.01 * gap
    assert info_osem.n_subsets == 8 and len(info_osem.log_likelihood) == 6


def test_post_filter_smooths_the_noise(recon_problem):
    model, _, counts, expected = recon_problem
    run = lambda y, fwhm: mlem(y, model, n_iter=20, compute_likelihood=False, post_filter_fwhm=fwhm)[0]  # noqa: E731
    raw, smooth, noise_free = run(counts, 0.0), run(counts, 12.0), run(expected, 0.0)
    post_filter = GaussianPSF(12.0, PIXEL)
    torch.testing.assert_close(smooth, post_filter(raw))
    assert float((smooth - post_filter(noise_free)).norm()) < 0.7 * float((raw - noise_free).norm())


# -- kinetics ------------------------------------------------------------------------------------------------------

PARAMS = TwoTissueParameters(K1=[0.45, 0.45, 0.2], k2=[0.15, 0.15, 0.12], k3=[0.2, 0.0, 0.01], k4=[0.03, 0.0, 0.03], vB=[0.05, 0.0, 0.03])


def test_two_tissue_matches_closed_forms():
    t = np.arange(3601) / 60.0  # one hour at 1 s, in minutes
    rates, weights = PARAMS.impulse_response()
    r, w = rates[:, :, None], weights[:, :, None]
    vb = PARAMS.vB[:, None]
    # constant input c: C_T = c sum_i w_i (1 - exp(-a_i t)) / a_i
    c = 2.0
    tissue = c * (w * np.where(r > 0, -np.expm1(-r * t) / np.where(r > 0, r, 1.0), t)).sum(1)
    tac = two_tissue_tac(t, PARAMS, np.full_like(t, c))
    exact = (1 - vb) * tissue + vb * c
    assert np.max(np.abs(tac[:, 1:] - exact[:, 1:]) / exact[:, 1:]) < 1e-4
    # exponential input exp(-l t): C_T = sum_i w_i (exp(-l t) - exp(-a_i t)) / (a_i - l)
    lam = 0.3
    tissue = (w * (np.exp(-lam * t) - np.exp(-r * t)) / (r - lam)).sum(1)
    tac = two_tissue_tac(t, PARAMS, np.exp(-lam * t))
    exact = (1 - vb) * tissue + vb * np.exp(-lam * t)
    assert np.max(np.abs(tac[:, 1:] - exact[:, 1:]) / exact[:, 1:]) < 1e-4
    # the first region is a 2TCM with BP = k3 / k4, the second a one-tissue model
    np.testing.assert_allclose(PARAMS.binding_potential, [0.2 / 0.03, 0.0, 0.01 / 0.03])


def test_frame_tacs_apply_decay_and_average_over_frames():
    schedule = FrameSchedule.from_blocks([(2, 60.0), (2, 300.0)], start=30.0)
    c, params = 1.5, TwoTissueParameters(K1=0.3, k2=0.1, k3=0.0, k4=0.0, vB=0.0)
    lam = math.log(2.0) / C11_HALF_LIFE_MIN
    tac = lambda tm: c * 0.3 / 0.1 * (1.0 - math.exp(-0.1 * tm)) * math.exp(-lam * tm)  # noqa: E731
    expected = [integrate.quad(tac, s / 60, (s + d) / 60)[0] / (d / 60) for s, d in zip(schedule.starts, schedule.durations)]
    got = frame_tacs(params, lambda tm: np.full_like(tm, c), schedule)
    np.testing.assert_allclose(got[0], expected, rtol=1e-4)
    corrected = frame_tacs(params, lambda tm: np.full_like(tm, c), schedule, half_life_min=None)
    assert np.all(got < corrected)
    frames = list(zip(schedule.starts, schedule.durations))
    mean_decay = [integrate.quad(lambda ts: math.exp(-lam * ts / 60), s, s + d)[0] / d for s, d in frames]
    np.testing.assert_allclose(frame_decay_factors(schedule), mean_decay, rtol=1e-10)


def test_frame_schedule_protocol_and_validation():
    schedule = FrameSchedule.pe2i_protocol()
    assert schedule.n_frames == 20 and schedule.total_duration == 3600.0
    assert schedule.durations == (60.0,) * 5 + (120.0,) * 5 + (150.0,) * 2 + (300.0,) * 8
    assert schedule.starts[5] == 300.0 and schedule.ends[-1] == 3600.0
    with pytest.raises(ValueError, match="starts must increase"):
        FrameSchedule((0.0, 60.0, 30.0), (60.0, 60.0, 60.0))
    with pytest.raises(ValueError, match="starts must increase"):
        FrameSchedule((0.0, 30.0), (60.0, 60.0))  # overlapping frames
    with pytest.raises(ValueError, match="durations"):
        FrameSchedule.from_durations([60.0, -60.0])
    with pytest.raises(ValueError, match="equal length"):
        FrameSchedule((0.0, 60.0), (60.0,))


def test_invalid_kinetic_parameters():
    with pytest.raises(ValueError, match="k3"):
        TwoTissueParameters(K1=0.4, k2=0.1, k3=-0.1, k4=0.03, vB=0.05)
    with pytest.raises(ValueError, match="vB"):
        TwoTissueParameters(K1=0.4, k2=0.1, k3=0.1, k4=0.03, vB=1.5)
    with pytest.raises(ValueError, match="lambda2"):
        FengInput(lambda2=0.0)


def test_feng_input_shape():
    t = np.linspace(0, 60, 3601)
    cp = FengInput()(t)
    assert cp[0] == pytest.approx(0.0) and 0.1 < t[cp.argmax()] < 1.0 and cp[-1] > 0
    delayed = PE2I_LIKE_INPUT(t)
    assert np.all(delayed[t < PE2I_LIKE_INPUT.delay] == 0.0)


# -- phantom -------------------------------------------------------------------------------------------------------


def test_brain_phantom_regions_and_mu_map():
    phantom = brain_phantom((64, 64), 4.0, n_regions=100, seed=3)
    present = np.unique(phantom.labels)
    assert phantom.n_regions == 100 and present[0] == 0 and len(present) - 1 >= 95
    for kind in ("caudate", "putamen", "thalamus", "ventricle", "cerebellum", "cortex", "white_matter"):
        assert len(phantom.regions_of(kind)) >= 2 and np.isin(phantom.regions_of(kind), present).any()
    assert set(np.unique(phantom.mu_map)) == {0.0, MU_WATER, MU_BONE}
    assert np.all((phantom.mu_map > 0) == (phantom.labels > 0))
    again, other = brain_phantom((64, 64), 4.0, seed=3), brain_phantom((64, 64), 4.0, seed=4)
    assert np.array_equal(again.labels, phantom.labels) and not np.array_equal(other.labels, phantom.labels)
    # a piecewise-constant image from per-region values
    image = phantom.image(np.arange(1, 101, dtype=float))
    assert np.array_equal(image, phantom.labels.astype(float))
    with pytest.raises(ValueError, match="n_regions"):
        brain_phantom((64, 64), 4.0, n_regions=5)


# -- simulator -----------------------------------------------------------------------------------------------------


def test_exam_counts_match_total_and_frames_follow_activity_duration_decay(simulator, exam):
    assert float(exam.trues.sum()) == pytest.approx(300e6, rel=1e-2)
    assert float(exam.trues.sum()) == pytest.approx(300e6, rel=1e-9)  # the scaling is exact
    assert float(exam.background.sum()) == pytest.approx(0.3 * 300e6, rel=1e-9)
    torch.testing.assert_close(exam.background.sum((1, 2)), 0.3 * exam.trues.sum((1, 2)))
    # frame t: sensitivity * duration * sum(A x_t), with x_t the decayed frame-average activity
    unit = exam.system_model()(exam.activity[None])[0].sum((1, 2)) / exam.frame_scale
    durations = torch.as_tensor(simulator.schedule.durations, dtype=F64)
    torch.testing.assert_close(exam.trues.sum((1, 2)), exam.sensitivity * durations * unit)
    # the activity carries decay: the decay-corrected TACs divided out leave the frame-mean decay factor, to within
    # the (small) change of the TAC across a frame
    corrected = frame_tacs(exam.parameters, simulator.input_function, simulator.schedule, half_life_min=None)
    ratio = exam.region_tacs / corrected
    decay = np.broadcast_to(frame_decay_factors(simulator.schedule), ratio.shape)
    np.testing.assert_allclose(ratio[:, -8:], decay[:, -8:], rtol=0.01)
    # counts are a Poisson draw of trues + background
    total = float(exam.expected_counts.sum())
    assert abs(float(exam.counts.sum()) - total) < 5 * math.sqrt(total)
    assert torch.equal(exam.counts, exam.counts.round()) and float(exam.counts.min()) >= 0


def test_exam_has_pe2i_like_contrast(exam):
    striatum = np.concatenate([exam.phantom.regions_of("caudate"), exam.phantom.regions_of("putamen")]) - 1
    cerebellum = exam.phantom.regions_of("cerebellum") - 1
    late, early = exam.region_tacs[:, -1], exam.region_tacs[:, 2]
    assert late[striatum].mean() / late[cerebellum].mean() > 4.0  # BP ~ 6-7 in the striatum
    assert early[striatum].mean() / early[cerebellum].mean() < 1.5  # delivery-dominated early frames
    # the noise-free exam is reproduced by its own system model
    model = exam.system_model()
    torch.testing.assert_close(model.expected_counts(exam.activity[None])[0], exam.expected_counts)


def test_same_seed_same_data_other_seed_other_data(simulator, exam):
    again = simulator.simulate(300e6, subject_seed=1, noise_seed=2)
    assert torch.equal(again.counts, exam.counts) and torch.equal(again.activity, exam.activity)
    other_noise = simulator.simulate(300e6, subject_seed=1, noise_seed=3)
    assert torch.equal(other_noise.trues, exam.trues) and not torch.equal(other_noise.counts, exam.counts)
    other_subject = simulator.simulate(300e6, subject_seed=5, noise_seed=2)
    assert not torch.equal(other_subject.activity, exam.activity)
    assert float(other_subject.trues.sum()) == pytest.approx(300e6, rel=1e-9)
    # two subjects in one (B, T, ny, nx) model, each with its own attenuation, frame scale and background
    model = batch_system_model([exam, other_subject])
    activity = torch.stack([exam.activity, other_subject.activity])
    torch.testing.assert_close(model.expected_counts(activity), torch.stack([exam.expected_counts, other_subject.expected_counts]))


def test_counts_can_include_background():
    sim = DynamicPETSimulator(DEMO_SCANNER, SHAPE, PIXEL, counts_include_background=True, background_fraction=0.25)
    exam = sim.simulate(200e6, subject_seed=0)
    assert float(exam.expected_counts.sum()) == pytest.approx(200e6, rel=1e-9)
    assert float(exam.background.sum() / exam.trues.sum()) == pytest.approx(0.25)


# -- bad input -----------------------------------------------------------------------------------------------------


def test_bad_input_raises_clear_errors(geometry, simulator, exam):
    model = full_model(geometry, n_frames=2)
    y = torch.rand(1, 2, *geometry.sinogram_shape, dtype=F64)
    bad = y.clone()
    bad[0, 1, 3, 4] = float("nan")
    with pytest.raises(ValueError, match="y contains 1 non-finite"):
        mlem(bad, model, n_iter=1)
    with pytest.raises(ValueError, match=r"y must have shape \(B, C, 80, 77\)"):
        mlem(y[..., :-1], model, n_iter=1)
    with pytest.raises(ValueError, match="y must be non-negative"):
        mlem(-y, model, n_iter=1)
    with pytest.raises(ValueError, match="x0 must be non-negative"):
        mlem(y, model, n_iter=1, x0=-torch.ones(1, 2, *SHAPE, dtype=F64))
    with pytest.raises(ValueError, match="n_subsets"):
        osem(y, model, n_iter=1, n_subsets=81)
    with pytest.raises(ValueError, match=r"x must have shape"):
        model(torch.rand(1, 2, 16, 16, dtype=F64))
    with pytest.raises(ValueError, match="mu_map must be non-negative"):
        model.set_mu_map(-torch.ones(*SHAPE, dtype=F64))
    with pytest.raises(ValueError, match="normalisation must broadcast"):
        model.set_normalisation(torch.ones(80, 76, dtype=F64))
    with pytest.raises(ValueError, match="total_counts"):
        simulator.simulate(-150e6)
    with pytest.raises(ValueError, match="total_counts"):
        simulator.simulate(float("nan"))
    negative = exam.activity.clone()
    negative[4, 10, 10] = -1.0
    with pytest.raises(ValueError, match="activity must be non-negative"):
        simulator.simulate_from_activity(negative, exam.mu_map, 150e6)
    with pytest.raises(ValueError, match=r"activity must have shape \(T, ny, nx\)"):
        simulator.simulate_from_activity(exam.activity[:5], exam.mu_map, 150e6)


# -- files ---------------------------------------------------------------------------------------------------------


def test_save_and_load_exam(tmp_path, exam):
    paths = save_exam(exam, tmp_path / "subject")
    assert sorted(paths) == ["activity", "activity_json", "labels", "mu_map", "sinograms", "sinograms_json"]
    assert not [p for p in os.listdir(tmp_path / "subject") if p.startswith(".")]  # no temporary file left
    image = nib.load(paths["activity"])
    assert image.shape == (SHAPE[1], SHAPE[0], 1, 20)
    assert image.header.get_zooms()[:3] == pytest.approx((PIXEL, PIXEL, DEMO_SCANNER.plane_spacing))
    assert image.header.get_xyzt_units() == ("mm", "sec")
    # RAS+: row 0 of the array (anterior) sits at the largest y, column 0 at the smallest x
    np.testing.assert_allclose(np.asarray(image.dataobj)[:, 0, 0, 7], exam.activity[7, 0].numpy(), rtol=1e-6)
    corner = image.affine @ np.array([0.0, 0.0, 0.0, 1.0])
    assert corner[:2] == pytest.approx([-0.5 * (SHAPE[1] - 1) * PIXEL, 0.5 * (SHAPE[0] - 1) * PIXEL])
    np.testing.assert_array_equal(np.asarray(nib.load(paths["labels"]).dataobj)[:, :, 0].T, exam.phantom.labels)
    sidecar = json.loads(paths["activity_json"].read_text())
    assert sidecar["FrameDuration"][:6] == [60.0] * 5 + [120.0] and sidecar["Units"] == "kBq/mL"
    loaded = load_exam(tmp_path / "subject")
    assert loaded.geometry == exam.geometry and loaded.scanner == exam.scanner and loaded.schedule == exam.schedule
    torch.testing.assert_close(loaded.counts, exam.counts)
    torch.testing.assert_close(loaded.trues, exam.trues)
    torch.testing.assert_close(loaded.activity, exam.activity, rtol=1e-6, atol=1e-6)  # stored as float32
    np.testing.assert_allclose(loaded.parameters.k3, exam.parameters.k3)
    with pytest.raises(ValueError, match="not a saved exam"):
        load_exam(tmp_path)


# -- CUDA ----------------------------------------------------------------------------------------------------------


@CUDA
def test_cuda_matches_cpu(geometry, recon_problem):
    model, _, counts, _ = recon_problem
    x_cpu, info_cpu = mlem(counts, model, n_iter=5)
    model_cuda = model.to("cuda")
    x_cuda, info_cuda = mlem(counts.cuda(), model_cuda, n_iter=5)
    torch.testing.assert_close(x_cuda.cpu(), x_cpu, rtol=1e-6, atol=1e-9)
    cpu_model = full_model(geometry, dtype=torch.float32, n_frames=2)
    gpu_model = full_model(geometry, dtype=torch.float32, n_frames=2).to("cuda")
    x = torch.rand(1, 2, *SHAPE)
    torch.testing.assert_close(gpu_model(x.cuda()).cpu(), cpu_model(x), rtol=1e-4, atol=1e-4)
    model.to("cpu")

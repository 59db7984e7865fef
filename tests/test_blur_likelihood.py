"""Maximum-likelihood blur identification (``monai_ext.deconvolution.blur_likelihood``) on a synthetic Gaussian image."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from monai_ext.deconvolution.blur_likelihood import WhittleBlurLikelihood
from monai_ext.phantoms import blurred_power_law_scan, gaussian_kernel

SPACING_2X = (1.4, 1.4, 1.4)


def test_likelihood_identifies_the_blur_width_when_the_image_model_is_known():
    measured = blurred_power_law_scan(SPACING_2X, fwhm_voxels=4.0, exponent=3.0)
    likelihood = WhittleBlurLikelihood(measured, SPACING_2X)
    widths = (2.5, 4.0, 6.0)
    values = [likelihood.fit(torch.as_tensor(gaussian_kernel(w, 15)), exponent=3.0)[0] for w in widths]
    assert int(np.argmin(values)) == 1, values
    # with the exponent fitted too (the profile likelihood), the true width is still the most likely, and the true
    # kernel gives back the true exponent: the width and the exponent are not confounded when the model holds
    profile = [likelihood.fit(torch.as_tensor(gaussian_kernel(w, 15)))[0] for w in widths]
    assert int(np.argmin(profile)) == 1, profile
    _, spectrum = likelihood.fit(torch.as_tensor(gaussian_kernel(4.0, 15)))
    assert spectrum.exponent == pytest.approx(3.0, abs=0.3)


def test_likelihood_is_differentiable_in_the_kernel():
    likelihood = WhittleBlurLikelihood(blurred_power_law_scan(SPACING_2X, 3.0, 3.0, seed=1), SPACING_2X)
    kernel = torch.as_tensor(gaussian_kernel(3.0, 7)).requires_grad_(True)
    value = likelihood(kernel, torch.tensor(0.0), torch.tensor(3.0), torch.tensor(-10.0))
    value.backward()
    assert torch.isfinite(kernel.grad).all() and kernel.grad.abs().sum() > 0


def test_likelihood_rejects_bad_volumes():
    with pytest.raises(ValueError, match="3D"):
        WhittleBlurLikelihood(np.zeros((4, 4)), SPACING_2X)
    with pytest.raises(ValueError, match="finite"):
        WhittleBlurLikelihood(np.full((4, 4, 4), np.nan), SPACING_2X)

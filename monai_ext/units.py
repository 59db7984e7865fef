"""Constants shared by the packages."""

import math

__all__ = ["FWHM_PER_SIGMA"]

#: full width at half maximum of a Gaussian per standard deviation, ``2 sqrt(2 ln 2)`` (about 2.3548)
FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))

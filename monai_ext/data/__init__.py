"""Seeded, in-memory data sets for reconstruction bundles (no download)."""

from .case_tensors import case_tensors
from .cbct_datasets import SCANS, CBCTScans, cbct_geometry, cbct_scans
from .talk_regime import TALK_REGIME, full_sampling_views, talk_regime_geometry, textured_cbct_scans
from .ct_datasets import (
    SPLIT_SEEDS,
    CTScans,
    ellipse_ct_scans,
    ellipse_images,
    real_ct_images,
    read_ct_slice,
    real_ct_scans,
    simulate_scans,
)

__all__ = [
    "SPLIT_SEEDS",
    "CTScans",
    "ellipse_images",
    "real_ct_images",
    "read_ct_slice",
    "simulate_scans",
    "ellipse_ct_scans",
    "real_ct_scans",
    "SCANS",
    "CBCTScans",
    "cbct_geometry",
    "cbct_scans",
    "case_tensors",
    "TALK_REGIME",
    "full_sampling_views",
    "talk_regime_geometry",
    "textured_cbct_scans",
]

"""Neural fields for cone-beam CT: per-scan attenuation fields (NAF-style) and fields conditioned across scans
(CondCBNT / neural modulation fields style), differentiable ray rendering consistent with ``monai_ext.tomo``, and
their fitting."""

from .backbone_engine import ConditionedFields, ModulationFitStep, RandomScanSubsets, RayBatchStep, save_conditioned_backbone
from .encodings import FourierFeatures, MultiResolutionGrid, level_resolutions, make_encoding, sample_grid
from .fields import (
    AttenuationField,
    ModulatedAttenuationField,
    ModulatedScan,
    VoxelField,
    box_half_widths,
    parameter_mebibytes,
    sample_volume,
    voxel_centres,
)
from .fitting import fit_field, fit_field_to_volume, fit_modulation, train_conditioned_field
from .reconstruction import METHODS, NeuralFieldReconstruction, load_backbone, save_backbone, train_backbone
from .rendering import ConeBeamRays, ray_box_intersection, render_line_integrals, render_projections

__all__ = [
    "MultiResolutionGrid",
    "FourierFeatures",
    "level_resolutions",
    "make_encoding",
    "sample_grid",
    "AttenuationField",
    "ModulatedAttenuationField",
    "ModulatedScan",
    "VoxelField",
    "box_half_widths",
    "voxel_centres",
    "sample_volume",
    "parameter_mebibytes",
    "ConeBeamRays",
    "ray_box_intersection",
    "render_line_integrals",
    "render_projections",
    "fit_field",
    "fit_field_to_volume",
    "fit_modulation",
    "train_conditioned_field",
    "METHODS",
    "NeuralFieldReconstruction",
    "save_backbone",
    "load_backbone",
    "train_backbone",
    "ConditionedFields",
    "RandomScanSubsets",
    "RayBatchStep",
    "ModulationFitStep",
    "save_conditioned_backbone",
]

"""File input/output shared by the bundles: atomic NIfTI/PNG/JSON writers and projection files with sidecars."""

from .datalists import cases_on_output_grid, input_files, tomography_cases
from .training_sets import TrainingSet, read_geometry_file, training_geometry, training_set
from .pet_dicom import PETSeries, read_pet_series, write_pet_series
from .files import (
    atomic_path,
    prepare_output_dir,
    geometry_from_dict,
    geometry_to_dict,
    load_nifti,
    load_projections,
    projection_sidecar,
    save_json,
    save_run_summary,
    save_nifti,
    save_figure,
    save_png,
    save_projections,
)

__all__ = [
    "prepare_output_dir",
    "tomography_cases",
    "cases_on_output_grid",
    "input_files",
    "TrainingSet",
    "training_set",
    "training_geometry",
    "read_geometry_file",
    "atomic_path",
    "save_nifti",
    "load_nifti",
    "save_figure",
    "save_png",
    "save_json",
    "save_run_summary",
    "geometry_to_dict",
    "geometry_from_dict",
    "save_projections",
    "load_projections",
    "projection_sidecar",
    "PETSeries",
    "read_pet_series",
    "write_pet_series",
]

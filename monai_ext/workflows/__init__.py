"""Generic glue between MONAI engines, bundle configs and reconstruction tasks, shared by the bundles.

What serves one bundle only (its runners, comparisons, tables and figures) lives in that bundle's ``scripts/``."""

from .evaluation import evaluate_methods, hardware_name, reconstruct_all, references_of, write_comparison
from .methods import check_choice, count_parameters, load_method_weights, select_method, weights_name
from .case_geometry import CaseGeometryNetwork
from .configs import bundle_module, config_content, use_bundle_scripts
from .memory import measure_peak_memory, peak_resident_growth, release_freed_memory, resident_bytes
from .reconstruction import KeyedPrepareBatch, ReconstructionSummary, SaveReconstructiond, orthogonal_slices
from .runs import announce_example, check_bundle_run, check_overrides, root_cause
from .training import every_n_iterations, scaled_mse_loss
from .training_runs import FinalValidation, ProgressBar, attach_handlers, check_trained_geometry, RunState, SaveBestModel, read_record, stored_state_dict, record_path, resume_checkpoint, run_geometry, write_training_record

__all__ = [
    "FinalValidation",
    "check_bundle_run",
    "check_overrides",
    "root_cause",
    "announce_example",
    "CaseGeometryNetwork",
    "scaled_mse_loss",
    "every_n_iterations",
    "RunState",
    "attach_handlers",
    "resume_checkpoint",
    "SaveBestModel",
    "stored_state_dict",
    "write_training_record",
    "record_path",
    "read_record",
    "run_geometry",
    "check_trained_geometry",
    "ProgressBar",
    "KeyedPrepareBatch",
    "SaveReconstructiond",
    "ReconstructionSummary",
    "check_choice",
    "select_method",
    "load_method_weights",
    "weights_name",
    "count_parameters",
    "reconstruct_all",
    "evaluate_methods",
    "references_of",
    "write_comparison",
    "hardware_name",
    "config_content",
    "use_bundle_scripts",
    "bundle_module",
    "orthogonal_slices",
    "measure_peak_memory",
    "peak_resident_growth",
    "release_freed_memory",
    "resident_bytes",
]

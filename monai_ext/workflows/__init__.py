"""Glue between MONAI engines and reconstruction tasks, shared by the bundles' configs."""

from .comparison import compare_methods, evaluate_methods, markdown_table, noise_robustness, plot_noise_robustness, reconstruct_all
from .methods import check_choice, count_parameters, load_method_weights, select_method
from .configs import bundle_module, config_content, use_bundle_scripts
from .memory import measure_peak_memory, peak_resident_growth, release_freed_memory, resident_bytes
from .reconstruction import KeyedPrepareBatch, ReconstructionSummary, SaveReconstructiond, orthogonal_slices
from .volume_comparison import compare_volume_methods, evaluate_volume_methods, volume_table

__all__ = [
    "KeyedPrepareBatch",
    "SaveReconstructiond",
    "ReconstructionSummary",
    "check_choice",
    "select_method",
    "load_method_weights",
    "count_parameters",
    "reconstruct_all",
    "evaluate_methods",
    "compare_methods",
    "markdown_table",
    "noise_robustness",
    "plot_noise_robustness",
    "config_content",
    "use_bundle_scripts",
    "bundle_module",
    "orthogonal_slices",
    "measure_peak_memory",
    "peak_resident_growth",
    "release_freed_memory",
    "resident_bytes",
    "evaluate_volume_methods",
    "compare_volume_methods",
    "volume_table",
]

"""On/off settings from the command line: ``--flag false`` must mean false."""

from pathlib import Path

import numpy as np
import pytest

from monai_ext.flags import as_flag
from monai_ext.deconvolution.blind_deconvolution import BlindDeconvolutionConfig
from monai_ext.workflows import config_content


@pytest.mark.parametrize("value, expected", [(True, True), (False, False), (np.bool_(True), True), (1, True), (0, False),
                                             ("false", False), ("False", False), (" TRUE ", True), ("no", False), ("on", True)])
def test_as_flag_reads_the_usual_spellings(value, expected):
    assert as_flag(value, "x") is expected


@pytest.mark.parametrize("value", ["flase", "", 2, None, 0.5])
def test_as_flag_names_the_setting_it_refuses(value):
    with pytest.raises(ValueError, match="dicom_output must be true or false"):
        as_flag(value, "dicom_output")


def test_deconvolution_config_reads_command_line_strings():
    # fire passes `--deconvolution#residual false` as the string "false", which is truthy in Python
    config = BlindDeconvolutionConfig(residual="false", image_input="False", progress="true")
    assert (config.residual, config.image_input, config.progress) == (False, False, True)
    with pytest.raises(ValueError, match="residual"):
        BlindDeconvolutionConfig(residual="nope")


ROOT = Path(__file__).resolve().parents[1]
NOISE_FREE_CONFIGS = [f"bundles/{b}/configs/{c}.json" for b, cs in {
    "cbct_neural_field": ("inference", "train"), "cbct_learned_primal_dual": ("inference", "train"),
    "ct_learned_reconstruction": ("inference", "train", "tune")}.items() for c in cs]


@pytest.mark.parametrize("config", NOISE_FREE_CONFIGS)
def test_noise_free_false_string_keeps_the_noise(config):
    root = str(ROOT / config.rsplit("/configs/", 1)[0])
    config = str(ROOT / config)
    noisy = config_content(config, "scan_i0", bundle_root=root, noise_free="false")
    assert noisy is not None and noisy == config_content(config, "i0", bundle_root=root)
    assert config_content(config, "scan_i0", bundle_root=root, noise_free="true") is None


def test_as_flag_or_file_reads_flags_and_existing_files(tmp_path):
    from monai_ext.flags import as_flag_or_file

    checkpoint = tmp_path / "checkpoint_epoch=3.pt"
    checkpoint.write_bytes(b"")
    assert as_flag_or_file("", "resume") is False and as_flag_or_file(None, "resume") is False
    assert as_flag_or_file("false", "resume") is False and as_flag_or_file("True", "resume") is True
    assert as_flag_or_file(str(checkpoint), "resume") == checkpoint
    with pytest.raises(FileNotFoundError, match="resume names .*missing.pt, which does not exist; give a checkpoint or true"):
        as_flag_or_file(str(tmp_path / "missing.pt"), "resume", "a checkpoint")

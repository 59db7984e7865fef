"""configs/talk_regime.json of the two CBCT bundles (issue 21): layered on train.json and inference.json, they set
the benchmark's geometry and the models it trains and fits, without building any data set."""

from __future__ import annotations

from pathlib import Path

import pytest
from monai.bundle import ConfigParser

from monai_ext.data import TALK_REGIME, talk_regime_geometry

ROOT = Path(__file__).resolve().parents[1]


def _parser(bundle: str, config: str, **overrides) -> ConfigParser:
    root = ROOT / "bundles" / bundle
    parser = ConfigParser()
    parser.read_config([str(root / "configs" / f"{config}.json"), str(root / "configs" / "talk_regime.json")])
    parser.update({"bundle_root": str(root), "progress": False, "device": "$torch.device('cpu')", **overrides})
    return parser


@pytest.mark.parametrize("setting", ["sparse", "dense"])
def test_neural_field_inference_fits_at_the_benchmark_geometry(setting):
    parser = _parser("cbct_neural_field", "inference", method="per_scan", talk_setting=setting)
    network = parser.get_parsed_content("network_def")
    expected = talk_regime_geometry(setting)
    assert network.geometry == expected and network.output_shape == tuple(TALK_REGIME["volume_shape"])
    assert network.n_samples >= max(expected.image_shape)  # at least one sample per voxel crossed
    assert parser.get_parsed_content("field_args")["encoding_args"]["finest_resolution"] == expected.image_shape[0]
    assert parser.get_parsed_content("backbone_file").endswith(f"outputs/talk_regime/condcbnt_{setting}/models/condcbnt_{setting}.pt")
    assert parser.get_parsed_content("scan_i0") == TALK_REGIME["i0"]


def test_neural_field_training_and_inference_share_the_backbone_and_its_box():
    train = _parser("cbct_neural_field", "train")
    infer = _parser("cbct_neural_field", "inference", method="conditioned")
    assert train.get_parsed_content("backbone_file") == infer.get_parsed_content("backbone_file")
    assert train.get_parsed_content("geometry") == infer.get_parsed_content("geometry") == talk_regime_geometry("sparse")
    assert train.get_parsed_content("n_samples") == infer.get_parsed_content("fit")["conditioned"]["n_samples"]
    assert train.get_parsed_content("backbone_args")["encoding_args"]["finest_resolution"] == TALK_REGIME["volume_shape"][0]


def test_primal_dual_training_writes_per_method_and_setting():
    parser = _parser("cbct_learned_primal_dual", "train", method="invertible_lpd", talk_setting="sparse")
    assert parser.get_parsed_content("geometry") == talk_regime_geometry("sparse")
    assert parser.get_parsed_content("weights_file").endswith("outputs/talk_regime/invertible_lpd_sparse/models/invertible_lpd_sparse.pt")
    assert parser.get_parsed_content("i0") == TALK_REGIME["i0"]

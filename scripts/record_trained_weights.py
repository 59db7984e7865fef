"""Write the training record (``<weights>.training.json``) of a bundle's shipped weights that lack one.

Weights trained before records existed carry no geometry, so inference could not refuse to run them at another one.
This command rebuilds each learned method's ``train.json`` configuration (the geometry, ``I0`` and data set it was
trained with), loads the shipped weights, scores them on the validation set with ``validate#evaluator`` (the metric
training keeps) and writes the record beside them (``monai_ext.workflows.write_training_record``).

Usage:
    python scripts/record_trained_weights.py --bundle ct_learned_reconstruction
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def record_method(bundle: Path, method: str, weights: Path, overrides: dict | None = None) -> Path:
    """Score ``weights`` of ``method`` on the validation set of the bundle's ``train.json`` and write its record."""
    import torch
    from monai.bundle import ConfigParser

    from monai_ext.workflows import use_bundle_scripts, write_training_record

    use_bundle_scripts(bundle)
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "train.json"))
    parser["bundle_root"] = str(bundle)
    parser["device"] = "$torch.device('cpu')"
    parser["method"] = method
    parser["progress"] = False
    for key, value in (overrides or {}).items():
        parser[key] = value
    # score only: training's validation handlers would save the network over the shipped weights
    parser["validate#handlers"] = [{"_target_": "StatsHandler", "iteration_log": False}]
    network = parser.get_parsed_content("network")
    state = torch.load(weights, map_location="cpu", weights_only=True)
    network.load_state_dict(state["model"] if "model" in state else state)  # CheckpointSaver stores a lone object unwrapped
    evaluator = parser.get_parsed_content("validate#evaluator")
    evaluator.run()
    settings = {k: parser.get_parsed_content(k) for k in ("method", "max_epochs", "batch_size", "learning_rate", "seed")}
    settings["recorded_by"] = "scripts/record_trained_weights.py (the shipped weights scored again on the validation set)"
    validation = {"metric": evaluator.state.key_metric_name, "value": float(evaluator.state.metrics[evaluator.state.key_metric_name]), "epoch": None}
    return write_training_record(str(weights), parser.get_parsed_content("geometry"), parser.get_parsed_content("scan_i0"),
                                 parser.get_parsed_content("dataset_summary"), validation, settings)


def main(argv: list[str] | None = None) -> int:
    cli = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    cli.add_argument("--bundle", required=True, help="bundle name under bundles/")
    args = cli.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from monai.bundle import ConfigParser

    from monai_ext.workflows import record_path, weights_name

    bundle = ROOT / "bundles" / args.bundle
    config = ConfigParser.load_config_file(str(bundle / "configs" / "train.json"))
    written = []
    for method in config["learned_methods"]:
        weights = bundle / "models" / weights_name(method, config.get("model_method"))
        if weights.is_file() and not record_path(str(weights)).is_file():
            written.append(record_method(bundle, method, weights))
    noise_free = bundle / "models" / "noise_free"
    for weights in sorted(noise_free.glob("*.pt")) if noise_free.is_dir() else []:
        if not record_path(str(weights)).is_file():
            written.append(record_method(bundle, weights.stem, weights, {"noise_free": True}))
    for path in written:
        print(f"wrote {path.relative_to(ROOT)}")
    if not written:
        print("every weights file already has its record")
    return 0


if __name__ == "__main__":
    sys.exit(main())

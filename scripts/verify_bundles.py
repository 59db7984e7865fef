#!/usr/bin/env python
"""Apply the MONAI Model Zoo's premerge checks to every bundle, offline; exit 1 on any failure.

Checks, per bundle (each prints ``PASS``/``FAIL`` with the reasons):

- ``structure``: ``configs/metadata.json`` validates against the vendored MONAI schema, every config parses, the
  changelog describes the version, the required files exist (``scripts/package_bundles.py``'s checks);
- ``version``: the version is the newest of the changelog's;
- ``version_bumped``: the bundle's files are those recorded for its version in ``scripts/bundle_versions.json``
  (content hash), so no file changed without a version bump. After a bump, ``--record`` stores the new version
  and hash; a changed bundle whose version was not bumped cannot be recorded;
- ``json_format``: every JSON file is as the Zoo's pre-commit hook ``pretty-format-json --autofix --no-sort-keys
  --indent=4`` writes it;
- ``file_sizes``: no file above the Zoo's pre-commit limit (``check-added-large-files --maxkb=1024``);
- ``infer_ids`` / ``train_ids``: the ids of MONAI's ``InferProperties`` (``inference.json``) and
  ``TrainProperties`` (``train.json``, when the bundle trains) that MONAI marks required;
- ``network``: ``verify_net_in_out`` when ``network_def`` takes the metadata's ``image`` input, and the traced
  TorchScript export (``ckpt_export``) and the ``torch.export`` program each reproducing the eager network when
  ``inference.json`` names ``export_ckpt``;
- ``eval_metrics`` (with ``--run-examples``): the metadata's ``eval_metrics`` equal what the built-in example
  measures with ``inference.json`` (to the rounding they are written with).

Usage:
    python scripts/verify_bundles.py [--bundles NAME ...] [--run-examples] [--skip-network] [--json report.json]
    python scripts/verify_bundles.py --record            # after bumping a bundle's version
    python scripts/verify_bundles.py --record --amend    # further changes to a version not yet released
    python scripts/verify_bundles.py --update-eval-metrics --bundles NAME   # after retraining: metadata from the example
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import package_bundles  # noqa: E402

ROOT = package_bundles.ROOT
RECORD = ROOT / "scripts" / "bundle_versions.json"
MAX_KB = 1024  # the Zoo's check-added-large-files limit
CHECKS = ("structure", "version", "version_bumped", "json_format", "file_sizes", "infer_ids", "train_ids", "network", "eval_metrics")


def bundle_files(bundle: Path) -> list[Path]:
    """The files a bundle's zip carries (``package_bundles``' selection), sorted."""
    files = []
    for path in sorted(bundle.rglob("*")):
        rel = path.relative_to(bundle)
        if path.is_file() and not package_bundles.SKIP_DIRS.intersection(rel.parts) and rel.as_posix() != "models/model_info.json":
            files.append(path)
    return files


def content_hash(bundle: Path) -> str:
    """SHA-256 over the bundle's files (relative path and bytes)."""
    digest = hashlib.sha256()
    for path in bundle_files(bundle):
        digest.update(path.relative_to(bundle).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def _version_key(version: str) -> tuple:
    return tuple(int(part) if part.isdigit() else part for part in version.split("."))


def _metadata(bundle: Path) -> dict:
    return json.loads((bundle / "configs" / "metadata.json").read_text())


def check_structure(bundle: Path) -> list[str]:
    try:
        package_bundles.check_bundle(bundle, package_bundles.DEFAULT_SCHEMA)
    except package_bundles.BundleCheckError as err:
        return [str(err)]
    return []


def check_version(bundle: Path) -> list[str]:
    meta = _metadata(bundle)
    newest = max(meta.get("changelog", {}) or {"": ""}, key=_version_key)
    return [] if newest == meta["version"] else [f"version {meta['version']} is not the newest in the changelog ({newest})"]


def check_version_bumped(bundle: Path, record: dict) -> list[str]:
    meta, entry = _metadata(bundle), record.get(bundle.name)
    if entry is None:
        return [f"no record for this bundle in {RECORD.relative_to(ROOT)}: run scripts/verify_bundles.py --record"]
    if entry["version"] == meta["version"] and entry["sha256"] != content_hash(bundle):
        return [f"files changed since version {meta['version']} was recorded, but the version was not bumped"]
    if entry["version"] != meta["version"]:
        return [f"version {meta['version']} is not recorded (the record has {entry['version']}): run scripts/verify_bundles.py --record"]
    return []


def check_json_format(bundle: Path) -> list[str]:
    problems = []
    for path in bundle_files(bundle):
        if path.suffix == ".json":
            text = path.read_text()
            try:
                pretty = json.dumps(json.loads(text), indent=4, ensure_ascii=True) + "\n"
            except json.JSONDecodeError as err:
                problems.append(f"{path.relative_to(bundle)} is not valid JSON: {err}")
                continue
            if text != pretty:
                problems.append(f"{path.relative_to(bundle)} is not formatted as pretty-format-json --indent=4 --no-sort-keys writes it")
    return problems


def check_file_sizes(bundle: Path) -> list[str]:
    return [f"{p.relative_to(bundle)} is {p.stat().st_size / 1024:.0f} KB, above the Zoo's {MAX_KB} KB limit"
            for p in bundle_files(bundle) if p.stat().st_size > MAX_KB * 1024]


def _has_id(config: dict, config_id: str) -> bool:
    node = config
    for key in config_id.replace("::", "#").split("#"):
        if not isinstance(node, dict) or key not in node:
            return False
        node = node[key]
    return True


def _missing_ids(config_file: Path, properties: dict) -> list[str]:
    config = json.loads(config_file.read_text())
    return [spec["id"].replace("::", "#") for spec in properties.values() if spec.get("required") and not _has_id(config, spec["id"])]


def check_infer_ids(bundle: Path) -> list[str]:
    from monai.bundle.properties import InferProperties

    missing = _missing_ids(bundle / "configs" / "inference.json", InferProperties)
    return [f"inference.json lacks the InferProperties id(s) {', '.join(missing)}"] if missing else []


def check_train_ids(bundle: Path) -> list[str]:
    from monai.bundle.properties import TrainProperties

    train = bundle / "configs" / "train.json"
    if not train.is_file():
        return []
    missing = _missing_ids(train, TrainProperties)
    return [f"train.json lacks the TrainProperties id(s) {', '.join(missing)}"] if missing else []


def check_network(bundle: Path) -> list[str]:
    try:
        package_bundles.verify_network(bundle)
        with tempfile.TemporaryDirectory() as tmp:
            package_bundles.export_network(bundle, Path(tmp))
            package_bundles.export_program(bundle, Path(tmp))
    except Exception as err:  # verify_net_in_out and the export raise various types
        return [f"{type(err).__name__}: {err}"]
    return []


_EXAMPLE_METRICS = (("psnr_db_example", "mean_psnr_db", 2), ("ssim_example", "mean_ssim", 3))


def _example_summary(bundle: Path) -> dict | str:
    """The ``summary.json`` of the built-in example run with ``inference.json``, or the run's last error line."""
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(bundle / "configs" / "inference.json"),
               "--bundle_root", str(bundle), "--output_dir", out]
        result = subprocess.run(cmd, capture_output=True, text=True, cwd=out)
        if result.returncode != 0:
            return result.stderr.strip().splitlines()[-1] if result.stderr.strip() else str(result.returncode)
        return json.loads((Path(out) / "summary.json").read_text())


def _digits(value) -> int:
    return len(str(value).split(".")[1]) if "." in str(value) else 0


def check_eval_metrics(bundle: Path) -> list[str]:
    """Run the built-in example and compare its scores with the metadata's eval_metrics (to the written digits)."""
    metrics = _metadata(bundle).get("eval_metrics", {})
    summary = _example_summary(bundle)
    if isinstance(summary, str):
        return [f"the example run failed: {summary}"]
    problems = [] if "psnr_db_example" in metrics else ["metadata eval_metrics has no psnr_db_example"]
    for key, measured_key, _ in _EXAMPLE_METRICS:
        if key in metrics:
            written = metrics[key]
            digits = _digits(written)
            measured = summary.get(measured_key)
            if measured is None or round(measured, digits) != round(float(written), digits):
                problems.append(f"eval_metrics {key} {written} but the example measures {measured}")
    return problems


def update_eval_metrics(bundle: Path) -> dict:
    """Write what the built-in example measures into the metadata's ``eval_metrics`` (``psnr_db_example`` to 0.01 dB,
    ``ssim_example`` to 0.001, or the digits already written), so that the metadata is updated by a command after a
    retraining, not by hand; returns the values written. The version is left to the author (``version_bumped``
    then says that it must be bumped).

    Raises:
        RuntimeError: the example run failed (its last error line).
    """
    summary = _example_summary(bundle)
    if isinstance(summary, str):
        raise RuntimeError(f"{bundle.name}: the example run failed: {summary}")
    path = bundle / "configs" / "metadata.json"
    meta = json.loads(path.read_text())
    metrics = meta.setdefault("eval_metrics", {})
    written = {}
    for key, measured_key, default_digits in _EXAMPLE_METRICS:
        if summary.get(measured_key) is not None:
            digits = _digits(metrics[key]) if key in metrics else default_digits
            metrics[key] = written[key] = round(float(summary[measured_key]), digits)
    path.write_text(json.dumps(meta, indent=4, ensure_ascii=True) + "\n")
    return written


def verify(bundle: Path, record: dict, network: bool = True, examples: bool = False) -> dict[str, list[str]]:
    """Every check's problems for ``bundle`` (an empty list: passed); ``network`` and ``eval_metrics`` are left out
    unless asked for."""
    results = {
        "structure": check_structure(bundle),
        "version": check_version(bundle),
        "version_bumped": check_version_bumped(bundle, record),
        "json_format": check_json_format(bundle),
        "file_sizes": check_file_sizes(bundle),
        "infer_ids": check_infer_ids(bundle),
        "train_ids": check_train_ids(bundle),
    }
    if network:
        results["network"] = check_network(bundle)
    if examples:
        results["eval_metrics"] = check_eval_metrics(bundle)
    return results


def record_versions(bundles: list[Path], record: dict, amend: bool = False) -> dict:
    """Store each bundle's version and content hash; refuse a changed bundle whose version was not bumped, unless
    ``amend`` (the recorded version was never released: further changes before its release)."""
    for bundle in bundles:
        meta, entry, digest = _metadata(bundle), record.get(bundle.name), content_hash(bundle)
        if entry and entry["version"] == meta["version"] and entry["sha256"] != digest and not amend:
            raise SystemExit(f"{bundle.name}: files changed but version {meta['version']} was already recorded: bump the version "
                             "(with a changelog line) first, or --amend if that version was never released.")
        record[bundle.name] = {"version": meta["version"], "sha256": digest}
    from monai_ext.io import save_json

    save_json(dict(sorted(record.items())), RECORD)
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundles", nargs="*", help="bundle names (default: every folder under bundles/)")
    parser.add_argument("--record", action="store_true", help="record each bundle's version and content hash")
    parser.add_argument("--amend", action="store_true", help="with --record: re-record a version that was never released")
    parser.add_argument("--run-examples", action="store_true", help="also run each built-in example and check eval_metrics")
    parser.add_argument("--update-eval-metrics", action="store_true",
                        help="run each built-in example and write its scores into the metadata's eval_metrics (after a retraining)")
    parser.add_argument("--skip-network", action="store_true", help="leave out verify_net_in_out and the export")
    parser.add_argument("--json", type=Path, help="also write the report as JSON")
    args = parser.parse_args(argv)
    names = args.bundles or sorted(p.name for p in (ROOT / "bundles").iterdir() if p.is_dir())
    bundles = [ROOT / "bundles" / n for n in names]
    record = json.loads(RECORD.read_text()) if RECORD.is_file() else {}
    if args.record:
        record_versions(bundles, record, amend=args.amend)
        print(f"recorded {', '.join(names)} -> {RECORD.relative_to(ROOT)}")
        return 0
    if args.update_eval_metrics:
        for bundle in bundles:
            print(f"{bundle.name}: eval_metrics {update_eval_metrics(bundle)} written; bump its version, then --record")
        return 0
    report, failed = {}, False
    for bundle in bundles:
        results = verify(bundle, record, network=not args.skip_network, examples=args.run_examples)
        report[bundle.name] = results
        for check, problems in results.items():
            print(f"{bundle.name:38s} {check:15s} {'PASS' if not problems else 'FAIL'}")
            for problem in problems:
                print(f"{'':55s}- {problem}")
            failed |= bool(problems)
    if args.json:
        from monai_ext.io import save_json

        save_json(report, args.json)
    print("all checks passed" if not failed else "some checks FAILED")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

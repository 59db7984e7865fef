"""The Python examples of the README run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_examples():
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index):
    exec(compile(BLOCKS[index], f"README.md python block {index}", "exec"), {"__name__": "readme_example"})


def _documented_runs():
    """Every ``python -m monai.bundle run`` command in the README and the bundles' docs, with its file: ``(doc,
    argv)``, ``$B`` (set by ``B=...`` lines before it) and ``$PWD`` substituted, bundle docs relative to their bundle."""
    import shlex

    root = README.parent
    runs = []
    for doc in [README, *sorted((root / "bundles").glob("*/docs/README.md"))]:
        bundle_var = None
        for block in re.findall(r"```bash\n(.*?)```", doc.read_text(), flags=re.S):
            for line in block.replace("\\\n", " ").splitlines():
                line = line.strip()
                if line.startswith("B="):
                    bundle_var = line[2:].split()[0]
                if line.startswith("#") or "monai.bundle run" not in line:
                    continue
                line = line.replace("$B", bundle_var or "$B").replace("$PWD", str(root))
                argv = shlex.split(line.split(" #")[0])
                cwd = root if doc == README or bundle_var else doc.parents[1]
                runs.append((doc, argv, cwd))
    return runs


def test_documented_bundle_commands_name_only_config_keys():
    """Every override in a documented command names a key of the configs it runs (a misspelt or stale one would be
    refused by monai_ext.workflows.check_bundle_run at the start of the run)."""
    import json

    from monai_ext.workflows.runs import _argv_overrides, _config_files, check_overrides

    runs = _documented_runs()
    assert len(runs) > 20
    problems = []
    for doc, argv, cwd in runs:
        overrides = _argv_overrides(argv)
        if "config_file" not in overrides:
            continue
        config = {}
        for name in _config_files(overrides["config_file"]):
            path = Path(name) if Path(name).is_absolute() else cwd / name
            if not path.is_file():
                problems.append(f"{doc.relative_to(README.parent)}: {name} does not exist")
                break
            config.update(json.loads(path.read_text()))
        else:
            try:
                check_overrides(overrides, config, " + ".join(_config_files(overrides["config_file"])))
            except ValueError as err:
                problems.append(f"{doc.relative_to(README.parent)}: {err}")
    assert not problems, "\n".join(problems)

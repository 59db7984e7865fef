"""Checks that a bundle run makes at its start, so that what goes wrong is said plainly.

- :func:`check_bundle_run` (the first item of every config's ``initialize``): refuses command-line overrides
  that name no key of the run's configs (``--datset_dir``, ``--method`` on a bundle without methods), before any
  computation, suggesting the nearest key; and makes a failed run end with its real reason. MONAI wraps every
  error of a config expression in ``RuntimeError: Failed to evaluate ConfigExpression`` and prints the
  expression last, so the reason sits tens of lines above the end; after the traceback, the last line printed is
  then ``Error: <the original exception>``.
- :func:`announce_example`: a WARNING, at the start and again at the end of a run, when a bundle ran its built-in
  example because no input was given.
"""

from __future__ import annotations

import atexit
import difflib
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["check_bundle_run", "check_overrides", "root_cause", "announce_example"]

# keyword arguments of ``monai.bundle run`` itself, which are not config keys
_RUN_ARGUMENTS = frozenset({"config_file", "meta_file", "logging_file", "run_id", "init_id", "final_id", "tracking", "args_file",
                            "workflow_name", "workflow_type", "properties_path"})
_state = {"failed": False, "hook": False}


def root_cause(error: BaseException) -> BaseException:
    """The innermost exception of ``error``'s chain (``raise ... from``, or raised while handling another)."""
    seen = {id(error)}
    while True:
        inner = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
        if inner is None or id(inner) in seen:
            return error
        seen.add(id(inner))
        error = inner


def _excepthook(kind, error, traceback) -> None:
    _state["failed"] = True
    sys.__excepthook__(kind, error, traceback)
    cause = root_cause(error)
    if cause is not error:
        message = str(cause).strip() or "(no message)"
        print(f"Error: {type(cause).__name__}: {message}", file=sys.stderr, flush=True)


def _install_hook() -> None:
    if not _state["hook"]:
        sys.excepthook = _excepthook
        _state["hook"] = True


def _is_bundle_cli() -> bool:
    """Whether this process is ``python -m monai.bundle ...``."""
    main = Path(sys.argv[0]).as_posix() if sys.argv else ""
    return main.endswith("monai/bundle/__main__.py")


def _argv_overrides(argv: Sequence[str]) -> dict[str, str]:
    """``{key: value}`` of the ``--key value`` / ``--key=value`` pairs after ``run`` on a ``monai.bundle`` command line."""
    args = list(argv)
    if "run" in args:
        args = args[args.index("run") + 1:]
    pairs, i = {}, 0
    while i < len(args):
        token = args[i]
        if token.startswith("--") and len(token) > 2:
            key, _, value = token[2:].partition("=")
            if not _ and i + 1 < len(args) and not args[i + 1].startswith("--"):
                value, i = args[i + 1], i + 1
            pairs[key.replace("-", "_") if key.replace("-", "_") in _RUN_ARGUMENTS else key] = value
        i += 1
    return pairs


def _config_files(value: str) -> list[str]:
    from fire import parser

    parsed = parser.DefaultParseValue(value)
    if isinstance(parsed, (list, tuple)):
        return [str(v) for v in parsed]
    return [s for s in str(parsed).split(",") if s]


def _has_path(config, keys: list[str]) -> bool:
    node = config
    for key in keys:
        if isinstance(node, dict) and key in node:
            node = node[key]
        elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
            node = node[int(key)]
        else:
            return False
    return True


def check_overrides(overrides: dict[str, object], config: dict, config_names: str = "the config") -> None:
    """Raise if an override names no key of ``config`` (nested keys as ``a#b`` or ``a::b``).

    Raises:
        ValueError: the unknown keys, with the nearest known key for each.
    """
    unknown = []
    for key in overrides:
        if key in _RUN_ARGUMENTS or key.startswith("_meta_"):
            continue
        parts = key.replace("::", "#").split("#")
        if not _has_path(config, parts):
            close = difflib.get_close_matches(parts[0], list(config), n=1) if len(parts) == 1 else []
            unknown.append(f"--{key}" + (f" (did you mean --{close[0]}?)" if close else ""))
    if unknown:
        raise ValueError(f"unknown override(s) {', '.join(unknown)}: {config_names} has no such key, so it would be ignored. "
                         "Check the spelling against the bundle's docs/README.md.")


def check_bundle_run(argv: Sequence[str] | None = None) -> None:
    """Make a bundle run's failures end with their reason, and refuse command-line overrides that name no config key.

    Overrides are read from the command line of ``python -m monai.bundle run`` (or ``argv``), and compared with
    the keys of the configs it names (``--config_file``, and the pairs of an ``--args_file``). A run started from
    Python (``monai.bundle.run(...)``) is not checked: its keyword arguments are not on the command line.

    Raises:
        ValueError: an override that names no key of the configs.
    """
    _install_hook()
    if argv is None:
        if not _is_bundle_cli():
            return
        argv = sys.argv
    overrides = _argv_overrides(argv)
    from monai.bundle import ConfigParser

    if "args_file" in overrides:
        extra = ConfigParser.load_config_file(overrides["args_file"])
        overrides.update({k: v for k, v in extra.items() if k not in overrides})
    if "config_file" not in overrides:
        return
    files = _config_files(str(overrides["config_file"]))
    config: dict = {}
    for file in files:
        loaded = ConfigParser.load_config_file(file)
        config.update(loaded if isinstance(loaded, dict) else {})
    check_overrides(overrides, config, " + ".join(Path(f).name for f in files))


def announce_example(using_example: bool, bundle: str, key: str = "dataset_dir") -> bool:
    """Log a WARNING that the built-in example is being run (no ``key`` given), now and again when the run ends.

    Returns:
        ``using_example``.
    """
    if not using_example:
        return False
    logger = logging.getLogger(bundle)
    message = (f"{bundle}: no --{key} given, so this run reconstructs the bundle's BUILT-IN EXAMPLE, not your data; "
               f"give --{key} <folder or datalist JSON> to reconstruct your own cases.")
    logger.warning(message)
    if not _is_bundle_cli():
        return True

    def _again() -> None:
        if not _state["failed"] and sys.exc_info()[0] is None:
            logger.warning(message)

    atexit.register(_again)
    return True

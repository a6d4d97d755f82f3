"""Command-line interface: ``explainers COMMAND --help``."""

from __future__ import annotations

import importlib
import sys

from explainers.cli.app import app

# Each module registers its commands on ``app`` when imported.
_COMMAND_MODULES = ("info", "data", "explain", "evaluate", "pretrain", "leta", "demo", "benchmark", "importer")


def _load_commands() -> None:
    for name in _COMMAND_MODULES:
        importlib.import_module(f"explainers.cli.{name}")


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors print one line on stderr and exit with status 2, no traceback."""
    from explainers.errors import ExplainersError

    _load_commands()
    try:
        app(args=argv, prog_name="explainers")
    except ExplainersError as exc:
        print(f"explainers: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("explainers: interrupted", file=sys.stderr)
        sys.exit(130)


__all__ = ["app", "main"]

"""Command-line interface: ``explainers COMMAND --help``."""

from __future__ import annotations

import importlib
import os
import signal
import sys

from explainers.cli.app import app

# Each module registers its commands on ``app`` when imported.
_COMMAND_MODULES = ("info", "data", "explain", "evaluate", "pretrain", "leta", "demo", "benchmark", "importer")

INTERRUPTED = (
    "explainers: interrupted; outputs under their final names are untouched, rerun the same command to "
    "resume"
)


def _load_commands() -> None:
    for name in _COMMAND_MODULES:
        importlib.import_module(f"explainers.cli.{name}")


def _caused_by_interrupt(exc: BaseException) -> bool:
    """Typer turns Ctrl-C into a silent ``exit 130``; find the KeyboardInterrupt behind it."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, KeyboardInterrupt):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def _redeliver_swallowed_interrupts() -> None:
    """Ctrl-C that lands while Python runs a destructor or a weakref callback (garbage collection) is
    printed as "Exception ignored … KeyboardInterrupt" and otherwise lost: the run would go on. Deliver
    such an interrupt again, so that it stops the command at the next ordinary line of Python."""
    from explainers.errors import redeliver_interrupt_later

    previous = sys.unraisablehook

    def hook(unraisable: sys.UnraisableHookArgs) -> None:
        if unraisable.exc_type is not None and issubclass(unraisable.exc_type, KeyboardInterrupt):
            redeliver_interrupt_later()
            return
        previous(unraisable)

    sys.unraisablehook = hook


def _fail(message: str) -> None:
    print(f"explainers: error: {message}", file=sys.stderr)
    sys.exit(2)


def main(argv: list[str] | None = None) -> None:
    """Entry point, and the one error funnel: user errors (:class:`ExplainersError`) and failed file
    operations print one line on stderr and exit with status 2, no traceback; Ctrl-C prints one line
    and exits 130. ``EXPLAINERS_DEBUG=1`` shows the traceback as well."""
    from explainers.errors import ExplainersError, describe_os_error

    _load_commands()
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        _redeliver_swallowed_interrupts()
    debug = os.environ.get("EXPLAINERS_DEBUG", "") not in ("", "0")
    try:
        app(args=argv, prog_name="explainers")
    except ExplainersError as exc:
        if debug:
            raise
        _fail(" ".join(str(exc).split("\n")))
    except OSError as exc:
        # A file operation that the library did not anticipate (a path that cannot be written, a
        # missing permission): still a user-facing problem with the path, not a crash.
        if debug:
            raise
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        _fail(f"{describe_os_error(exc)}{where}")
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        sys.exit(130)
    except SystemExit as exc:
        if exc.code == 130 and _caused_by_interrupt(exc):
            print(INTERRUPTED, file=sys.stderr)
        raise


__all__ = ["app", "main"]

"""User-facing errors: the CLI prints these as one line, without a traceback (exit status 2).

Library code raises them at the source, chaining the underlying exception (``raise ... from exc``) where
there is one, so a library user can still see what the operating system or a decoder said."""

from __future__ import annotations

import os
import signal
import threading
import time


class ExplainersError(Exception):
    """Bad input or an unsupported request, with a message saying what was wrong and what to do."""


class DatasetError(ExplainersError):
    """A dataset spec, folder, file or label list that cannot be used."""


class ModelError(ExplainersError):
    """A model spec, directory or architecture that cannot be loaded or adapted."""


class OutputError(ExplainersError):
    """An output that cannot be written (full disk, missing permission, a file where a folder is due) or
    that another run is writing. Nothing is left under the output's final name when this is raised."""


class InputError(ExplainersError):
    """Images handed to a method that cannot be right: NaN/inf pixels or values outside [0, 1]."""


def redeliver_interrupt_later(delay: float = 0.05) -> None:
    """Send this process SIGINT again shortly, from a helper thread.

    Ctrl-C that lands while Python runs a destructor or a garbage-collection callback is reported as
    "Exception ignored … KeyboardInterrupt" and otherwise lost. Re-raising it at once would land in the
    same place; a moment later the main thread is back in ordinary code and the interrupt stops it."""
    def send() -> None:
        time.sleep(delay)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=send, name="explainers-redeliver-sigint", daemon=True).start()


def describe_os_error(exc: BaseException) -> str:
    """A short reason for a failed file operation: ``No space left on device`` rather than a repr."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]

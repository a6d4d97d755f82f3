"""Reading a saved folder's ``config.json`` (LTE and LETA explainers, linear probes): one set of checks and
messages for a folder that is not one, a file that is not JSON, another format, or a newer format version."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from explainers.errors import ModelError

CONFIG_NAME = "config.json"


def read_folder_config(
    directory: Path,
    *,
    what: str,
    format_name: str,
    newest_version: int,
    version_key: str = "version",
    how_to_make: str = "",
) -> dict[str, Any]:
    """The parsed ``config.json`` of ``directory``, refused with one :class:`ModelError` line unless it is
    ``what`` (e.g. "an LTE explainer checkpoint") in format ``format_name`` at a version this library reads.
    ``how_to_make`` is appended to the message for a folder without a config (e.g. the command that makes one)."""
    file = directory / CONFIG_NAME
    if not directory.is_dir() or not file.is_file():
        hint = f"; {how_to_make}" if how_to_make else ""
        raise ModelError(f"{directory} is not {what} (no {CONFIG_NAME}){hint}")
    try:
        payload = json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise ModelError(f"{file} is not valid JSON ({exc})") from None
    if not isinstance(payload, dict) or payload.get("format") != format_name:
        found = payload.get("format") if isinstance(payload, dict) else None
        raise ModelError(f"{directory} is not {what} (config format {found!r}, expected {format_name!r})")
    version = payload.get(version_key, 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise ModelError(f"{file}: {version_key} must be an integer, got {version!r}")
    if version > newest_version:
        raise ModelError(
            f"{directory} was written by a newer explainers ({what} format {version}, this library reads up "
            f"to {newest_version}); upgrade explainers"
        )
    return payload

"""User-facing errors: the CLI prints these as one line, without a traceback."""

from __future__ import annotations


class ExplainersError(Exception):
    """Bad input or an unsupported request, with a message saying what was wrong and what to do."""


class DatasetError(ExplainersError):
    """A dataset spec, folder, file or label list that cannot be used."""


class ModelError(ExplainersError):
    """A model spec, directory or architecture that cannot be loaded or adapted."""

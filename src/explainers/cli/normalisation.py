"""``--mean`` / ``--std``: the explainee's input normalisation, for models that do not record it."""

from __future__ import annotations

import typer

from explainers.errors import ExplainersError

MEAN_OPTION = typer.Option(
    None,
    "--mean",
    help="Per-channel input mean R,G,B (e.g. 0.485,0.456,0.406); needed when the explainee records none.",
)
STD_OPTION = typer.Option(
    None,
    "--std",
    help="Per-channel input std R,G,B (e.g. 0.229,0.224,0.225); needed when the explainee records none.",
)


def parse_channels(text: str | None, flag: str) -> list[float] | None:
    """``"0.485,0.456,0.406"`` (commas and/or spaces) → three floats; None stays None."""
    if text is None:
        return None
    parts = [p for p in text.replace(",", " ").split() if p]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != 3:
        raise ExplainersError(f"{flag} expects three numbers R,G,B (e.g. {flag} 0.5,0.5,0.5), got {text!r}")
    return values


def normalisation_kwargs(mean: str | None, std: str | None) -> dict[str, list[float] | None]:
    """``load_explainee`` keyword arguments from the two options (both or neither)."""
    if (mean is None) != (std is None):
        raise ExplainersError("--mean and --std go together: pass both")
    return {"mean": parse_channels(mean, "--mean"), "std": parse_channels(std, "--std")}

"""``explainers import ...``: turn checkpoints made by other code into ours."""

from __future__ import annotations

from pathlib import Path

import typer

from explainers.cli.app import import_app


@import_app.command("lte-reference")
def import_lte_reference_command(
    checkpoint: Path = typer.Argument(..., help="A released pLTE checkpoint (.ckpt) of the LTE reference code."),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Folder to write: the pLTE explainer, and the explainee in OUT/explainee."
    ),
    class_mode: str = typer.Option(
        None, "--class-mode", help="predicted or target (default: the word in the file name)."
    ),
    num_heads: int = typer.Option(
        None, "--num-heads", help="Attention heads (default: hidden size / 64, as in ViT-S/B/L)."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty OUT."),
) -> None:
    """Import a released LTE reference pLTE checkpoint: writes OUT (for --explainer) and OUT/explainee
    (for --explainee). The file is read with weights_only: nothing but tensors and plain values is unpickled."""
    from explainers.learned.lte.reference_import import import_lte_reference

    result = import_lte_reference(checkpoint, out, class_mode=class_mode, num_heads=num_heads, overwrite=overwrite)
    arch = result.architecture
    epoch = result.training.get("epoch")
    typer.echo(
        f"wrote {result.explainer_dir} (pLTE explainer, class mode {result.class_mode}"
        + (f", epoch {epoch}" if epoch is not None else "")
        + f") and {result.explainee_dir} (ViT, hidden {arch.hidden_size}, {arch.num_layers} layers, "
        f"patch {arch.patch_size}, {arch.image_size}×{arch.image_size}, {arch.num_classes} classes)"
    )
    typer.echo(
        f"next: explainers explain --method plte --explainer {result.explainer_dir} "
        f"--explainee {result.explainee_dir} --data folder:IMAGES --out maps.h5"
    )

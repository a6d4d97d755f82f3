"""Run by tests/test_sharded.py under ``torchrun --nproc_per_node 2`` (and once in one process): explain a
tiny VOC folder with a deterministic test method, then evaluate the mask file."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import evalkit  # noqa: F401  (registers the test-center method)
from explainers.cli import main


def cli(args: list[str]) -> None:
    """The CLI in this process; only a failing exit status propagates."""
    try:
        main(args)
    except SystemExit as exc:
        if exc.code:
            raise


def run(model: str, voc: str, work: str) -> None:
    common = ["--explainee", model, "--data", f"voc:{voc}", "--no-progress"]
    cli(["explain", "--method", "test-center", *common, "--out", f"{work}/maps.h5", "--batch-size", "1"])
    cli(
        [
            "evaluate",
            *common,
            "--masks",
            f"{work}/maps.h5",
            "--out",
            f"{work}/eval",
            "--batch-size",
            "1",
            "--metrics",
            "pos,neg,deletion,insertion,patch-deletion,adp,pic,pixel-accuracy,miou,map",
        ]
    )


if __name__ == "__main__":
    import torch

    torch.set_num_threads(1)
    run(*sys.argv[1:4])

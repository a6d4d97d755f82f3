"""The heatmap demo: any registered method, non-RGB inputs, file layout and overlay."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import build_hf_model
from explainers.cli import main
from explainers.heatmap import overlay

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models (conftest.one_thread)


@pytest.fixture
def image_folder(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8), "RGB").save(folder / "rgb.png")
    Image.fromarray(rng.integers(0, 255, (20, 20), dtype=np.uint8), "L").save(folder / "gray.png")
    Image.fromarray(rng.integers(0, 255, (32, 32, 4), dtype=np.uint8), "RGBA").save(folder / "alpha.png")
    Image.fromarray(rng.integers(0, 255, (30, 30, 3), dtype=np.uint8), "RGB").convert("P").save(
        folder / "pal.gif"
    )
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_overlay_blends_jet_at_alpha_and_draws_the_label():
    image = torch.zeros(3, 8, 8)
    heat = torch.zeros(8, 8)
    heat[0, 0] = 1.0
    plain = np.asarray(overlay(image, heat, alpha=0.4))
    # Black image: the pixel is 0.4 × jet(value); jet(1) is dark red, jet(0) dark blue.
    assert plain[0, 0, 0] > 0 and plain[0, 0, 2] == 0
    assert plain[7, 7, 2] > 0 and plain[7, 7, 0] == 0
    labelled = np.asarray(overlay(image, heat, alpha=0.4, label="disk", scale=8))
    assert labelled.shape == (64, 64, 3)
    assert (labelled[:16, :40] > 200).all(axis=-1).any()  # white (anti-aliased) text, top-left corner


@pytest.mark.parametrize("method", ["random", "rollout"])
def test_heatmap_command_with_any_method(tmp_path, image_folder, capsys, method):
    explainee = tmp_path / "vit"
    build_hf_model(num_labels=3).save_pretrained(explainee)
    out = tmp_path / "output"
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "heatmap",
                "--method",
                method,
                "--explainee",
                str(explainee),
                "--images",
                str(image_folder),
                "--out",
                str(out),
                "--scale",
                "2",
                "--batch-size",
                "3",
            ]
        )
    assert exc.value.code in (0, None), capsys.readouterr().err
    names = ["alpha", "gray", "pal", "rgb"]
    assert sorted(p.stem for p in (out / "image").iterdir()) == names
    assert sorted(p.name for p in (out / "explanation").iterdir()) == [f"heatmap-{n}.png" for n in names]
    for n in names:
        with Image.open(out / "image" / f"{n}.png") as img:
            assert img.mode == "RGB" and img.size == (64, 64)  # 32×32 explainee input, scale 2


def test_heatmap_refuses_an_empty_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "heatmap",
                "--method",
                "random",
                "--images",
                str(tmp_path / "empty"),
                "--out",
                str(tmp_path / "o"),
            ]
        )
    assert exc.value.code == 2 and "no images" in capsys.readouterr().err

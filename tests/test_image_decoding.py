"""Image decoding: every Pillow mode a dataset folder may hold becomes the right RGB values in [0, 1]
(16-bit scaling in particular), and files that cannot be decoded are one clear DatasetError."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from explainers.data.base import load_image
from explainers.errors import DatasetError


def write_png16(path, array: np.ndarray) -> None:
    """A 16-bit PNG (grey: H×W, colour type 0; RGB: H×W×3, colour type 2) written byte by byte, so the
    test does not depend on how Pillow writes 16-bit files."""
    h, w = array.shape[:2]
    colour = 0 if array.ndim == 2 else 2
    rows = array.reshape(h, -1).astype(">u2")
    raw = b"".join(b"\x00" + rows[y].tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 16, colour, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)


def test_16_bit_grey_png_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 256, 1000], [32768, 65000, 65535]], dtype=np.uint16)
    write_png16(tmp_path / "g.png", values)
    image = load_image(tmp_path / "g.png")
    assert image.shape == (3, 2, 3) and image.dtype == torch.float32
    expected = torch.from_numpy(values.astype(np.float32) / 65535.0)
    for c in range(3):
        torch.testing.assert_close(image[c], expected)
    assert image.max() == 1.0 and 0.49 < image[0, 1, 0] < 0.51  # was all white (1.0) before


def test_16_bit_rgb_png_keeps_its_colours(tmp_path):
    rng = np.random.default_rng(0)
    values = rng.integers(0, 65536, (3, 4, 3)).astype(np.uint16)
    write_png16(tmp_path / "c.png", values)
    image = load_image(tmp_path / "c.png").permute(1, 2, 0).numpy()
    # Pillow keeps the high byte of each 16-bit sample: within 8-bit precision of the exact value.
    exact = values.astype(np.float64) / 65535.0
    assert np.abs(image - exact).max() < 1 / 255 and np.abs(image - exact).mean() < 0.5 / 255 + 1e-3


def test_cmyk_jpeg_becomes_the_same_rgb(tmp_path):
    rgb = np.zeros((16, 16, 3), dtype=np.uint8)
    rgb[:8] = (200, 30, 60)
    rgb[8:] = (20, 160, 240)
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=100)
    with Image.open(tmp_path / "cmyk.jpg") as img:
        assert img.mode == "CMYK"
    image = load_image(tmp_path / "cmyk.jpg").permute(1, 2, 0).numpy()
    assert np.abs(image * 255 - rgb).max() < 12  # JPEG loss only; not inverted, not black


def test_animated_gif_gives_its_first_frame(tmp_path):
    frames = [Image.new("RGB", (5, 4), colour) for colour in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)
    image = load_image(tmp_path / "a.gif")
    assert image.shape == (3, 4, 5)
    torch.testing.assert_close(image[:, 0, 0], torch.tensor([1.0, 0.0, 0.0]))


@pytest.mark.parametrize(
    ("mode", "value", "expected"),
    [
        ("RGB", (10, 20, 30), (10 / 255, 20 / 255, 30 / 255)),
        ("L", 51, (0.2, 0.2, 0.2)),
        ("1", 1, (1.0, 1.0, 1.0)),
        ("RGBA", (255, 255, 255, 0), (0.0, 0.0, 0.0)),  # fully transparent: composited on black
        ("LA", (255, 255), (1.0, 1.0, 1.0)),
    ],
)
def test_one_pixel_images_of_every_mode(tmp_path, mode, value, expected):
    Image.new(mode, (1, 1), value).save(tmp_path / "p.png")
    image = load_image(tmp_path / "p.png")
    assert image.shape == (3, 1, 1)
    torch.testing.assert_close(image[:, 0, 0], torch.tensor(expected, dtype=torch.float32))


def test_decompression_bomb_is_one_dataset_error(tmp_path, monkeypatch):
    Image.new("L", (64, 64)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64×64 = 4096 > 2 × 1000: a "bomb"
    with pytest.raises(DatasetError, match=r"refusing to decode .*big\.png.*decompression bomb"):
        load_image(tmp_path / "big.png")


def test_undecodable_files_are_dataset_errors(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(DatasetError, match="cannot decode image"):
        load_image(tmp_path / "bad.png")
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(DatasetError):
        load_image(tmp_path / "dir.png")

"""Re-create docs/images/data_priors.png: an image, its mask, the masked input, and the edge + gray
priors in both structure modes. Run from the repository root:

    .venv/bin/python docs/images/make_data_figure.py

Uses only files that ship with scikit-image (chelsea.png, CC0) and a seeded generated mask, so the
picture is the same on every machine.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import skimage
from PIL import Image, ImageDraw

from ctsdg.conventions import hole_to_known, signed_to_uint8, uint8_to_signed
from ctsdg.data import compute_structure, read_image, resize_bilinear
from ctsdg.masks import IrregularMaskGenerator, hole_ratio

SIZE = 256
LABEL = 22


def tile(arr: np.ndarray, label: str) -> Image.Image:
    """uint8 (H, W) or (H, W, 3) -> a labelled RGB tile."""
    im = Image.fromarray(arr).convert("RGB")
    out = Image.new("RGB", (SIZE, SIZE + LABEL), "white")
    out.paste(im, (0, LABEL))
    ImageDraw.Draw(out).text((6, 5), label, fill="black")
    return out


def main(out_path: str = "docs/images/data_priors.png") -> None:
    photo = Path(skimage.__path__[0]) / "data" / "chelsea.png"
    image = uint8_to_signed(resize_bilinear(read_image(photo), SIZE, SIZE))  # preset "official"
    hole = IrregularMaskGenerator((0.2, 0.4))(0, np.random.default_rng(3), SIZE, SIZE)
    known = hole_to_known(hole)
    std = compute_structure(image)
    off = compute_structure(image, official=True)

    def gray_u8(x):
        return (x[0].numpy() * 255).round().astype(np.uint8)

    masked = signed_to_uint8(image * known)
    tiles = [
        tile(signed_to_uint8(image), "image (3,H,W) in [-1,1]"),
        tile(gray_u8(hole), f"mask file: white = fill ({hole_ratio(hole):.0%})"),
        tile(masked, "input_image = image * known_mask"),
        tile(gray_u8(std.edge * known), "input edge (standard) * known"),
        tile(gray_u8(std.edge), f"edge, standard ({float(std.edge.mean()):.1%} px)"),
        tile(gray_u8(std.gray), "gray, standard"),
        tile(gray_u8(off.edge), f"edge, official ({float(off.edge.mean()):.1%} px)"),
        tile(gray_u8(off.gray), "gray, official (wrapped uint8)"),
    ]
    sheet = Image.new("RGB", (4 * SIZE + 3 * 4, 2 * (SIZE + LABEL) + 4), "white")
    for i, t in enumerate(tiles):
        sheet.paste(t, ((i % 4) * (SIZE + 4), (i // 4) * (SIZE + LABEL + 4)))
    sheet.save(out_path, optimize=True)
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main(*sys.argv[1:])

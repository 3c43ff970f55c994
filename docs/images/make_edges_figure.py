"""Re-create docs/images/known_edges.jpg: an object removed with Canny on the whole picture (the paper's
evaluation protocol, ``edges="full"``) against Canny on the known pixels only (the default of
``ctsdg inpaint``, ``edges="known"``), with the edge map each gave the network. Run from the repository
root:

    .venv/bin/python docs/images/make_edges_figure.py

The object is a red disk painted over the README's example photo (scikit-image's ``coffee``); the mask
covers exactly the disk. The right-hand column fills the same hole over the untouched photo: with
``known`` edges the two fills are identical, because nothing under the mask reaches the network.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ctsdg.inference import Inpainter

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
LABEL = 22
ZOOM = 2


def tile(arr: np.ndarray, label: str, box: tuple[int, int, int, int]) -> Image.Image:
    top, left, bottom, right = box
    crop = Image.fromarray(arr[top:bottom, left:right]).convert("RGB")
    crop = crop.resize((crop.width * ZOOM, crop.height * ZOOM), Image.NEAREST)
    out = Image.new("RGB", (crop.width, crop.height + LABEL), "white")
    out.paste(crop, (0, LABEL))
    ImageDraw.Draw(out).text((6, 5), label, fill="black")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/images/known_edges.jpg")
    args = parser.parse_args()
    photo = np.asarray(Image.open(EXAMPLES / "photo.png").convert("RGB"))
    h, w = photo.shape[:2]
    cy, cx, r = h // 2, int(w * 0.45), int(min(h, w) * 0.12)
    yy, xx = np.mgrid[:h, :w]
    hole = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    with_object = photo.copy()
    with_object[hole] = (230, 20, 20)
    box = (cy - r - 16, cx - r - 16, cy + r + 17, cx + r + 17)
    row = {"full": [tile(with_object, "input: the red disk is the mask", box)], "known": []}
    for edges in ("full", "known"):
        model = Inpainter.from_pretrained(edges=edges)
        outs = []
        for picture in (with_object, photo):
            result = model.inpaint(picture, hole.astype(np.uint8) * 255, strategy="original",
                                   save_intermediate=True)
            outs.append((result.image, result.intermediates["edge"]))
        (filled, edge_map), (filled_clean, _) = outs
        if edges == "known":
            row["known"].append(tile(np.where(hole[..., None], 255, photo).astype(np.uint8),
                                     "the mask (white = fill)", box))
        row[edges] += [tile(edge_map, f'edges="{edges}": the edge map', box),
                       tile(filled, f'edges="{edges}": the fill', box),
                       tile(filled_clean, "same hole over the bare photo", box)]
    rows = [row["full"], row["known"]]
    cw, ch = rows[0][0].size
    sheet = Image.new("RGB", (4 * (cw + 4), 2 * (ch + 4)), "white")
    for r_, tiles in enumerate(rows):
        for c, im in enumerate(tiles):
            sheet.paste(im, (c * (cw + 4), r_ * (ch + 4)))
    sheet.save(args.out, quality=90)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

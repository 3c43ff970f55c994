"""Re-create docs/images/blend_examples.jpg: the bundled model's fill pasted in (the paper's composite)
against the same fill Poisson-blended (the default of ``ctsdg inpaint``), beside OpenCV Telea and the
ground truth, on pairs of the model card's validation list. Run from the repository root, with the list
made as docs/model_card.md says:

    .venv/bin/python docs/images/make_blend_figure.py pairs.json [--pairs 19 7 16]

Each tile is labelled with its PSNR / SSIM against the ground truth (ctsdg.metrics, as ``ctsdg evaluate``).
"""

from __future__ import annotations

import argparse

import numpy as np
from PIL import Image, ImageDraw

from ctsdg.baselines import get_baseline
from ctsdg.conventions import uint8_to_unit
from ctsdg.evaluate import load_pair
from ctsdg.inference import Inpainter
from ctsdg.masks import load_eval_pairs
from ctsdg.metrics import psnr, ssim

SIZE = 256
LABEL = 22


def tile(arr: np.ndarray, label: str) -> Image.Image:
    out = Image.new("RGB", (SIZE, SIZE + LABEL), "white")
    out.paste(Image.fromarray(arr).convert("RGB"), (0, LABEL))
    ImageDraw.Draw(out).text((6, 5), label, fill="black")
    return out


def scores(pred: np.ndarray, target: np.ndarray) -> str:
    p, t = (uint8_to_unit(a)[None] for a in (pred, target))
    return f"{psnr(p, t).item():.2f} dB / SSIM {ssim(p, t).item():.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pairs", help="the model card's pair list (ctsdg data pairs ... --out pairs.json)")
    parser.add_argument("--pairs", dest="indices", type=int, nargs="+", default=[19, 7, 16])
    parser.add_argument("--out", default="docs/images/blend_examples.jpg")
    args = parser.parse_args()
    pairs = load_eval_pairs(args.pairs)
    models = {blend: Inpainter.from_pretrained(blend=blend) for blend in ("none", "poisson")}
    telea = get_baseline("telea")
    rows = []
    for index in args.indices:
        image, hole = load_pair(pairs[index], SIZE)
        masked = np.where(hole[..., None] > 0, 255, image).astype(np.uint8)
        name = pairs[index].image.stem.split("__")[-1]
        ratio = (hole > 0).mean()
        pasted = models["none"].inpaint_rgb(image, hole > 0, strategy="original")[0]
        blended = models["poisson"].inpaint_rgb(image, hole > 0, strategy="original")[0]
        other = telea(image, hole)
        rows.append([tile(masked, f"#{index} {name}, hole {ratio:.0%}"),
                     tile(pasted, "pasted " + scores(pasted, image)),
                     tile(blended, "Poisson " + scores(blended, image)),
                     tile(other, "Telea " + scores(other, image)),
                     tile(image, "ground truth")])
    sheet = Image.new("RGB", (len(rows[0]) * (SIZE + 4), len(rows) * (SIZE + LABEL + 4)), "white")
    for r, row in enumerate(rows):
        for c, im in enumerate(row):
            sheet.paste(im, (c * (SIZE + 4), r * (SIZE + LABEL + 4)))
    sheet.save(args.out, quality=90)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

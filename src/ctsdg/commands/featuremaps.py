"""``ctsdg featuremaps``: save the paper's Figure-1 pictures for one image and mask: texture and structure
decoder feature maps (channel mean and PCA colouring), the projected image P_t(F_t), the projected edge map
P_s(F_s), the edge prior and the composite, plus an overview ``figure1.png``.

Example::

    ctsdg featuremaps runs/exp/last.safetensors photo.jpg mask.png --out runs/fig1
"""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "featuremaps",
        help="save texture/structure feature maps, projected image and edge (paper Fig. 1)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("checkpoint", help="generator checkpoint (ours, a training checkpoint or an official .pt); "
                        "'small' = the bundled model")
    parser.add_argument("image", help="input photo (resized to --size x --size, bilinear)")
    parser.add_argument("mask", help="hole mask, white (255) = fill (resized with nearest neighbour)")
    parser.add_argument("--out", required=True, help="output folder for the PNG files")
    parser.add_argument("--size", type=int, default=256, help="network input size, a multiple of 128 (default 256)")
    parser.add_argument("--resize-mask", action="store_true",
                        help="accept a mask of another size than the image (it is resized with nearest neighbour)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, auto")
    parser.add_argument("--overview", action=argparse.BooleanOptionalAction, default=True,
                        help="also write figure1.png with all pictures side by side")
    parser.add_argument("--overwrite", action="store_true", help="replace pictures of the same names in --out")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from ..conventions import hole_mask_from_uint8, hole_mask_to_uint8
    from ..data import read_image, read_mask_uint8
    from ..featuremaps import collect_feature_maps, save_feature_maps
    from ..inference import Inpainter

    if Path(args.out).exists() and not Path(args.out).is_dir():  # before the model is loaded
        raise ValueError(f"--out {args.out} is a file; give a folder for the pictures")
    inpainter = Inpainter.from_pretrained(args.checkpoint, device=args.device)
    image = read_image(args.image)
    mask = hole_mask_to_uint8(hole_mask_from_uint8(read_mask_uint8(args.mask)))  # any mask file -> 255 = fill
    if mask.shape != image.shape[:2] and not args.resize_mask:
        raise ValueError(f"mask {args.mask} is {mask.shape[1]}x{mask.shape[0]} but the image is "
                         f"{image.shape[1]}x{image.shape[0]}; resize the mask with nearest-neighbour or pass --resize-mask")
    if not mask.any():  # the figure is still drawn: the features of a photo with no hole can be what one wants
        print(f"note: {args.mask} marks no pixel to fill (no white pixel), so the pictures show the photo's features "
              "with no hole; paint the region to fill white", file=sys.stderr)
    elif mask.all():
        print(f"note: {args.mask} marks every pixel to fill (all white), so nothing of the photo reaches the "
              "features; paint only the region to fill white", file=sys.stderr)
    pictures = collect_feature_maps(inpainter, image, mask, args.size)
    written = save_feature_maps(pictures, args.out, overview=args.overview, overwrite=args.overwrite,
                                inputs=(args.image, args.mask))
    for path in written:
        print(path)
    return 0

"""``ctsdg inpaint``: fill the white part of a mask in one photo, or in every photo of a folder.

    ctsdg inpaint --image photo.jpg --mask mask.png --output filled.png
    ctsdg inpaint --image photos/ --mask masks/ --output filled/      # masks matched by file name
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import adapt_setting, add_adapt_options

STRATEGY_CHOICES = ("auto", "original", "resize", "crop")


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "inpaint",
        help="fill the white region of a mask in a photo (or a folder of photos)",
        description="Fill the region of IMAGE where MASK is white (255 = fill, black = keep). Known pixels are "
                    "kept bit for bit. With folders, each image's mask is the file in the mask folder with the "
                    "same name (any image extension, or NAME_mask.*; only NAME_mask.* when masks sit beside the images, "
                    "--mask = --image); a single mask file applies to every image.",
    )
    p.add_argument("--image", help="input image file or folder")
    p.add_argument("--mask", help="mask file or folder (white = fill)")
    p.add_argument("--output", help="output file, or folder for folder input (must exist)")
    p.add_argument("--checkpoint", default=None,
                   help="model: ours (.safetensors), a training checkpoint, an official CTSDG .pt, an exported "
                        ".onnx, or 'small' (the bundled model; the default)")
    p.add_argument("--strategy", choices=STRATEGY_CHOICES, default="auto",
                   help="original: pad to a multiple of 128 and run at full size; resize: run at the working "
                        "size and paste the fill back; crop: one box per hole region (large photos); "
                        "auto (default): original for small images, else crop or resize")
    p.add_argument("--dilate", type=int, default=0, metavar="N",
                   help="grow the mask by N pixels first (hand-drawn masks rarely cover the whole object)")
    p.add_argument("--resize-mask", action="store_true",
                   help="resize a mask of another size to the image (nearest neighbour) instead of refusing it")
    p.add_argument("--invert-mask", action="store_true",
                   help="fill where the mask is black instead of white (a mask drawn over what to keep)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: CUDA if available)")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32",
                   help="bf16: autocast (CPU or GPU); fp16: CUDA only")
    p.add_argument("--backend", choices=("torch", "onnxruntime"), default="torch",
                   help="onnxruntime runs the .onnx written by `ctsdg export` (next to the checkpoint, or "
                        "pass the .onnx as --checkpoint)")
    p.add_argument("--blend", choices=("poisson", "none"), default="poisson",
                   help="poisson (default): keep the fill's detail, take its brightness and colour from the "
                        "pixels around the hole, so no seam shows; none: paste the raw network output "
                        "(the paper's composite)")
    add_adapt_options(p, "before filling, train a copy of the model for STEPS steps on this photo's own known "
                         "pixels (holes cut into them, filled back): a better fill on scenes unlike the training "
                         "photos, at about 0.9 s a step for the bundled model at 256² on 2 CPU cores (the model "
                         "card measured 30 to 120 steps); 0 (default) = off")
    p.add_argument("--working-size", type=int, default=256, help="short side for resize/crop (multiple of 128)")
    p.add_argument("--crop-margin", type=float, default=0.5,
                   help="context around each hole for crop, as a fraction of the hole's size per side")
    p.add_argument("--save-intermediate", action="store_true",
                   help="also write edges, gray, masked input, projected edge and raw output to OUTPUT_intermediate/")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files (never an input)")
    p.add_argument("--skip-existing", action="store_true",
                   help="leave out the images whose output is already there (finish an interrupted folder run)")
    p.add_argument("--describe", action="store_true", help="print the model summary as JSON and exit")
    p.add_argument("--quiet", action="store_true", help="no progress bar or notes")
    p.set_defaults(run=run)


def _is_image_file(p: Path) -> bool:
    from ctsdg.images import IMAGE_SUFFIXES, INPUT_ONLY_SUFFIXES

    return p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES + INPUT_ONLY_SUFFIXES and not p.name.startswith(".")


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if _is_image_file(p))


def _images_in_subfolders(folder: Path, limit: int = 1000) -> list[Path]:
    """Up to ``limit`` images below ``folder``'s subfolders (not read in folder mode, so the user is told)."""
    import itertools

    found = (p for p in folder.rglob("*") if p.parent != folder and _is_image_file(p))
    return sorted(itertools.islice(found, limit))


def _output_name(image: Path) -> str:
    """The output's file name in folder mode: the input's, or NAME.png for a format we only read (HEIC)."""
    from ctsdg.images import IMAGE_SUFFIXES

    return image.name if image.suffix.lower() in IMAGE_SUFFIXES else image.stem + ".png"


def _find_mask(image: Path, mask_dir: Path, masks: list[Path]) -> Path:
    by_stem: dict[str, list[Path]] = {}
    for m in masks:
        by_stem.setdefault(m.stem, []).append(m)
    # masks beside their images: NAME.* there is the image itself (or a copy), only NAME_mask.* is its mask
    same_folder = image.parent.resolve() == mask_dir.resolve()
    for stem in ((f"{image.stem}_mask",) if same_folder else (image.stem, f"{image.stem}_mask")):
        found = by_stem.get(stem, [])
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise ValueError(f"several masks match {image.name} in {mask_dir}: {', '.join(p.name for p in found)}")
    looked = f"{image.stem}_mask.*" if same_folder else f"{image.stem}.* and {image.stem}_mask.*"
    raise FileNotFoundError(f"no mask for {image.name} in {mask_dir} (looked for {looked})")


def plan_jobs(image: Path, mask: Path, output: Path) -> list[tuple[Path, Path, Path]]:
    """(image, mask, output) triples; every problem with paths is raised before any work is done."""
    from ctsdg.data import IMAGE_EXTENSIONS
    from ctsdg.images import check_image_output

    if not image.exists():
        raise FileNotFoundError(f"image {image} does not exist; check the path")
    if not mask.exists():
        raise FileNotFoundError(f"mask {mask} does not exist; check the path")
    if image.is_file():
        if mask.is_dir():
            mask = _find_mask(image, mask, _images_in(mask))
        # folder, missing parent, extension, an input as output; existing outputs: checked in run()
        check_image_output(output, overwrite=True, inputs=(image, mask))
        return [(image, mask, output)]
    if not output.is_dir():
        fix = ("give a folder, not a file name" if output.suffix.lower() in IMAGE_EXTENSIONS or output.exists()
               else f"create it first (mkdir -p {output})")
        raise FileNotFoundError(f"--output {output} must be an existing folder when --image is a folder; {fix}")
    if output.resolve() == image.resolve():
        raise ValueError(f"--output {output} is the input folder; choose another folder (inputs are never overwritten)")
    if mask.is_dir() and output.resolve() == mask.resolve():
        raise ValueError(f"--output {output} is the mask folder; choose another folder (inputs are never overwritten)")
    images = _images_in(image)
    if mask.is_dir() and mask.resolve() == image.resolve():
        images = [p for p in images if not p.stem.endswith("_mask")]  # the masks, not images to fill
    if not images:
        raise FileNotFoundError(f"no images (.png, .jpg, ...) in {image}")
    masks = _images_in(mask) if mask.is_dir() else None
    jobs = []
    for img in images:
        m = _find_mask(img, mask, masks) if masks is not None else mask
        jobs.append((img, m, output / _output_name(img)))
    return jobs


def run(args: argparse.Namespace) -> int:
    import logging

    # The inpainter's warnings also come back in result.messages, printed by _run as notes: say them
    # once. --quiet keeps errors only. The levels are restored afterwards (run may be called in-process).
    quieter = ["ctsdg.inference"] + (["ctsdg"] if args.quiet else [])
    levels = {name: logging.getLogger(name).level for name in quieter}
    for name in quieter:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        return _run(args)
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def _run(args: argparse.Namespace) -> int:
    from ctsdg.inference import Inpainter

    if args.dilate < 0:
        raise ValueError(f"--dilate must be >= 0, got {args.dilate}")
    adapt = adapt_setting(args)
    jobs = []
    if not args.describe:
        missing = [f"--{n}" for n in ("image", "mask", "output") if not getattr(args, n)]
        if missing:
            raise ValueError(f"{', '.join(missing)} required (ctsdg inpaint --image IN --mask MASK --output OUT)")
        jobs = plan_jobs(Path(args.image), Path(args.mask), Path(args.output))
        nested = _images_in_subfolders(Path(args.image)) if Path(args.image).is_dir() else []
        if nested and not args.quiet:  # said before the work, so that a long run is not wasted
            which = f"{nested[0]} and {len(nested) - 1} more are" if len(nested) > 1 else f"{nested[0]} is"
            print(f"note: {which} in a subfolder of {args.image} and not filled (folder mode reads the folder's "
                  "own files); run each subfolder as its own --image", file=sys.stderr)
        if args.overwrite and args.skip_existing:
            raise ValueError("--overwrite and --skip-existing contradict each other; pass one")
        if args.skip_existing:
            done = [job for job in jobs if job[2].exists()]
            jobs = [job for job in jobs if not job[2].exists()]
            if done and not args.quiet:
                print(f"note: {len(done)} of {len(done) + len(jobs)} outputs are already there and left as they "
                      "are (--skip-existing)", file=sys.stderr)
            if not jobs:
                return 0
        elif not args.overwrite:
            existing = [str(out) for _, _, out in jobs if out.exists()]
            if existing:
                more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
                fix = ("pass --skip-existing to fill only the others (an interrupted run), or --overwrite to "
                       "replace them" if len(jobs) > 1 else "pass --overwrite to replace it")
                raise FileExistsError(f"{existing[0]}{more} already exists; {fix}")

    inpainter = Inpainter.from_pretrained(
        args.checkpoint, device=args.device, precision=args.precision, backend=args.backend,
        working_size=args.working_size, crop_margin=args.crop_margin, blend=args.blend, adapt=adapt,
        progress=not args.quiet,
    )
    if args.describe:
        import json

        print(json.dumps(inpainter.describe(), indent=2))
        return 0

    from tqdm import tqdm

    strategy = None if args.strategy == "auto" else args.strategy
    failures = 0
    folder_mode = len(jobs) > 1 or Path(args.image).is_dir()
    bar = tqdm(jobs, unit="image", disable=args.quiet or not folder_mode, file=sys.stderr)
    written = 0
    try:
        for image, mask, output in bar:
            written += _one(args, inpainter, image, mask, output, strategy, folder_mode)
    except KeyboardInterrupt:
        if folder_mode:
            bar.close()
            print(f"wrote {written} of {len(jobs)} images to {args.output} before the interrupt; the same command "
                  "with --skip-existing fills the others", file=sys.stderr)
        raise
    failures = len(jobs) - written
    if folder_mode and not args.quiet:
        print(f"wrote {written} of {len(jobs)} images to {args.output}", file=sys.stderr)
    return 1 if failures else 0


def _one(args: argparse.Namespace, inpainter, image: Path, mask: Path, output: Path, strategy: str | None,
         folder_mode: bool) -> int:
    """Fill one image; 1 when written, 0 when it failed in folder mode (said on stderr; the others go on)."""
    from tqdm import tqdm

    try:
        result = inpainter.inpaint_file(image, mask, output, overwrite=args.overwrite, strategy=strategy,
                                        dilate=args.dilate, resize_mask=args.resize_mask,
                                        invert_mask=args.invert_mask,
                                        save_intermediate=args.save_intermediate)
    except (OSError, ValueError, TypeError) as exc:  # OSError: also a permission or disk error on one file
        if not folder_mode:
            raise
        tqdm.write(f"ctsdg inpaint: error: {image.name}: {exc}", file=sys.stderr)
        return 0
    if not args.quiet:
        for note in result.messages:
            tqdm.write(f"note: {image.name}: {note}", file=sys.stderr)
        if not folder_mode:
            print(f"wrote {output} (strategy {result.strategy})", file=sys.stderr)
    return 1

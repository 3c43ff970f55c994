"""The ``ctsdg`` command. Each subcommand lives in ``ctsdg/commands/<name>.py`` with two functions:
``add_parser(subparsers)`` declares its arguments and ``run(args) -> int`` does the work (heavy imports
inside ``run`` so that ``ctsdg --help`` stays fast).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings

from . import __version__

# Subcommands in the order `ctsdg --help` lists them.
COMMANDS: tuple[str, ...] = ("inpaint", "convert", "export", "weights", "data", "serve", "train", "evaluate", "featuremaps")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ctsdg",
        description="Image inpainting with CTSDG (ICCV 2021). Masks: white (255) = fill, black = keep.",
    )
    parser.add_argument("--version", action="version", version=f"ctsdg {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"ctsdg.commands.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    from .cpu import apply_defaults

    apply_defaults()  # allocator and threads for the CPU (ctsdg/cpu.py)
    # The commands open the user's own files, so Pillow's warning from 89 MP up ("could be decompression
    # bomb DOS attack") is noise here; its error at twice that still refuses a file (images.open_image_file),
    # and `ctsdg serve` checks each upload's header against its own --max-megapixels.
    from PIL import Image

    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:  # OSError: also permissions, full disk
        if getattr(args, "debug", False):
            raise
        # str(KeyError) is the repr of its argument (quoted); the message is the argument itself
        message = exc.args[0] if isinstance(exc, KeyError) and len(exc.args) == 1 else exc
        print(f"ctsdg {args.command}: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

"""``ctsdg export``: write the generator as ONNX (for onnxruntime) or TorchScript.

    ctsdg export model.safetensors --format onnx          # -> model.onnx, used by --backend onnxruntime
    ctsdg export model.safetensors --format torchscript   # -> model.torchscript.pt
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "export",
        help="export a checkpoint's generator to ONNX or TorchScript",
        description="Export the generator's inference pass (inputs input_image, input_edge, known_mask, "
                    "structure_known_mask; output output; dynamic batch, height and width, each side a "
                    "multiple of 128). The ONNX file carries the model config and structure mode, so "
                    "`ctsdg inpaint --checkpoint model.onnx` and `--backend onnxruntime` need nothing else.",
    )
    p.add_argument("checkpoint", help="checkpoint in any format ctsdg reads, or 'small' for the bundled model")
    p.add_argument("--format", choices=("onnx", "torchscript"), default="onnx")
    p.add_argument("--output", default=None,
                   help="output file (default: the checkpoint's name with .onnx or .torchscript.pt, beside it; "
                        "in the current folder for the bundled model)")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (>= 18)")
    p.add_argument("--check", action=argparse.BooleanOptionalAction, default=True,
                   help="run the exported model on a random 256x256 input and compare with PyTorch (default: yes)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.set_defaults(run=run)


def default_output(source: Path, fmt: str) -> Path:
    """The checkpoint's name with ``.onnx`` or ``.torchscript.pt``: beside it, or in the current folder for the
    bundled model, whose folder is the installed package (the rule ``Inpainter.from_pretrained`` follows)."""
    from ctsdg.checkpoint import BUNDLED_PATH

    folder = Path.cwd() if source.resolve() == BUNDLED_PATH else source.parent
    return folder / (source.stem + (".onnx" if fmt == "onnx" else ".torchscript.pt"))


def run(args: argparse.Namespace) -> int:
    import torch

    from ctsdg.checkpoint import load_generator, resolve_checkpoint
    from ctsdg.export import OnnxGenerator, example_inputs, export_onnx, export_torchscript

    source = resolve_checkpoint(args.checkpoint)
    output = Path(args.output) if args.output else default_output(source, args.format)
    if output.resolve() == source.resolve():
        raise ValueError(f"output {output} is the input checkpoint; choose another --output")
    if output.is_dir():
        raise ValueError(f"--output {output} is a folder; give a file name, e.g. {output / (source.stem + '.onnx')}")
    if args.format == "onnx" and output.suffix.lower() != ".onnx":
        raise ValueError(f"output {output} should end in .onnx (ctsdg inpaint and Inpainter recognise ONNX models by it)")
    if args.format == "torchscript" and output.suffix.lower() == ".onnx":
        raise ValueError(f"output {output} ends in .onnx, which ctsdg would take for an ONNX model; name a TorchScript "
                         f"file .pt, e.g. {output.with_suffix('.torchscript.pt').name}")
    if output.exists() and not args.overwrite:
        raise FileExistsError(f"{output} already exists; pass --overwrite to replace it")
    if args.opset < 18:
        raise ValueError(f"--opset must be >= 18 (the attention needs Col2Im), got {args.opset}")
    loaded = load_generator(source)
    meta = {"source_checkpoint": source.name, "source_sha256": loaded.meta["sha256"]}
    print(f"exporting {source.name} to {args.format} (takes a minute) ...", file=sys.stderr)
    if args.format == "onnx":
        export_onnx(loaded.generator, output, structure_mode=loaded.structure_mode, meta=meta, opset=args.opset)
    else:
        export_torchscript(loaded.generator, output)
    print(f"wrote {output}", file=sys.stderr)
    if args.check:
        inputs = example_inputs(256, 256, seed=1)
        with torch.inference_mode():
            ref = loaded.generator(*inputs[:3], with_projections=False, structure_known_mask=inputs[3]).output
        if args.format == "onnx":
            got = OnnxGenerator(output)(*inputs)
        else:
            got = torch.jit.load(str(output))(*inputs)
        diff = (got - ref).abs().max().item()
        print(f"check: max |exported - pytorch| = {diff:.2e} on a 256x256 input", file=sys.stderr)
        if not diff <= 1e-4:
            raise RuntimeError(f"exported model differs from PyTorch by {diff:.2e} (> 1e-4); please report this")
    return 0

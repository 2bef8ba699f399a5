"""``sipe export``: a trained segmentation network to ONNX (dynamic batch, height and width).

Write a 'sipe seg train' checkpoint as an ONNX model that computes what 'sipe predict' computes. Input
'image': (N, 3, H, W) float32 RGB in [0, 255], the photo upright after its EXIF orientation
(normalisation is inside the graph); output 'probs': (N, K, H, W) class probabilities at the input size,
averaged with the horizontally flipped image as 'sipe predict' does (--no-flip: the lean one-pass graph,
output 'logits'); N, H and W are dynamic. The class names and the expected preprocessing (EXIF-upright
RGB, value range, mean/std, flip) are stored in the model metadata. A DeepLabV2 checkpoint
(model.arch=deeplabv2) is exported as it is evaluated: its multi-scale inputs (MSC, scales 1.0, 0.75 and
0.5 by default) and their elementwise-max fusion are folded into the one graph, and the input
normalisation is the checkpoint's own (mean subtraction for deeplab-pytorch weights).
"""

from __future__ import annotations

import argparse
from typing import Any

from sipe.cli._common import InputError


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("export", help="export a segmentation checkpoint to ONNX", description=__doc__)
    p.add_argument("--checkpoint", required=True, help="checkpoint written by 'sipe seg train'")
    p.add_argument("--out", required=True, help="ONNX file to write")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset, 17 or later (default: %(default)s)")
    p.add_argument(
        "--dynamo", action="store_true", help="use the torch.export-based exporter (opset 18 or later)"
    )
    p.add_argument(
        "--no-flip", action="store_true",
        help="the lean graph: one pass, output 'logits' (default: 'probs' averaged with the flipped image, "
             "as sipe predict computes them)",
    )
    p.add_argument(
        "--check", action="store_true",
        help="compare onnxruntime's output with PyTorch's on two image sizes: the largest difference relative "
             "to the output's scale (at most 1e-4) and the argmax class (the same on at least 99.9%% of the pixels)",
    )
    p.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    from sipe import io as sio

    sio.checkpoint_file(args.checkpoint, made_by="sipe seg train")  # before torch loads
    from sipe.seg.export import check_onnx, export_onnx
    from sipe.seg.model import load_seg_checkpoint

    model, spec = load_seg_checkpoint(args.checkpoint)
    path = export_onnx(model, args.out, opset=args.opset, class_names=spec.class_names, dynamo=args.dynamo,
                       arch=spec.arch, flip=not args.no_flip)
    graph = "one pass, logits" if args.no_flip else "flip-averaged probabilities as sipe predict"
    print(f"wrote {path} (opset {args.opset}, {spec.arch}, {spec.num_classes} classes, backbone {spec.backbone}, "
          f"{graph})")
    if args.check:
        check = check_onnx(model, path, arch=spec.arch)
        print(f"onnxruntime vs PyTorch: {check.summary()}")
        problem = check.problem()
        if problem:
            raise InputError(f"the ONNX output of {path} {problem}")
    return 0

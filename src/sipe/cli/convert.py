"""``sipe convert``: a folder of masks (``<name>.png`` + ``classes.json``) to COCO JSON or per-class binary PNGs."""

from __future__ import annotations

import argparse

EPILOG = """\
formats:
  coco    one JSON file: images (id, file_name, height, width), categories (id = pixel value, from
          classes.json; background and 255 left out) and one annotation per class per image, its
          pixels as RLE (pycocotools mask.encode), with area, bbox, iscrowd 0 and score 1.0.
          Image ids are 1, 2, ... in the sorted order of the mask names. Made for pycocotools:
          COCO(FILE) loads it as a ground-truth-style file (as do detectron2's register_coco_instances
          and other COCO loaders), and COCO.loadRes(json.load(open(FILE))["annotations"]) as results
          for COCOeval.
  binary  OUT/<class>/<name>.png: one 0/255 greyscale PNG per class present in an image, named as the
          image, one folder per class (for tools that import one label's masks at a time).

examples:
  sipe convert runs/mine/pseudo --to coco --out runs/mine/pseudo_coco.json --image-dir photos
  sipe convert runs/mine/predictions --to binary --out runs/mine/predictions_binary
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert a folder of masks to COCO JSON (RLE) or per-class binary PNGs",
                       description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mask_dir", metavar="MASK_DIR", help="folder of <name>.png index masks written by sipe")
    p.add_argument("--to", required=True, choices=["coco", "binary"], help="output format (see below)")
    p.add_argument("--out", required=True, help="coco: the JSON file to write; binary: the output folder")
    p.add_argument("--classes", default=None, metavar="FILE",
                   help="what the pixel values mean, when MASK_DIR has no classes.json: the classes.json of the "
                        "run's masks, or a text file of class names in pixel-value order (background first)")
    p.add_argument("--image-dir", default=None,
                   help="coco: the folder of the masks' images, so that file_name names the image "
                        "(default: the mask's own <name>.png)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sipe.cli._common import UsageError, setup_logging
    from sipe.data.convert import mask_folder_classes, masks_to_binary, masks_to_coco

    if args.image_dir is not None and args.to != "coco":
        raise UsageError("--image-dir applies to --to coco only")
    setup_logging()
    mask_folder_classes(args.mask_dir, args.classes)  # the folder and its classes, before any file is read
    if args.to == "coco":
        counts = masks_to_coco(args.mask_dir, args.out, args.classes, image_dir=args.image_dir)
        print(f"wrote {args.out}: {counts['images']} images, {counts['annotations']} annotations, "
              f"{counts['categories']} categories")
    else:
        counts = masks_to_binary(args.mask_dir, args.out, args.classes)
        print(f"wrote {counts['masks']} binary masks of {counts['images']} images to {args.out}/<class>/<name>.png")
    return 0

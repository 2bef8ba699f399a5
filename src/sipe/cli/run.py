"""``sipe run``: a folder of tagged photos to a tested model, an ONNX file and a results page, in one
resumable command (SIPE -> IS-CAM -> evaluation -> refinement -> segmentation -> evaluation -> ONNX -> report)."""

from __future__ import annotations

import argparse
import json
import logging

EPILOG = """\
examples:
  sipe run --config configs/run_photos.yaml --out runs/mine data.root=photos data.split=photos/labels.csv
  sipe run --config configs/run_voc_paper.yaml --out runs/voc data.root=/data/VOCdevkit/VOC2012
  sipe run --config configs/demo.yaml --out demo_out      (the same as `sipe demo --out demo_out`)

Sections: data (shared by every stage), synthetic and pretrain (optional leading stages: the demo's
generated data and stand-in pretraining), train (as `sipe train --print-config`), cam, refine
(method: irn | crf | none), irn (as `sipe refine train-irn --print-config`), seg (as `sipe seg train
--print-config`), eval, export. Rerun the same command to resume: finished stages are skipped, an
interrupted one resumes; --from STAGE redoes a stage and the later ones, --until STAGE stops after one.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="the whole method in one resumable command: photos to model, ONNX and report",
                       description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="run folder (one subfolder per stage; rerun to resume)")
    p.add_argument("--config", default=None, help="YAML of RunConfig settings (configs/run_*.yaml), or "
                   "configs/demo.yaml for the demo")
    p.add_argument("--from", dest="start", default=None, metavar="STAGE",
                   help="redo this stage and every later one (its outputs are removed first)")
    p.add_argument("--until", default=None, metavar="STAGE", help="stop after this stage")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="config overrides, e.g. train.engine.epochs=1 seg.model.arch=deeplabv2")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    return run_config(args.config, args.overrides, args.out, args.print_config, args.start, args.until)


def run_config(config: str | None, overrides: list[str], out: str, print_only: bool = False,
               start: str | None = None, until: str | None = None) -> int:
    """``sipe run`` (and ``sipe demo``, with the demo's config file): load, check, run, print the mIoUs."""
    # Config and datasets are checked before torch loads, so that their errors come in a second.
    from sipe.cli._common import print_config, setup_logging
    from sipe.config import load_config
    from sipe.run.config import RunConfig, resolve
    from sipe.run.data import run_data
    from sipe.run.plan import apply_plan, dataset_fingerprint, explicit_keys, synthetic_fingerprint

    cfg = load_config(RunConfig, config, overrides)
    resolved = resolve(cfg, out)
    data = None
    if resolved.synthetic is not None:
        # The plan reads the generated set's labels and sizes, drawn in memory (its stage writes it later).
        fingerprint = synthetic_fingerprint(resolved.synthetic)
    else:
        try:
            data = run_data(resolved)
        except (OSError, ValueError) as err:  # the dataset errors subclass these
            if not print_only:
                raise
            print(f"# data fingerprint: not computed, the data cannot be read ({str(err).splitlines()[0]})")
            return print_config(resolved)
        fingerprint = dataset_fingerprint(data.train)
    planned, lines, plan = apply_plan(cfg, fingerprint, explicit_keys(config, overrides))
    if print_only:
        print("\n".join(lines))
        return print_config(resolve(planned, out))
    setup_logging()
    from sipe.run.stages import run_pipeline

    for line in lines:
        logging.getLogger("sipe.run").info(line.lstrip("# "))
    metrics = run_pipeline(planned, out, start, until, data=data, plan=plan)
    print_summary(metrics, out)
    return 0


def print_summary(metrics: dict, out: str) -> None:
    """The mIoUs (when there were masks to score against) and where the page and metrics are."""
    if not metrics:
        return
    mious = {k: v for k, v in metrics.items() if k.endswith("miou")}
    if mious:
        print(json.dumps(mious, indent=2))
    print(f"results page: {out}/report.html; metrics: {out}/metrics.json")

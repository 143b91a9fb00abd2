"""`llmloop predict | export`: the morning's model put to use (loop/deploy does the work).

`--model` takes GEN_HEAD, an archive entry name or a run folder; the first two are looked up in
the workspace (`--workspace`, else the daemon config's, resolved as every command resolves it).
Parsing stays torch-free: torch comes in only when a command runs."""
from __future__ import annotations

import argparse
from pathlib import Path

from loop.config import DEFAULT_DAEMON_CONFIG, add_daemon_config_arguments, load_daemon_config
from loop.errors import ConfigError, exits_with_code

COMMANDS = ("predict", "export")


def add_arguments(sub) -> None:
    p = sub.add_parser("predict", help="predict classes for test images: submission and probabilities CSVs",
                       description="Class and per-class probabilities for every test image, from one model or the "
                                   "mean of the top-K archive entries; accuracy with a 95% interval when the "
                                   "images are labelled (a class-folder tree, or a CSV label column).")
    add_daemon_config_arguments(p)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", help="GEN_HEAD, an archive entry name, or a run folder")
    which.add_argument("--ensemble", type=int, metavar="K",
                       help="the mean of the probabilities of the K archive entries with the best recorded "
                            "val accuracy")
    p.add_argument("--images", required=True, help="a folder (flat: unlabelled; class sub-folders: labelled) or a CSV")
    p.add_argument("--out", required=True, help="the submission CSV to write")
    p.add_argument("--probabilities", help="the probabilities CSV (default: <out stem>.probabilities.csv beside --out)")
    p.add_argument("--tta", choices=["none", "flip"], default="none",
                   help="flip: also the horizontal mirror of each image, probabilities averaged")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--skip-bad-images", action="store_true",
                   help="leave out missing or unreadable images (listed, not in the submission) instead of refusing")
    csv = p.add_argument_group("a CSV --images")
    csv.add_argument("--csv-images", help="the folder its ids or paths are in (default: the CSV's folder)")
    csv.add_argument("--id-column", default="id", help="the column of ids, found as <id>.png/.jpg/... (default: id)")
    csv.add_argument("--path-column", help="a column of image paths instead of ids (relative to --csv-images)")
    csv.add_argument("--label-column", default="label",
                     help="the column of true labels, if present: accuracy is printed (default: label)")
    out = p.add_argument_group("the submission's columns")
    out.add_argument("--out-id-column", default="id", help="the id column's name in the CSVs written (default: id)")
    out.add_argument("--out-label-column", default="label",
                     help="the predicted class column's name in the submission (default: label)")

    p = sub.add_parser("export", help="export a model to ONNX or TorchScript, checked against PyTorch")
    add_daemon_config_arguments(p)
    p.add_argument("--model", required=True, help="GEN_HEAD, an archive entry name, or a run folder")
    p.add_argument("--format", required=True, choices=["onnx", "torchscript"])
    p.add_argument("--out", required=True, help="the file to write; its metadata goes to <out>.json too")


def workspace_for(args: argparse.Namespace, needed: bool) -> Path | None:
    """--workspace as typed, else the daemon config's workspace. Only GEN_HEAD, archive names and
    --ensemble need one: a run folder predicts from anywhere, with no config file around."""
    if args.workspace:
        return Path(args.workspace).expanduser().resolve()
    if not needed:
        return None
    from loop.util.workspace import workspace_of

    config = args.daemon_config or (Path(args.root) / DEFAULT_DAEMON_CONFIG if args.root else DEFAULT_DAEMON_CONFIG)
    if not Path(config).is_file():
        raise ConfigError(f"--workspace is needed to find {args.model or 'the archive'}: there is no daemon config "
                          f"{config} here to name one (run from the project root, or pass --workspace)")
    return workspace_of(load_daemon_config(args.daemon_config, root=args.root)).root


def needs_workspace(model: str | None) -> bool:
    from loop.deploy.resolve import HEAD

    return model is None or model == HEAD or not Path(model).expanduser().is_dir()


@exits_with_code
def run(args: argparse.Namespace) -> int:
    from loop.deploy.resolve import resolve_model, top_k

    workspace = workspace_for(args, needs_workspace(args.model))
    if args.command == "export":
        from loop.deploy.export import export_model, sidecar_path

        meta = export_model(resolve_model(args.model, workspace), args.format, Path(args.out))
        check = meta.check
        print(f"exported {meta.model}: {meta.model_name}, {meta.num_classes} classes, to {args.out} as {meta.format}")
        print(f"check: {check.runtime} on a batch of {check.batch}: max abs logit difference "
              f"{check.max_abs_logit_diff:.3g} (< {check.tolerance:g})")
        print(f"input: {meta.input_dtype} {meta.input_layout} {meta.input_shape}, normalised inside the model; "
              f"metadata in the file and in {sidecar_path(Path(args.out))}")
        return 0
    from loop.deploy.predict import PredictRequest, predict
    from loop.deploy.testset import ImageSetSpec

    refs = tuple(top_k(workspace, args.ensemble)) if args.ensemble is not None \
        else (resolve_model(args.model, workspace),)
    predict(PredictRequest(
        models=refs, out=Path(args.out), probabilities=Path(args.probabilities) if args.probabilities else None,
        images=ImageSetSpec(images=Path(args.images), csv_images=Path(args.csv_images) if args.csv_images else None,
                            id_column=args.id_column, path_column=args.path_column, label_column=args.label_column,
                            skip_bad=args.skip_bad_images),
        tta=args.tta, batch_size=args.batch_size, device=args.device, out_id_column=args.out_id_column,
        out_label_column=args.out_label_column))
    return 0

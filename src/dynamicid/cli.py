"""The `dynamicid` command line."""

from __future__ import annotations

import argparse
import sys

from dynamicid import __version__


def _add_face_backend_options(p) -> None:
    from dynamicid.faces.backends import available

    for stage, default, what in (("detector", "dlib-hog", "face detector"), ("landmarks", "dlib-68", "landmark model"),
                                 ("embedder", "dlib-resnet", "identity embedder")):
        p.add_argument(f"--{stage}", default=default, help=f"{what} ({', '.join(available(stage))})")
        p.add_argument(f"--{stage}-model", default=None, help=f"model folder for the {what}")


def _face_config(args, **extra):
    from dynamicid.faces.analyzer import FaceAnalysisConfig

    return FaceAnalysisConfig(
        detector=args.detector, detector_model=args.detector_model,
        landmarks=args.landmarks, landmarks_model=args.landmarks_model,
        embedder=args.embedder, embedder_model=args.embedder_model,
        **extra,
    )


def _add_prep(sub) -> None:
    from dynamicid.faces.backends import available
    from dynamicid.prep.config import LAYOUTS, MULTI_FACE_POLICIES, ValidationConfig

    rules = ValidationConfig()
    p = sub.add_parser(
        "prep",
        help="prepare a face dataset with Spark (align, landmarks, embedding, prompts)",
        description=(
            "Prepare a DynamicID training set. For every file under INPUT: decode and validate it, detect the face, "
            "find 68 landmarks, align and crop to 512x512, compute the identity embedding, and write the face "
            "prompt and caption. Writes OUTPUT/images/<identity>/NAME.{jpg,png,txt,pt}, OUTPUT/manifest.parquet "
            "(one row per input file, kept or rejected, with the reason), summary.json and contact_sheet.png. "
            "A rerun skips what is already done."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("input", help="folder of photos (searched recursively), or any path Spark can read (hdfs://, s3a://)")
    p.add_argument("output", help="output folder (local, or a filesystem shared by all Spark workers)")
    p.add_argument("--master", default=None, help="Spark master, e.g. spark://host:7077 (default: local[*], or spark-submit's)")
    p.add_argument("--layout", choices=LAYOUTS, default="by-identity",
                   help="by-identity: the first-level subfolder names the person; flat: no identities")
    p.add_argument("--multi-face", choices=MULTI_FACE_POLICIES, default="largest",
                   help="several faces in one photo: keep the largest, skip the photo, or keep every face")
    p.add_argument("--images-per-partition", type=int, default=8, help="images per Spark task")
    p.add_argument("--detect-side", type=int, default=640, help="detection runs on the photo shrunk to this many px")
    p.add_argument("--min-detection-score", type=float, default=None,
                   help="drop detections scoring below this (default: the detector's own; dlib-hog 0.25)")
    p.add_argument("--aligned-size", type=int, default=512, help="side of the aligned face crop")
    p.add_argument("--min-side", type=int, default=rules.min_side, help="reject images smaller than this (px)")
    p.add_argument("--max-pixels", type=int, default=rules.max_pixels, help="reject images whose header claims more pixels")
    p.add_argument("--min-face-side", type=int, default=rules.min_face_side, help="reject faces smaller than this (px)")
    p.add_argument("--min-sharpness", type=float, default=rules.min_sharpness, help="reject faces blurrier than this (Laplacian variance)")
    p.add_argument("--jpeg-quality", type=int, default=95)
    _add_face_backend_options(p)
    p.add_argument("--captioner", default="measured", help=f"captioner ({', '.join(available('captioner'))})")
    p.add_argument("--captioner-model", default=None, help="model folder for the captioner")
    p.add_argument("--contact-sheet-faces", type=int, default=48, help="faces shown on contact_sheet.png")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=_run_prep)


def _run_prep(args) -> int:
    from dynamicid.prep.config import PrepConfig, ValidationConfig
    from dynamicid.prep.report import format_summary
    from dynamicid.prep.runner import run_prep

    config = PrepConfig(
        input=args.input,
        output=args.output,
        layout=args.layout,
        multi_face=args.multi_face,
        faces=_face_config(
            args,
            aligned_size=args.aligned_size,
            detect_side=args.detect_side,
            min_detection_score=args.min_detection_score,
        ),
        captioner=args.captioner,
        captioner_model=args.captioner_model,
        validation=ValidationConfig(
            min_side=args.min_side,
            max_pixels=args.max_pixels,
            min_face_side=args.min_face_side,
            min_sharpness=args.min_sharpness,
        ),
        jpeg_quality=args.jpeg_quality,
        master=args.master,
        images_per_partition=args.images_per_partition,
        contact_sheet_faces=args.contact_sheet_faces,
        progress=not args.no_progress,
    )
    result = run_prep(config)
    print(format_summary(result.summary, config.output))
    return 0


def _add_make_sample(sub) -> None:
    p = sub.add_parser(
        "make-sample",
        help="write a small demo input: a real face in several encodings, photos without faces, broken files",
        description="Write a sample input folder that needs no download: kept faces and every kind of rejection.",
    )
    p.add_argument("folder", help="where to write the sample (created)")
    p.set_defaults(handler=_run_make_sample)


def _run_make_sample(args) -> int:
    from dynamicid.prep.sample import make_sample

    expected = make_sample(args.folder)
    kept = sum(1 for status, _ in expected.values() if status == "ok")
    print(f"wrote {len(expected)} files to {args.folder}: {kept} should be kept, {len(expected) - kept} rejected")
    return 0


def _add_eval(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="score images against reference photos: FaceSim, leak margin, face-prompt agreement, CLIP-T",
        description=(
            "Score images (generated or real) against reference photos of the persons they should show. "
            "INPUT is a folder of images with JSON sidecars ({\"prompt\", \"persons\": [{\"name\", \"reference\", "
            "\"face_prompt\"}]}), a CSV with one row per (image, person) and columns image, person, reference, "
            "face_prompt, prompt, box, or a JSON list of {\"image\", \"prompt\", \"persons\"}. A person with a box gets the face "
            "inside it, the others are matched greedily on cosine similarity; a person without a face scores 0. Writes scores.parquet, summary.json, "
            "report.html and report.png to OUTPUT."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("input", help="folder with sidecars, .csv or .json")
    p.add_argument("output", help="folder for the scores and the report")
    p.add_argument("--clip-model", default=None, help="local CLIP folder (transformers layout) to compute CLIP-T")
    _add_face_backend_options(p)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(handler=_run_eval)


def _run_eval(args) -> int:
    from dynamicid.evaluation import EvalConfig, run_eval
    from dynamicid.evaluation.runner import format_summary

    config = EvalConfig(
        input=args.input,
        output=args.output,
        faces=_face_config(args),
        clip_model=args.clip_model,
        progress=not args.no_progress,
    )
    result = run_eval(config)
    print(format_summary(result.summary, config.output))
    return 0


def _add_convert_weights(sub) -> None:
    p = sub.add_parser(
        "convert-weights",
        help="convert DynamicID weights between the authors' .bin files and our safetensors",
        description=(
            "SRC is a folder holding any of the authors' SAA.bin, IMR.bin and key_point_encoder.bin; DST receives "
            "face_encoder/saa/imr/keypoint_encoder.safetensors and dynamicid.json. With --to authors, SRC is our "
            "folder and DST receives the .bin files. Every file is checked key by key against the model; the "
            "pickles are read with torch.load(weights_only=True)."
        ),
    )
    p.add_argument("source")
    p.add_argument("target")
    p.add_argument("--to", choices=("ours", "authors"), default="ours")
    p.add_argument("--unet-config", default=None,
                   help="a diffusers UNet config.json, when the weights are for a UNet not shaped like SD1.5")
    p.set_defaults(handler=_run_convert_weights)


def _run_convert_weights(args) -> int:
    from dynamicid.models.checkpoints import convert

    layout = None
    if args.unet_config:
        import json

        import torch
        from diffusers import UNet2DConditionModel

        from dynamicid.models.saa import processor_layout

        with open(args.unet_config) as handle:
            config = json.load(handle)
        with torch.device("meta"):
            layout = processor_layout(UNet2DConditionModel.from_config(config))
    for path in convert(args.source, args.target, to=args.to, layout=layout):
        print(f"wrote {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dynamicid",
        description="DynamicID toolkit: prepare face datasets with Spark, train, generate and evaluate.",
    )
    parser.add_argument("--version", action="version", version=f"dynamicid {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_prep(sub)
    _add_make_sample(sub)
    _add_eval(sub)
    _add_convert_weights(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    from dynamicid.faces.backends import BackendError
    from dynamicid.models.checkpoints import CheckpointError
    from dynamicid.prep.runner import PrepError
    from dynamicid.sparkenv import JavaNotFound

    try:
        return args.handler(args)
    except (PrepError, BackendError, CheckpointError, JavaNotFound, ValueError, FileNotFoundError) as err:
        print(f"dynamicid {args.command}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":  # also the entry for spark-submit
    sys.exit(main())

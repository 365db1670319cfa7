"""The `dynamicid` command line."""

from __future__ import annotations

import argparse
import os
import sys

from dynamicid import __version__
from dynamicid.errors import ConfigError, DynamicIDError


_FACE_STAGES = (("detector", "face detector"), ("landmarks", "landmark model"), ("embedder", "identity embedder"))


def _add_face_backend_options(p) -> None:
    from dynamicid.faces.analyzer import FaceAnalysisConfig
    from dynamicid.faces.backends import available

    defaults = FaceAnalysisConfig()  # the one place the default backends are written
    for stage, what in _FACE_STAGES:
        p.add_argument(f"--{stage}", default=getattr(defaults, stage), help=f"{what} ({', '.join(available(stage))})")
        p.add_argument(f"--{stage}-model", default=None, help=f"model folder for the {what}")
    p.add_argument("--five-points", choices=("auto", "detector", "landmarks"), default="auto",
                   help="where the embedder's five alignment points come from: the detector's keypoints when it "
                        "gives them, else the landmarks' (auto); only the detector's; only the landmarks'")
    p.add_argument("--expression", choices=("fer", "landmarks"), default="fer",
                   help="the face prompt's emotion: the shipped FER2013 classifier, all seven emotions (fer), or "
                        "landmark geometry alone: happy, surprise or neutral (landmarks)")


def _face_config(args, **extra):
    from dynamicid.faces.analyzer import FaceAnalysisConfig

    return FaceAnalysisConfig(
        detector=args.detector, detector_model=args.detector_model,
        landmarks=args.landmarks, landmarks_model=args.landmarks_model,
        embedder=args.embedder, embedder_model=args.embedder_model, five_points=args.five_points,
        expression=args.expression,
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
    p.add_argument("--config", default=None,
                   help="a TOML or JSON file setting any of these options (e.g. detector = \"insightface\"); "
                        "options given on the command line win")
    p.add_argument("input", nargs="?", help="folder of photos (searched recursively), or any path Spark can read (hdfs://, s3a://)")
    p.add_argument("output", nargs="?", help="output folder (local, or a filesystem shared by all Spark workers)")
    p.add_argument("--verify", metavar="OUTPUT", default=None,
                   help="check a finished OUTPUT instead of running: images/ must hold exactly the files the manifest "
                        "lists; reports every difference and exits 1 if there is one")
    p.add_argument("--master", default=None, help="Spark master, e.g. spark://host:7077 (default: local[*], or spark-submit's)")
    p.add_argument("--layout", choices=LAYOUTS, default="by-identity",
                   help="by-identity: the first-level subfolder names the person; flat: no identities")
    p.add_argument("--multi-face", choices=MULTI_FACE_POLICIES, default="largest",
                   help="several faces in one photo: keep the largest, skip the photo, or keep every face")
    p.add_argument("--images-per-partition", type=int, default=32,
                   help="images per Spark task (each task costs ~150 ms of scheduling; at least 4 tasks per core are made)")
    p.add_argument("--detect-side", type=int, default=512, help="detection runs on the photo shrunk to this many px")
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
    p.add_argument("--captioner-model", default=None,
                   help="model folder for the captioner (internvl: a transformers-format folder such as InternVL3-2B-hf)")
    p.add_argument("--caption-max-tokens", type=int, default=64, help="new tokens a model captioner may write")
    p.add_argument("--caption-batch-size", type=int, default=16, help="faces per captioning batch on the GPU")
    p.add_argument("--contact-sheet-faces", type=int, default=48, help="faces shown on contact_sheet.png")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=_run_prep)


def _run_prep(args) -> int:
    from dynamicid.prep.config import PrepConfig, ValidationConfig
    from dynamicid.prep.report import format_summary
    from dynamicid.prep.runner import run_prep

    if args.verify:
        from dynamicid.prep.verify import check_outputs

        check = check_outputs(args.verify)
        print(check.describe())
        return 0 if check.ok else 1
    if not args.input or not args.output:
        raise ConfigError("prep needs INPUT and OUTPUT folders (or --verify OUTPUT); see dynamicid prep --help")

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
        caption_max_tokens=args.caption_max_tokens,
        caption_batch_size=args.caption_batch_size,
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
    p.add_argument("--clip-model", default=None,
                   help="CLIP model (transformers layout) to compute CLIP-T: a folder or a Hugging Face repo id")
    p.add_argument("--mirror-check", action="store_true",
                   help="also analyse every image's mirror image: the face prompts of a face and its mirror must "
                        "agree (same emotion, tilt and view, opposite side); reports the share that do "
                        "(mirror_consistency), a check of the face-prompt measurement itself on real photos")
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
        mirror_check=args.mirror_check,
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
    from dynamicid.models.checkpoints import convert, unet_config_layout

    layout = unet_config_layout(args.unet_config) if args.unet_config else None
    for path in convert(args.source, args.target, to=args.to, layout=layout):
        print(f"wrote {path}")
    return 0


def _add_generate(sub) -> None:
    from dynamicid.hub import DEFAULTS
    from dynamicid.pipeline.request import MAX_OUTPUT_PIXELS

    p = sub.add_parser(
        "generate",
        help="generate images of one or several persons from one photo each",
        description=(
            "Generate images with DynamicID. Give each person with --person PHOTO; the i-th --face-prompt, "
            "--box and --target-landmarks apply to the i-th person ('-' for none). Several persons without boxes "
            "are placed automatically. Writes NAME_k.png and NAME_k.json (every setting, the seed, the boxes; "
            "readable by `dynamicid eval`), and with --save-gate-maps gates/NAME_k.png."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--base-model", default=None,
                   help="Stable Diffusion 1.5 (or a fine-tune) in diffusers layout: a folder or a Hugging Face repo id "
                        f"(default {DEFAULTS['base_model'].reference})")
    p.add_argument("--weights", default=None,
                   help="DynamicID weights, our safetensors or the authors' .bin files: a folder or a repo id (default "
                        f"{DEFAULTS['weights'].reference}, with InsightFace buffalo_l for the reference photos)")
    p.add_argument("--clip-image-encoder", default=None,
                   help="CLIP ViT-H/14 vision model: a folder or a repo id with a subfolder "
                        f"(default {DEFAULTS['clip_image_encoder'].reference})")
    p.add_argument("--prompt", required=True)
    p.add_argument("--negative-prompt", default=None)
    p.add_argument("--person", action="append", required=True, help="reference photo of a person (repeat per person)")
    p.add_argument("--face-prompt", action="append", default=[], help="e.g. 'in a happy expression, in side view'")
    p.add_argument("--box", action="append", default=[], help="x0,y0,x1,y1 as fractions of the image")
    p.add_argument("--target-landmarks", action="append", default=[], help="a 96x96 landmark map or prep's NAME.png")
    p.add_argument("--name", action="append", default=[], help="person names for the sidecar")
    p.add_argument("--output", required=True, help="output folder")
    p.add_argument("--file-name", default="dynamicid", help="stem of the written files")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--height", type=int, default=None, help="default 512 for one person, 768 for two, 1024 for more")
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--images", type=int, default=1, help="images per prompt")
    p.add_argument("--max-output-pixels", type=int, default=MAX_OUTPUT_PIXELS,
                   help="refuse a call whose height x width x images is larger (memory grows with it; raise it on a "
                        "device with the memory)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--id-scale", type=float, default=1.0)
    p.add_argument("--infer-scale", type=float, default=None,
                   help="the authors' infer_scale, the layout strength s: for the first --infer-end steps the gate "
                        "becomes w/(s+1) outside the boxes and w+s inside (default 2 with boxes or several persons, else 0)")
    p.add_argument("--infer-end", type=int, default=None,
                   help="the authors' infer_end: the number of denoising steps the layout boost lasts "
                        "(default 12 with boxes or several persons, else 0); routing holds at every step")
    p.add_argument("--no-gate", action="store_true",
                   help="turn SAA's gate off: IP-Adapter-style injection with no gate, no layout boost and no routing")
    p.add_argument("--save-gate-maps", action="store_true")
    p.add_argument("--device", default="cuda" if _cuda() else "cpu")
    p.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float16" if _cuda() else "float32")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_face_backend_options(p)
    p.set_defaults(handler=_run_generate)


def _add_download(sub) -> None:
    from dynamicid.hub import BUFFALO_L_URL, DEFAULTS

    lines = "; ".join(f"{part}: {source.reference} ({source.licence})" for part, source in DEFAULTS.items())
    p = sub.add_parser(
        "download",
        help="fetch the default models ahead of time (base, CLIP image encoder, DynamicID weights, buffalo_l)",
        description=(f"Fetches every model `generate` uses by default, into the Hugging Face cache (HF_HOME), or into "
                     f"--to DIR. {lines}; face pack: InsightFace buffalo_l from {BUFFALO_L_URL} (non-commercial "
                     "research use only). HF_ENDPOINT and HF_TOKEN are honoured."),
    )
    p.add_argument("--to", default=None, help="a folder to hold everything (use it later with HF_HOME=DIR)")
    p.add_argument("--fp16", action="store_true", help="the base model's half-precision files (for a GPU)")
    p.add_argument("--face-pack-url", default=BUFFALO_L_URL, help="where to fetch buffalo_l.zip from")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(handler=_run_download)


def _run_download(args) -> int:
    from dynamicid.hub import download_defaults

    done = download_defaults(args.to, "fp16" if args.fp16 else None, progress=not args.no_progress,
                             buffalo_url=args.face_pack_url)
    for part, folder in done.parts.items():
        print(f"{part:<19} {folder}")
    return 0


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


def _face_options_given(args) -> bool:
    from dynamicid.faces.analyzer import FaceAnalysisConfig

    defaults = FaceAnalysisConfig()
    return any(getattr(args, stage) != getattr(defaults, stage) or getattr(args, f"{stage}_model")
               for stage, _ in _FACE_STAGES)


def _nth(values: list[str], index: int) -> str | None:
    value = values[index] if index < len(values) else None
    return None if value in (None, "", "-") else value


def _run_generate(args) -> int:
    import torch

    from dynamicid.pipeline import DynamicIDPipeline, Person, check_request
    from dynamicid.pipeline.outputs import save_generation

    for option in ("face_prompt", "box", "target_landmarks", "name"):
        if len(getattr(args, option)) > len(args.person):
            raise ValueError(f"more --{option.replace('_', '-')} than --person")
    persons = []
    for i, photo in enumerate(args.person):
        box = _nth(args.box, i)
        if box is not None:
            try:
                box = tuple(float(v) for v in box.replace(" ", ",").split(",") if v)
            except ValueError:
                raise ValueError(f"--box {box!r} must be four numbers x0,y0,x1,y1") from None
        persons.append(Person(photo, _nth(args.face_prompt, i), _nth(args.target_landmarks, i), box,
                              _nth(args.name, i) or f"person{i}"))
    size = {1: 512, 2: 768}.get(len(persons), 1024)
    height, width = args.height or size, args.width or size
    # The whole request is checked before the model load, which takes many seconds.
    check_request(persons, height, width, args.steps, args.guidance, args.images, args.max_output_pixels)
    # Default weights are the authors', made with InsightFace's ArcFace: the pipeline then picks that analysis.
    face_config = _face_config(args) if args.weights or _face_options_given(args) else None
    pipe = DynamicIDPipeline.from_pretrained(args.base_model, args.weights, args.clip_image_encoder,
                                             face_config=face_config, device=args.device,
                                             dtype=getattr(torch, args.dtype))
    pipe.set_progress_bar_config(disable=args.no_progress)
    result = pipe(args.prompt, persons, negative_prompt=args.negative_prompt, num_inference_steps=args.steps,
                  guidance_scale=args.guidance, height=height, width=width,
                  num_images_per_prompt=args.images, seed=args.seed, id_scale=args.id_scale,
                  infer_scale=args.infer_scale, infer_end=args.infer_end, gate=not args.no_gate,
                  return_gate_maps=args.save_gate_maps, max_output_pixels=args.max_output_pixels)
    for path in save_generation(result, persons, args.output, args.file_name,
                                extra={"base_model": args.base_model, "weights": args.weights}):
        print(f"wrote {path}")
    return 0


def _add_serve(sub) -> None:
    from dynamicid.cli_options import add_options
    from dynamicid.serving.config import ServeConfig

    p = sub.add_parser(
        "serve",
        help="the web app and HTTP API: several persons, each with a face prompt and a box, in the browser",
        description=(
            "Serves DynamicID in the browser and over HTTP (Gradio). Models load once at start and take the same "
            "options as `generate` (folders or Hugging Face repo ids). Requests wait in a queue, one generation at a "
            "time per pipeline; the page shows the queue position and progress, and a request can be cancelled. "
            "Listens on 127.0.0.1 unless --host says otherwise; use --auth when you open it. The API: "
            "gradio_client's Client(URL).predict(prompt, photos, face_prompts_json, boxes_json, settings_json, "
            "api_name='/generate') returns the images and the JSON sidecar (README)."
        ),
    )
    add_options(p, ServeConfig)
    p.set_defaults(handler=_run_serve)


def _run_serve(args) -> int:
    from dynamicid.cli_options import config_from
    from dynamicid.serving.app import serve
    from dynamicid.serving.config import ServeConfig

    config = config_from(args, ServeConfig)
    _, _, url = serve(config, block=False)
    print(f"serving on {url} (ctrl-c to stop)", flush=True)
    import threading

    threading.Event().wait()  # until interrupted
    return 0


def _add_make_tiny_models(sub) -> None:
    p = sub.add_parser(
        "make-tiny-models",
        help="write tiny random models with the real interfaces, to smoke-test every command without weights",
        description=(
            "Writes DIR/sd15 (a Stable Diffusion 1.5-layout diffusers folder), DIR/clip-image (a CLIP vision model) "
            "DIR/dynamicid (DynamicID weights for them) and DIR/internvl (an InternVL captioner for prep --captioner "
            "internvl). The weights are random: images are noise, captions fall back to the measured ones."
        ),
    )
    p.add_argument("folder")
    p.set_defaults(handler=_run_make_tiny_models)


def _run_make_tiny_models(args) -> int:
    from dynamicid.tiny_models import make_tiny_models

    for name, path in make_tiny_models(args.folder).items():
        print(f"{name:<11} {path}")
    return 0


def _add_train(sub) -> None:
    from dynamicid.training.config import PORTRAIT_PROMPT

    train = sub.add_parser(
        "train",
        help="train DynamicID on prep's output: `anchor` (stage 1), then `reconfig` (stage 2)",
        description="Two-stage training. Several GPUs: `accelerate launch -m dynamicid.cli train anchor ...`.",
    )
    stages = train.add_subparsers(dest="stage", metavar="STAGE", required=True)

    def common(p) -> None:
        p.add_argument("data", help="prep's output folder (manifest.parquet and images/)")
        p.add_argument("output", help="where checkpoints, losses, samples and weights go")
        p.add_argument("--base-model", required=True,
                       help="Stable Diffusion 1.5 in diffusers layout: a folder or a Hugging Face repo id")
        p.add_argument("--clip-image-encoder", required=True,
                       help="CLIP ViT-H/14 vision model: a folder or a repo id with a subfolder (h94/IP-Adapter/models/image_encoder)")
        p.add_argument("--steps", type=int, default=1000)
        p.add_argument("--learning-rate", type=float, default=1e-4)
        p.add_argument("--weight-decay", type=float, default=1e-2)
        p.add_argument("--resolution", type=int, default=512)
        p.add_argument("--gradient-accumulation", type=int, default=1)
        p.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default="no")
        p.add_argument("--gradient-checkpointing", action="store_true")
        p.add_argument("--checkpoint-every", type=int, default=500)
        p.add_argument("--keep-checkpoints", type=int, default=3)
        p.add_argument("--sample-every", type=int, default=0, help="write a sample image every N steps (0: never)")
        p.add_argument("--sample-steps", type=int, default=20, help="denoising steps of each sample image")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--no-resume", action="store_true", help="start over even if OUTPUT has checkpoints")
        p.add_argument("--no-progress", action="store_true")

    anchor = stages.add_parser("anchor", help="stage 1: face encoder, SAA ID projections and LoRA",
                               formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    common(anchor)
    anchor.add_argument("--batch-size", type=int, default=8)
    anchor.add_argument("--lora-rank", type=int, default=128)
    anchor.add_argument("--init-weights", default=None, help="start from these DynamicID weights")
    anchor.add_argument("--drop-text", type=float, default=0.05)
    anchor.add_argument("--drop-image", type=float, default=0.05)
    anchor.add_argument("--drop-both", type=float, default=0.05)
    anchor.add_argument("--no-gate", action="store_true", help="train with SAA's gate off")
    anchor.add_argument("--no-gate-gradients", action="store_true", help="stop gradients through the gate")
    anchor.add_argument("--data-workers", type=int, default=2,
                        help="DataLoader workers that read and decode micro-batches ahead of the step (0: in the step)")
    anchor.add_argument("--no-clip-cache", action="store_true",
                        help="run the CLIP image encoder in every step instead of caching each face's features once")
    anchor.set_defaults(handler=_run_train)
    reconfig = stages.add_parser("reconfig", help="stage 2: IMR and KeyPointEncoder",
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    common(reconfig)
    reconfig.add_argument("--weights", required=True, help="stage-1 weights (ours or the authors')")
    reconfig.add_argument("--max-targets", type=int, default=32)
    reconfig.add_argument("--ldc-weight", type=float, default=1.0, help="lambda in L_DFM + lambda * L_LDC")
    reconfig.add_argument("--prompt", default=PORTRAIT_PROMPT)
    reconfig.add_argument("--imr-depth", type=int, default=1)
    reconfig.set_defaults(handler=_run_train)


def _run_train(args) -> int:
    from dynamicid.training.config import AnchorConfig, ReconfigConfig

    shared = dict(
        data=args.data, output=args.output, base_model=args.base_model, clip_image_encoder=args.clip_image_encoder,
        steps=args.steps, learning_rate=args.learning_rate, weight_decay=args.weight_decay, resolution=args.resolution,
        gradient_accumulation=args.gradient_accumulation, mixed_precision=args.mixed_precision,
        gradient_checkpointing=args.gradient_checkpointing, checkpoint_every=args.checkpoint_every,
        keep_checkpoints=args.keep_checkpoints, sample_every=args.sample_every, sample_steps=args.sample_steps, seed=args.seed,
        resume=not args.no_resume, progress=not args.no_progress,
    )
    if args.stage == "anchor":
        from dynamicid.training.stages import train_anchor

        config = AnchorConfig(**shared, batch_size=args.batch_size, lora_rank=args.lora_rank, init_weights=args.init_weights,
                              drop_text=args.drop_text, drop_image=args.drop_image, drop_both=args.drop_both,
                              gate=not args.no_gate, gate_gradients=not args.no_gate_gradients,
                              data_workers=args.data_workers, cache_clip=not args.no_clip_cache)
        result = train_anchor(config)
    else:
        from dynamicid.training.stages import train_reconfig

        config = ReconfigConfig(**shared, weights=args.weights, max_targets=args.max_targets,
                                ldc_weight=args.ldc_weight, prompt=args.prompt, imr_depth=args.imr_depth)
        result = train_reconfig(config)
    history = result["history"]
    first, last = history[0]["loss"], history[-1]["loss"]
    print(f"\ntrain {args.stage}: {len(history)} steps, loss {first:.4f} -> {last:.4f}")
    for name, path in result["paths"].items():
        print(f"  {name:<16} {path}")
    print(f"  loss curve       {os.path.join(config.output, 'loss.png')}")
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
    _add_generate(sub)
    _add_download(sub)
    _add_serve(sub)
    _add_make_tiny_models(sub)
    _add_train(sub)
    return parser


def read_config_file(path: str) -> dict:
    """Options from a TOML or JSON file, keyed as on the command line (dashes or underscores)."""
    import json
    import tomllib

    try:
        with open(path, "rb") as handle:
            values = json.load(handle) if path.lower().endswith(".json") else tomllib.load(handle)
    except OSError as err:
        raise ValueError(f"config file {path}: {err.strerror}") from None
    except (ValueError, tomllib.TOMLDecodeError) as err:
        raise ValueError(f"config file {path} is not valid {'JSON' if path.lower().endswith('.json') else 'TOML'}: {err}") from None
    if not isinstance(values, dict):
        raise ValueError(f"config file {path} must hold a table of options")
    return {key.replace("-", "_"): value for key, value in values.items()}


def _apply_config_file(parser: argparse.ArgumentParser, argv: list[str] | None) -> None:
    """Make a --config file's values the defaults of its subcommand, so explicit options still win."""
    args, _ = parser.parse_known_args(argv)
    path = getattr(args, "config", None)
    if not path:
        return
    sub = parser._subparsers._group_actions[0].choices[args.command]
    known = {action.dest: action for action in sub._actions}
    values = read_config_file(path)
    unknown = sorted(set(values) - set(known) - {"input", "output"})
    if unknown:
        raise ValueError(f"config file {path}: unknown option(s) {', '.join(unknown)}")
    for key, value in values.items():
        action = known.get(key)
        if action is not None and action.choices is not None and value not in action.choices:
            raise ValueError(f"config file {path}: {key} must be one of {', '.join(map(str, action.choices))}")
    sub.set_defaults(**{k: v for k, v in values.items() if k in known and not known[k].required
                        and k not in ("input", "output")})


def _configure_logging() -> None:
    """The toolkit's own messages (INFO and up) as plain lines on stderr; other libraries' warnings only."""
    import logging

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    package = logging.getLogger("dynamicid")
    if not package.handlers:
        package.addHandler(handler)
        package.setLevel(logging.INFO)


def _save_traceback() -> str:
    import tempfile
    import traceback

    with tempfile.NamedTemporaryFile("w", prefix="dynamicid-error-", suffix=".txt", delete=False) as handle:
        traceback.print_exc(file=handle)
        return handle.name


def main(argv: list[str] | None = None) -> int:
    _configure_logging()
    parser = build_parser()
    try:
        _apply_config_file(parser, argv)
    except ValueError as err:
        print(f"dynamicid: error: {err}", file=sys.stderr)
        return 1
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return args.handler(args)
    except (DynamicIDError, ValueError, OSError, FloatingPointError) as err:
        print(f"dynamicid {args.command}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except Exception as err:  # a bug: one paragraph for the user, the traceback in a file for the report
        print(f"dynamicid {args.command}: internal error: {type(err).__name__}: {err}. This is a bug in dynamicid; "
              f"the traceback is in {_save_traceback()}; please attach it to a bug report.", file=sys.stderr)
        return 70


if __name__ == "__main__":  # also the entry for spark-submit
    sys.exit(main())

"""`dynamicid generate` and `dynamicid download`. Command modules print their report to stdout; the library logs."""

from __future__ import annotations

from typing import Any

from dynamicid.generation.config import DownloadConfig, GenerateConfig
from dynamicid.options import Command, config_from


def run_generate(args: Any) -> int:
    from dynamicid.generation.loading import load_for_use
    from dynamicid.generation.outputs import check_output_folder, identity_check_lines, save_generation
    from dynamicid.generation.request import check_request
    from dynamicid.responsible.credentials import ContentSigner

    config = config_from(args, GenerateConfig)
    persons = config.persons()
    settings = config.settings()
    height, width = config.size()
    # The whole request is checked before the model load, which takes many seconds.
    check_request(persons, height, width, settings.steps, settings.guidance, config.images, config.limits)
    signer = ContentSigner.build(config.credentials)
    check_output_folder(config.output)
    pipe = load_for_use(
        config.base_model,
        config.weights,
        config.clip_image_encoder,
        config.faces,
        config.device,
        config.dtype,
        progress=config.progress,
    )
    if config.consent.active:
        pipe.use_consent(config.consent)
    result = pipe(
        config.prompt,
        persons,
        negative_prompt=config.negative_prompt,
        num_inference_steps=config.steps,
        guidance_scale=config.guidance,
        height=height,
        width=width,
        num_images_per_prompt=config.images,
        seed=settings.concrete_seed(),
        id_scale=config.id_scale,
        infer_scale=config.infer_scale,
        infer_end=config.infer_end,
        gate=config.gate,
        return_gate_maps=config.save_gate_maps,
        max_output_pixels=config.limits.max_output_pixels,
        max_work=config.limits.max_work,
        watermark=config.watermark,
        check_identities=config.check_identities,
        retries=config.retries,
    )
    saved = save_generation(
        result,
        persons,
        config.output,
        config.file_name,
        extra={"base_model": config.base_model, "weights": config.weights},
        overwrite=config.overwrite,
        signer=signer,
    )
    for path in saved.files:
        print(f"wrote {path}")
    if config.check_identities:
        print("\n".join(identity_check_lines(result.metadata["identity_check"])))
    return 0


def run_download(args: Any) -> int:
    from dynamicid.hub import BUFFALO_L_URL, download_defaults

    config = config_from(args, DownloadConfig)
    done = download_defaults(
        config.to,
        "fp16" if config.fp16 else None,
        progress=config.progress,
        buffalo_url=config.face_pack_url or BUFFALO_L_URL,
    )
    for part, folder in done.parts.items():
        print(f"{part:<19} {folder}")
    return 0


def _download_description() -> str:
    from dynamicid.hub import BUFFALO_L_URL, DEFAULTS

    lines = "; ".join(f"{part}: {source.reference} ({source.licence})" for part, source in DEFAULTS.items())
    return (
        f"Fetches every model `generate` uses by default, into the Hugging Face cache (HF_HOME), or into --to "
        f"DIR. {lines}; face pack: InsightFace buffalo_l from {BUFFALO_L_URL} (non-commercial research use "
        "only). HF_ENDPOINT and HF_TOKEN are honoured."
    )


COMMANDS = (
    Command(
        "generate",
        "generate images of one or several persons from one photo each",
        "Generate images with DynamicID. Give each person with --person PHOTO; the i-th --face-prompt, --box and "
        "--target-landmarks apply to the i-th person ('-' for none). Several persons without boxes are placed "
        "automatically. Writes NAME_k.png and NAME_k.json (every setting, the seed, the boxes; readable by "
        "`dynamicid eval`), and with --save-gate-maps gates/NAME_k.png.",
        GenerateConfig,
        run_generate,
    ),
    Command(
        "download",
        "fetch the default models ahead of time (base, CLIP image encoder, DynamicID weights, buffalo_l)",
        _download_description(),
        DownloadConfig,
        run_download,
    ),
)

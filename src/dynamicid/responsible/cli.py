"""`dynamicid verify`: is this image marked, by which model, and what does its metadata say."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass

from dynamicid.errors import DynamicIDError
from dynamicid.options import Command, config_from, option

EXIT_ALL_MARKED, EXIT_UNMARKED, EXIT_ERROR = 0, 1, 2


@dataclass(frozen=True)
class VerifyConfig:
    images: tuple[str, ...] = option(help="images to check", factory=tuple, positional="many")
    model_version: str | None = option(
        None, "the published model version the payload should name, for images without their sidecar"
    )
    c2pa_trust: str | None = option(
        None, "PEM file of the root certificates a C2PA signer must chain to (reported as c2pa_trusted)"
    )
    json: bool = option(False, "print a JSON list, one object per image, instead of the table")


def run_verify(args) -> int:
    from dynamicid.responsible.verify import check_image, table

    config = config_from(args, VerifyConfig)
    checks, failed = [], []
    for path in config.images:
        try:
            checks.append(check_image(path, config.model_version, config.c2pa_trust))
        except (DynamicIDError, OSError) as err:  # one bad file is reported; the others are still checked
            failed.append({"path": path, "error": str(err)})
    if config.json:
        print(json.dumps([check.as_dict() for check in checks] + failed, indent=2))
    else:
        if checks:
            print(table(checks))
        for entry in failed:
            print(f"{entry['path']}: error: {entry['error']}", file=sys.stderr)
    if failed:
        return EXIT_ERROR
    return EXIT_ALL_MARKED if all(check.watermarked for check in checks) else EXIT_UNMARKED


COMMANDS = (
    Command(
        "verify",
        "check images for the toolkit's watermark, its payload, C2PA and provenance metadata",
        "For each IMAGE: whether the invisible watermark is there (read from the pixels, so stripped metadata "
        "does not matter) and its payload; whether the payload matches the sidecar beside the image or "
        "--model-version; whether its C2PA manifest is valid (and trusted, with --c2pa-trust) and binds the "
        "same watermark; and the XMP provenance metadata. Exit 0 when "
        "every image is marked, 1 when one is not, 2 when one cannot be read.",
        VerifyConfig,
        run_verify,
    ),
)

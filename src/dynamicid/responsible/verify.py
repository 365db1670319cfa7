"""`dynamicid verify IMAGE...` (issue 37 §3): per image, whether it carries the watermark and its payload,
whether that payload matches the image's sidecar or a given model version, its C2PA state and its
provenance metadata. The watermark is read from the pixels, so a file whose metadata was stripped is still
recognised."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from typing import Any

from dynamicid.errors import InputError


@dataclass
class ImageCheck:
    path: str
    watermarked: bool
    payload: str | None  # the code word read (8 hex digits), when watermarked
    score: float  # the best code word's agreement (reported as marked at watermark.MARKED_SCORE)
    matches: str  # "sidecar", "model", "no" (a record was given and differs) or "unchecked"
    c2pa: str  # "valid", "invalid" (tampered, or a broken manifest) or "none"
    c2pa_trusted: bool | None  # the signer chains to --c2pa-trust's anchors; None when none were given
    c2pa_signer: str | None  # the signing certificate's common name
    c2pa_binding: str  # the manifest's watermark soft binding against the pixels: "match", "differs" or "none"
    metadata: dict[str, str] | None  # the XMP provenance fields, None when stripped or never written

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _matches(path: str, payload: str | None, model_version: str | None) -> str:
    """Against the sidecar beside the image (NAME.json with a watermark record), else a model version."""
    from dynamicid.responsible.watermark import MODEL_BITS, short_id

    if payload is None:
        return "unchecked"
    sidecar = os.path.splitext(path)[0] + ".json"
    if os.path.isfile(sidecar):
        try:
            with open(sidecar, encoding="utf-8") as handle:
                record = json.load(handle).get("watermark") or {}
        except (OSError, ValueError, AttributeError):
            record = {}
        if record.get("payload"):
            return "sidecar" if record["payload"] == payload else "no"
    if model_version:
        model_id = int(payload, 16) >> (32 - MODEL_BITS)
        return "model" if model_id == short_id(model_version, MODEL_BITS) else "no"
    return "unchecked"


def check_image(path: str, model_version: str | None = None, trust_anchors: str | None = None) -> ImageCheck:
    """One image's check; an unreadable file is an InputError naming it. `trust_anchors`: a PEM file of
    the root certificates a C2PA signer must chain to for `c2pa_trusted`."""
    import numpy as np

    from dynamicid.imagefile import Rejected, load_image
    from dynamicid.responsible.credentials import read_credentials
    from dynamicid.responsible.provenance import read_provenance
    from dynamicid.responsible.watermark import shared_watermarker

    try:
        rgb = load_image(path).rgb
    except Rejected as rejection:
        raise InputError(f"{path}: {rejection.reason}: {rejection.message}") from None
    reading = shared_watermarker(threads=0).read(np.ascontiguousarray(rgb))
    payload = reading.word if reading.marked else None
    credentials = read_credentials(path, trust_anchors=trust_anchors)
    binding = (
        "none" if credentials.soft_binding is None else "match" if credentials.soft_binding == payload else "differs"
    )
    return ImageCheck(
        path,
        reading.marked,
        payload,
        round(reading.score, 4),
        _matches(path, payload, model_version),
        credentials.state,
        credentials.trusted,
        credentials.issuer,
        binding,
        read_provenance(path),
    )


def table(checks: list[ImageCheck]) -> str:
    """The checks as a plain table, one line per image."""
    head = f"{'image':<40} {'watermark':<10} {'payload':<9} {'matches':<9} {'c2pa':<8} metadata"
    lines = [head]
    for check in checks:
        made = f"{check.metadata['source_type']} ({check.metadata['creator_tool']})" if check.metadata else "-"
        lines.append(
            f"{os.path.basename(check.path)[:40]:<40} {'yes' if check.watermarked else 'NO':<10} "
            f"{check.payload or '-':<9} {check.matches:<9} {check.c2pa:<8} {made}"
        )
    return "\n".join(lines)

"""Cosine thresholds per identity embedder, measured, for deciding "the same person" and "the same photo".

Each embedder's cosines have their own scale (dlib's 128-d vectors of two strangers are often 0.8 apart;
ArcFace-family vectors near 0). Measured on ../shared/faces (16 photos of 6 people, and each photo
re-encoded at JPEG quality 50, halved, and cropped by 6% per side) by `benchmarks/identity_thresholds.py`
(results-identity-thresholds.json):

| embedder | same person, lowest | strangers, highest | one person, other photos, highest | cropped copies, lowest |
|---|---|---|---|---|
| dlib-resnet | 0.936 | 0.889 | 0.974 | 0.999 |
| insightface (EdgeFace-XS) | 0.556 | 0.173 | 0.824 | 0.939 |

`same_person` sits between the first two columns, `near_copy` between the last two. (Re-encoded and
halved copies differ by at most 8 hash bits, different photos by at least 18, so they need no cosine
beyond `same_person`; a crop moves the alignment and up to 18 bits, so it also needs `near_copy`.)"""

from __future__ import annotations

from dataclasses import dataclass

from dynamicid.errors import ConfigError


@dataclass(frozen=True)
class IdentityThresholds:
    same_person: float  # cosine at or above which two faces are taken for one person
    near_copy: float  # cosine at or above which two faces whose hashes are close are one photo


MEASURED = {
    "dlib-resnet": IdentityThresholds(same_person=0.91, near_copy=0.985),
    "dlib-resnet-native": IdentityThresholds(same_person=0.91, near_copy=0.985),
    "insightface": IdentityThresholds(same_person=0.36, near_copy=0.88),
}


def thresholds_for(embedder: str, same_person: float | None = None, near_copy: float | None = None):
    """The measured thresholds of `embedder`, with any given value in their place. An embedder nobody has
    measured needs both values given."""
    measured = MEASURED.get(embedder)
    if measured is None and (same_person is None or near_copy is None):
        raise ConfigError(
            f"no measured identity thresholds for the embedder {embedder!r} (measured: {', '.join(MEASURED)}); "
            "give --same-person-cosine and --near-copy-cosine, measured on photos whose people you know"
        )
    return IdentityThresholds(
        same_person if same_person is not None else measured.same_person,  # type: ignore[union-attr]
        near_copy if near_copy is not None else measured.near_copy,  # type: ignore[union-attr]
    )

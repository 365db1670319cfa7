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
beyond `same_person`; a crop moves the alignment and up to 18 bits, so it also needs `near_copy`.)

Two operating points, because one wrong edge merges two whole people in a cluster while one wrong pair
costs a verification only one answer:
- `same_person`, the verification point: a face against a person (strangers in labelled folders, a
  photo under two people, new faces joining earlier people). For dlib it is dlib's published point, a
  Euclidean distance of 0.6 between descriptors (99.38% on LFW): the port's descriptors have norms near
  1.41 (1.32 to 1.53 here), where 0.6 is a cosine of 1 - 0.6^2 / (2 * 1.41^2) = 0.91.
- `cluster_edge`, stricter, for the edges of the cluster layout's graph. For dlib it is the distance
  dlib's own face-clustering example draws its graph at, 0.5, a cosine of 0.937. EdgeFace publishes no
  point, so for it the edge is halfway from the verification point to the lowest same-person cosine
  measured (0.556), 0.46. `benchmarks/clustering.py` scores both points on these photos."""

from __future__ import annotations

from dataclasses import dataclass

from dynamicid.errors import ConfigError


@dataclass(frozen=True)
class IdentityThresholds:
    same_person: float  # cosine at or above which two faces are taken for one person
    near_copy: float  # cosine at or above which two faces whose hashes are close are one photo
    cluster_edge: float  # cosine at or above which two unlabelled faces are joined in the cluster graph


MEASURED = {
    "dlib-resnet": IdentityThresholds(same_person=0.91, near_copy=0.985, cluster_edge=0.937),
    "dlib-resnet-native": IdentityThresholds(same_person=0.91, near_copy=0.985, cluster_edge=0.937),
    "insightface": IdentityThresholds(same_person=0.36, near_copy=0.88, cluster_edge=0.46),
}


def thresholds_for(
    embedder: str, same_person: float | None = None, near_copy: float | None = None, cluster_edge: float | None = None
) -> IdentityThresholds:
    """The measured thresholds of `embedder`, with any given value in their place. An embedder nobody has
    measured needs `same_person` and `near_copy` given; its cluster edge is then `same_person`'s unless given."""
    measured = MEASURED.get(embedder)
    if measured is None:
        if same_person is None or near_copy is None:
            raise ConfigError(
                f"no measured identity thresholds for the embedder {embedder!r} (measured: {', '.join(MEASURED)});"
                " give --same-person-cosine and --near-copy-cosine (and --cluster-cosine for the cluster layout), "
                "measured on photos whose people you know"
            )
        return IdentityThresholds(same_person, near_copy, cluster_edge if cluster_edge is not None else same_person)
    return IdentityThresholds(
        same_person if same_person is not None else measured.same_person,
        near_copy if near_copy is not None else measured.near_copy,
        cluster_edge if cluster_edge is not None else measured.cluster_edge,
    )

"""Scoring one image against its persons, with the same face analysis as prep.

Matching and outcomes: `faces.identity_check` (the classifier `generate --check-identities` and `serve` use
too): detected faces are assigned to persons by the Hungarian algorithm, a person with a box limited to the
faces inside it, and each person gets an outcome (ok, missing, swapped, duplicate, blended) and the image
one more (extra_face). Its docstring gives each figure with its source.
FaceSim: cosine between a matched face's embedding and the person's reference embedding (the mean of the
person's reference photos); a person left without a face scores 0. Sim(Ref) is the same against the photo
generation was given, Sim(GT) against the person's other photos (`ground_truth`), CP the copy-paste score
between those two, ID-Conf how far the person's best face is ahead of the next.
Leak margin: for a matched face, its similarity to its own person minus its largest similarity to
any other person of the image (needs two or more persons); negative means the face looks more
like someone else.
Face-prompt agreement: the requested face prompt against the one measured on the matched face,
attribute by attribute (emotion, up/down tilt, front/side view, and the side when one is asked).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dynamicid.evaluation.inputs import EvalInputError, EvalItem, Person
from dynamicid.faces import FaceAnalyzer, face_prompt
from dynamicid.faces.identity_check import CheckThresholds, IdentityCheck, check_faces, check_thresholds
from dynamicid.faces.types import FaceAnalysis
from dynamicid.imagefile import DecodedImage, Rejected, load_image


def unit(vector: np.ndarray) -> np.ndarray:
    vector = np.asarray(vector, dtype=np.float64)
    return vector / (np.linalg.norm(vector) + 1e-12)


def _overlap(a: tuple, b: tuple) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def prompt_agreement(requested: str, measured: str) -> dict:
    """Per-attribute agreement and the fraction of requested attributes met."""
    want, got = face_prompt.parse(requested), face_prompt.parse(measured)
    checks = {
        "emotion_match": want.emotion == got.emotion,
        "tilt_match": want.tilt == got.tilt,
        "view_match": want.view == got.view,
        "side_match": (want.side == got.side) if (want.view == "side" and want.side) else None,
    }
    counted = [v for v in checks.values() if v is not None]
    return checks | {"prompt_agreement": sum(counted) / len(counted)}


class ReferenceBank:
    """Reference embeddings, computed once per photo."""

    def __init__(self, analyzer: FaceAnalyzer):
        self.analyzer = analyzer
        self._photos: dict[str, np.ndarray] = {}
        self._thumbnails: dict[str, np.ndarray] = {}

    def photo(self, path: str) -> np.ndarray:
        if path not in self._photos:
            try:
                image = load_image(path)
            except Rejected as rejection:
                raise EvalInputError(f"reference photo {path}: {rejection.reason}: {rejection.message}") from None
            faces = self.analyzer.analyze(image.rgb, max_faces=1)
            if not faces:
                raise EvalInputError(f"reference photo {path}: no face was detected")
            self._photos[path] = unit(faces[0].embedding)
            self._thumbnails[path] = faces[0].aligned[::4, ::4].copy()  # 128 px aligned face for the report
        return self._photos[path]

    def thumbnail(self, path: str) -> np.ndarray:
        self.photo(path)
        return self._thumbnails[path]

    def person(self, person: Person) -> np.ndarray:
        return self.mean(person.references)

    def mean(self, paths: tuple[str, ...]) -> np.ndarray:
        return unit(np.mean([self.photo(p) for p in paths], axis=0))


@dataclass
class ImageScore:
    rows: list[dict]  # one per person
    faces: list[FaceAnalysis]
    matches: dict[int, int]
    image: DecodedImage
    check: IdentityCheck


class ImageAnalyses:
    """Faces of the last image analysed: consecutive items that name the same image share one analysis."""

    def __init__(self, analyzer: FaceAnalyzer):
        self.analyzer = analyzer
        self._last: tuple[str, DecodedImage, list[FaceAnalysis]] | None = None
        self._mirrored: list[FaceAnalysis] | None = None

    def get(self, path: str) -> tuple[DecodedImage, list[FaceAnalysis]]:
        if self._last is None or self._last[0] != path:
            try:
                image = load_image(path)
            except Rejected as rejection:
                raise EvalInputError(f"image {path}: {rejection.reason}: {rejection.message}") from None
            self._last = (path, image, self.analyzer.analyze(image.rgb))
            self._mirrored = None
        return self._last[1], self._last[2]

    def mirrored(self, path: str) -> list[FaceAnalysis]:
        """The faces of the image's mirror image (left and right swapped), analysed once."""
        image, _ = self.get(path)
        if self._mirrored is None:
            self._mirrored = self.analyzer.analyze(np.ascontiguousarray(image.rgb[:, ::-1]))
        return self._mirrored


_FLIPPED_SIDE = {"left": "right", "right": "left", None: None}


def mirror_check(face: FaceAnalysis, width: int, mirrored: list[FaceAnalysis]) -> dict:
    """The face prompt measured on the same face in the mirror image, and whether the two agree as a mirror
    demands: the same emotion, tilt and view, the opposite side. A face the mirror analysis misses disagrees."""
    mirrored_box = (width - face.box.x1, face.box.y0, width - face.box.x0, face.box.y1)
    twin = max(mirrored, key=lambda f: _overlap(mirrored_box, (f.box.x0, f.box.y0, f.box.x1, f.box.y1)), default=None)
    if twin is None or _overlap(mirrored_box, (twin.box.x0, twin.box.y0, twin.box.x1, twin.box.y1)) < 0.3:
        return {"mirror_face_prompt": None, "mirror_consistent": False}
    a, b = face_prompt.parse(face.face_prompt), face_prompt.parse(twin.face_prompt)
    consistent = (a.emotion, a.tilt, a.view, _FLIPPED_SIDE[a.side]) == (b.emotion, b.tilt, b.view, b.side)
    return {"mirror_face_prompt": twin.face_prompt, "mirror_consistent": consistent}


# A person's row before any face is matched: nothing measured, FaceSim 0.
UNMATCHED = {
    "face_sim": 0.0,
    "sim_ref": None,
    "sim_gt": None,
    "copy_paste": None,
    "id_conf": None,
    "looks_like": None,
    "leak_margin": None,
    "measured_face_prompt": None,
    "emotion_match": None,
    "tilt_match": None,
    "view_match": None,
    "side_match": None,
    "prompt_agreement": None,
    "yaw": None,
    "pitch": None,
    "box": None,
}


def _matched_row(index: int, person, face, face_at: int, similarity: np.ndarray, decode_scale: float) -> dict:
    """The measurements of the face matched to person `index`: FaceSim, the leak margin against the other
    requested persons, the measured face prompt and its agreement with the requested one."""
    others = [similarity[j, face_at] for j in range(similarity.shape[0]) if j != index]
    row = {
        "face_sim": float(similarity[index, face_at]),
        "leak_margin": float(similarity[index, face_at] - max(others)) if others else None,
        "measured_face_prompt": face.face_prompt,
        "yaw": face.pose.yaw,
        "pitch": face.pose.pitch,
        "box": face.box.scaled(1.0 / decode_scale).as_list(),  # full-resolution pixels
    }
    if person.face_prompt:
        row |= prompt_agreement(person.face_prompt, face.face_prompt)
    return row


def score_image(
    item: EvalItem,
    analyses: ImageAnalyses,
    bank: ReferenceBank,
    mirror: bool = False,
    thresholds: CheckThresholds | None = None,
) -> ImageScore:
    """One row per requested person; with `mirror`, each matched face's face prompt is also checked against
    the mirror image's (`mirror_check`)."""
    image, faces = analyses.get(item.image)
    height, width = image.rgb.shape[:2]
    thresholds = thresholds or check_thresholds(bank.analyzer.config.embedder)
    check = check_faces(
        faces,
        (width, height),
        np.stack([bank.person(p) for p in item.persons]),
        [p.box for p in item.persons],
        thresholds,
        [bank.mean(p.ground_truth) if p.ground_truth else None for p in item.persons],
        np.stack([bank.mean(p.used or p.references) for p in item.persons]),
    )
    similarity = check.similarity
    assert similarity is not None  # check_faces always gives it
    matches = {i: p.face for i, p in enumerate(check.persons) if p.face is not None}
    names = [p.name for p in item.persons]
    rows = []
    for index, (person, outcome) in enumerate(zip(item.persons, check.as_records(names))):
        row = {
            "image": item.image,
            "person": person.name,
            "references": list(person.references),
            "prompt": item.prompt,
            "persons_in_image": len(item.persons),
            "faces_in_image": len(faces),
            "face_detected": index in matches,
            "face_index": matches.get(index),
            "matched_by": ("box" if person.box else "similarity") if index in matches else None,
            "requested_box": list(person.box) if person.box else None,
            "requested_face_prompt": person.face_prompt,
            "outcome": outcome["outcome"],
            "image_outcome": check.outcome,
        } | UNMATCHED
        row |= {key: outcome[key] for key in ("sim_ref", "sim_gt", "copy_paste", "id_conf", "looks_like")}
        if index in matches:
            face = faces[matches[index]]
            row |= _matched_row(index, person, face, matches[index], similarity, image.decode_scale)
            if mirror:
                row |= mirror_check(face, width, analyses.mirrored(item.image))
        rows.append(row)
    minimum = min((r["face_sim"] for r in rows), default=None)
    for row in rows:
        row["min_face_sim"] = minimum
    return ImageScore(rows, faces, matches, image, check)

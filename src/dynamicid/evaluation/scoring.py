"""Scoring one image against its persons, with the same face analysis as prep.

FaceSim: cosine between a detected face's embedding and the person's reference embedding (the
mean of the person's reference photos). A person with a box (where the person was asked to be) gets
the face whose centre lies in that box, the one overlapping it most; the other persons get faces
greedily on the similarity matrix (largest first, each face and person used once). A person left
without a face scores 0. Without boxes, a swap of identities cannot be seen: matching by
similarity would follow the swap.
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
from dynamicid.faces.types import FaceAnalysis
from dynamicid.imagefile import DecodedImage, Rejected, load_image


def unit(vector: np.ndarray) -> np.ndarray:
    vector = np.asarray(vector, dtype=np.float64)
    return vector / (np.linalg.norm(vector) + 1e-12)


def greedy_match(similarity: np.ndarray) -> dict[int, int]:
    """person index -> face index, taking the largest remaining similarity each time."""
    matches: dict[int, int] = {}
    if similarity.size == 0:
        return matches
    remaining = similarity.astype(np.float64).copy()
    for _ in range(min(remaining.shape)):
        person, face = np.unravel_index(np.argmax(remaining), remaining.shape)
        matches[int(person)] = int(face)
        remaining[person, :] = -np.inf
        remaining[:, face] = -np.inf
    return matches


def _overlap(a: tuple, b: tuple) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def match_faces(similarity: np.ndarray, person_boxes: list, face_boxes: list) -> tuple[dict[int, int], dict[int, str]]:
    """person -> face, and how each was matched ("box" or "similarity"). Boxes are normalised x0, y0, x1, y1."""
    matches: dict[int, int] = {}
    taken: set[int] = set()
    for person, box in enumerate(person_boxes):
        if box is None:
            continue
        inside = [
            (face, _overlap(box, fbox))
            for face, fbox in enumerate(face_boxes)
            if face not in taken
            and box[0] <= (fbox[0] + fbox[2]) / 2 <= box[2]
            and box[1] <= (fbox[1] + fbox[3]) / 2 <= box[3]
        ]
        if inside:
            face = max(inside, key=lambda pair: pair[1])[0]
            matches[person] = face
            taken.add(face)
    how = {person: "box" for person in matches}
    free_people = [p for p in range(similarity.shape[0]) if p not in matches and person_boxes[p] is None]
    free_faces = [f for f in range(similarity.shape[1]) if f not in taken]
    for person, face in greedy_match(similarity[np.ix_(free_people, free_faces)]).items():
        matches[free_people[person]] = free_faces[face]
        how[free_people[person]] = "similarity"
    return matches, how


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
        return unit(np.mean([self.photo(p) for p in person.references], axis=0))


@dataclass
class ImageScore:
    rows: list[dict]  # one per person
    faces: list[FaceAnalysis]
    matches: dict[int, int]
    image: DecodedImage


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


def score_image(item: EvalItem, analyses: ImageAnalyses, bank: ReferenceBank, mirror: bool = False) -> ImageScore:
    """One row per requested person; with `mirror`, each matched face's face prompt is also checked against
    the mirror image's (`mirror_check`)."""
    image, faces = analyses.get(item.image)
    references = np.stack([bank.person(p) for p in item.persons])  # (persons, D), unit rows
    face_units = np.stack([unit(f.embedding) for f in faces]) if faces else np.zeros((0, references.shape[1]))
    similarity = references @ face_units.T  # (persons, faces) cosines
    height, width = image.rgb.shape[:2]
    face_boxes = [(f.box.x0 / width, f.box.y0 / height, f.box.x1 / width, f.box.y1 / height) for f in faces]
    matches, how = match_faces(similarity, [p.box for p in item.persons], face_boxes)
    rows = []
    for index, person in enumerate(item.persons):
        row = {
            "image": item.image,
            "person": person.name,
            "references": list(person.references),
            "prompt": item.prompt,
            "persons_in_image": len(item.persons),
            "faces_in_image": len(faces),
            "face_detected": index in matches,
            "face_index": matches.get(index),
            "matched_by": how.get(index),
            "requested_box": list(person.box) if person.box else None,
            "requested_face_prompt": person.face_prompt,
        } | UNMATCHED
        if index in matches:
            face = faces[matches[index]]
            row |= _matched_row(index, person, face, matches[index], similarity, image.decode_scale)
            if mirror:
                row |= mirror_check(face, width, analyses.mirrored(item.image))
        rows.append(row)
    minimum = min((r["face_sim"] for r in rows), default=None)
    for row in rows:
        row["min_face_sim"] = minimum
    return ImageScore(rows, faces, matches, image)

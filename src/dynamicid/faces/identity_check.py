"""Which face is which person in a generated image, and what went wrong (issue 38). `eval`, `generate
--check-identities` and `serve` share this one classifier.

Matching: the detected faces are assigned to the requested persons by the Hungarian algorithm
(`scipy.optimize.linear_sum_assignment`) on their cosine similarities, the assignment that maximises the
total similarity. A person given a box (where they were asked to be) can only take a face whose centre lies
in that box, so the face in A's box is judged as A's.

A face "belongs" to the person it is most similar to when that similarity reaches the embedder's
verification point (`identity_thresholds.same_person`); otherwise it belongs to nobody (a stranger).

Each person's outcome:
- `missing`: no face for them, or their face is not them and is nobody else's either;
- `blended`: their face is about as similar to two persons, closer than strangers get to anyone
  (`blend_top`, `blend_floor`, `blend_margin`): a face that mixes two people;
- `swapped`: their face belongs to another person who has no face of their own (A's box shows B, and B's
  shows A or nothing);
- `duplicate`: they appear twice (two faces belong to them), or their face belongs to a person who is
  also shown in their own place (one person twice, so this one is lost);
- `ok`.
An image's outcome is the most telling of its persons' (swapped, duplicate, blended, missing), else
`extra_face` when a face matched nobody, else `ok`.

Figures per matched face (g: the face's embedding; r: the reference photo's; t: the mean of the person's
other photos, when given; all unit vectors; theta(a, b) = arccos(a . b), the angle between two):
- Sim(Ref) = g . r and Sim(GT) = g . t (WithAnyone's MultiID-Bench, Xu et al. 2025, arXiv:2510.14975).
- CP, its copy-paste score: (theta(g, t) - theta(g, r)) / max(theta(r, t), eps). 1 when the face is the
  reference photo's (theta(g, r) = 0), about -1 when it is the other photo's, 0 midway. Written here from
  the definition in that paper.
- ID-Conf, UMO's identity-confusion score (Cheng et al. 2025, arXiv:2509.06818; the definition as its
  evaluation script `eval/id_conf_xversebench.py` computes it): for each person, with s1 and s2 the
  similarities of their best and second-best faces in the image, min(1, (s1 - s2) / s1), 0 when s1 <= 0,
  and not measured (None) when the image has fewer than two faces. Low means their face could as well be
  someone else's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

OUTCOMES = ("ok", "missing", "swapped", "duplicate", "blended")
IMAGE_OUTCOMES = (*OUTCOMES, "extra_face")
# How telling each failure is when an image has several: a swap explains a "missing" beside it, etc.
_SEVERITY = ("swapped", "duplicate", "blended", "missing", "extra_face", "ok")
_FORBIDDEN = 1e6  # the cost of a face outside a person's box


@dataclass(frozen=True)
class CheckThresholds:
    """The cosines the classifier decides by, for one embedder (measured: `benchmarks/identity_outcomes.py`)."""

    embedder: str
    same_person: float  # the embedder's verification point: a face at or above it is the person
    blend_top: float  # a blend's closer person is at least this similar (above what strangers reach) ...
    blend_floor: float  # ... its other person at least this ...
    blend_margin: float  # ... and the two are at most this far apart


# Measured on the 10 morphs of 5 people of ../shared/faces and their real photos (benchmarks/
# identity_outcomes.py, RESULTS.md): a morph's closer person is 0.898 or more similar (strangers reach
# 0.889), its other person 0.842 or more, and the two are 0.002 to 0.086 apart; a real photo is 0.096 or
# more ahead of the next person. The margin's room is narrow, and RESULTS says so.
MEASURED = {
    "dlib-resnet": CheckThresholds("dlib-resnet", 0.91, 0.89, 0.84, 0.09),
    "dlib-resnet-native": CheckThresholds("dlib-resnet-native", 0.91, 0.89, 0.84, 0.09),
}


def check_thresholds(embedder: str) -> CheckThresholds:
    """The measured thresholds for `embedder`. Blends were measured for dlib only: another embedder uses its
    verification point for both similarities and a margin of 0.04, and reports say so (`measured_blend`)."""
    from dynamicid.faces.identity_thresholds import thresholds_for

    point = thresholds_for(embedder).same_person
    return MEASURED.get(embedder) or CheckThresholds(embedder, point, point, point, 0.04)


def measured_blend(embedder: str) -> bool:
    return embedder in MEASURED


def unit_rows(vectors) -> np.ndarray:
    rows = np.asarray(vectors, dtype=np.float64)
    return rows / (np.linalg.norm(rows, axis=-1, keepdims=True) + 1e-12)


def check_faces(
    faces: list,
    size: tuple[int, int],
    references: np.ndarray,
    person_boxes: list,
    thresholds: CheckThresholds,
    ground_truth: list | None = None,
    used: np.ndarray | None = None,
) -> IdentityCheck:
    """`check_identities` of an image's analysed faces (`FaceAnalysis`, with embeddings) against the persons'
    reference embeddings (persons, D). `size` is the analysed image's (width, height). `used`: the
    embeddings of the photos generation was given (default: the references); `ground_truth`: per person,
    an embedding of their other photos, or None."""
    width, height = size
    face_units = unit_rows([f.embedding for f in faces]) if faces else np.zeros((0, references.shape[1]))
    references = unit_rows(references)
    face_boxes = [(f.box.x0 / width, f.box.y0 / height, f.box.x1 / width, f.box.y1 / height) for f in faces]
    truths = [None if t is None else unit_rows(t) for t in ground_truth] if ground_truth else None
    given = references if used is None else unit_rows(used)
    similarity = references @ face_units.T
    return check_identities(similarity, person_boxes, face_boxes, thresholds, face_units, given, truths)


@dataclass
class PersonOutcome:
    outcome: str
    face: int | None  # the index of the face matched to the person
    sim_ref: float | None
    sim_gt: float | None = None
    copy_paste: float | None = None
    id_conf: float | None = None
    looks_like: int | None = None  # for swapped / blended / duplicate: the other person involved


@dataclass
class IdentityCheck:
    persons: list[PersonOutcome]
    extra_faces: list[int] = field(default_factory=list)  # faces that matched no person and belong to nobody
    outcome: str = "ok"
    similarity: np.ndarray | None = None  # (persons, faces) cosines the check went by

    @property
    def passed(self) -> bool:
        return self.outcome in ("ok", "extra_face")

    def as_records(self, names: list[str]) -> list[dict]:
        return [
            {
                "person": name,
                "outcome": item.outcome,
                "face": item.face,
                "sim_ref": _rounded(item.sim_ref),
                "sim_gt": _rounded(item.sim_gt),
                "copy_paste": _rounded(item.copy_paste),
                "id_conf": _rounded(item.id_conf),
                "looks_like": names[item.looks_like] if item.looks_like is not None else None,
            }
            for name, item in zip(names, self.persons)
        ]


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(float(value), 4)


def _inside(box, face_box) -> bool:
    x, y = (face_box[0] + face_box[2]) / 2, (face_box[1] + face_box[3]) / 2
    return box[0] <= x <= box[2] and box[1] <= y <= box[3]


def assign(similarity: np.ndarray, person_boxes: list, face_boxes: list) -> dict[int, int]:
    """person -> face by the Hungarian algorithm, each person with a box limited to the faces inside it."""
    from scipy.optimize import linear_sum_assignment

    persons, faces = similarity.shape
    if persons == 0 or faces == 0:
        return {}
    cost = -similarity.astype(np.float64)
    for person, box in enumerate(person_boxes):
        if box is not None:
            for face in range(faces):
                if not _inside(box, face_boxes[face]):
                    cost[person, face] = _FORBIDDEN
    rows, columns = linear_sum_assignment(cost)
    return {int(p): int(f) for p, f in zip(rows, columns) if cost[p, f] < _FORBIDDEN}


def _is_blend(column: np.ndarray, person: int, t: CheckThresholds) -> int | None:
    """The other person a face is blended with, when `person` is one of the two it mixes (see the module's
    doc), or None."""
    if len(column) < 2:
        return None
    second, first = (int(q) for q in np.argsort(column)[-2:])
    mixed = column[first] >= t.blend_top and column[second] >= t.blend_floor
    if not mixed or column[first] - column[second] > t.blend_margin or person not in (first, second):
        return None
    return second if person == first else first


def _owners(similarity: np.ndarray, t: CheckThresholds) -> list[int | None]:
    """Each face's person: the most similar, when at or above the verification point and not a blend."""
    owners: list[int | None] = []
    for face in range(similarity.shape[1]):
        column = similarity[:, face]
        best = int(column.argmax()) if len(column) else None
        sure = best is not None and column[best] >= t.same_person and _is_blend(column, best, t) is None
        owners.append(best if sure else None)
    return owners


def _outcome(person: int, face: int | None, similarity: np.ndarray, owners: list, own_face: dict, t) -> tuple:
    """(outcome, the other person involved) of one person."""
    if face is None:
        return "missing", None
    column = similarity[:, face]
    blended_with = _is_blend(column, person, t)
    if blended_with is not None:
        return "blended", blended_with
    if sum(owner == person for owner in owners) >= 2:
        return "duplicate", None
    owner = owners[face]
    if owner is not None and owner != person:
        shown_too = own_face.get(owner) is not None and owners[own_face[owner]] == owner
        return ("duplicate" if shown_too else "swapped"), owner
    return ("ok" if column[person] >= t.same_person else "missing"), None


def check_identities(
    similarity: np.ndarray,
    person_boxes: list,
    face_boxes: list,
    thresholds: CheckThresholds,
    faces: np.ndarray | None = None,
    used: np.ndarray | None = None,
    ground_truth: list | None = None,
) -> IdentityCheck:
    """The outcome of one image. `similarity` is (persons, faces) cosines against the persons' references,
    which matching and outcomes go by; boxes are normalised (x0, y0, x1, y1), None for a person without
    one. With the faces' unit embeddings `faces`: Sim(Ref) against `used` (the unit embedding of the photo
    generation was given, per person; default: the similarity above), and against each person's
    `ground_truth` unit vector (or None) Sim(GT) and CP."""
    matches = assign(similarity, person_boxes, face_boxes)
    owners = _owners(similarity, thresholds)
    persons = []
    for person in range(similarity.shape[0]):
        face = matches.get(person)
        outcome, other = _outcome(person, face, similarity, owners, matches, thresholds)
        item = PersonOutcome(outcome, face, None, looks_like=other)
        item.id_conf = id_conf(similarity[person])
        if face is not None:
            _measure(item, person, face, similarity, faces, used, ground_truth)
        persons.append(item)
    matched = set(matches.values())
    extra = [f for f in range(similarity.shape[1]) if f not in matched and owners[f] is None]
    found = {item.outcome for item in persons} | ({"extra_face"} if extra else set())
    outcome = next(name for name in _SEVERITY if name in found or name == "ok")
    return IdentityCheck(persons, extra, outcome, similarity)


def _measure(item: PersonOutcome, person: int, face: int, similarity, faces, used, ground_truth) -> None:
    reference = used[person] if used is not None and faces is not None else None
    item.sim_ref = float(faces[face] @ reference) if reference is not None else float(similarity[person, face])
    truth = ground_truth[person] if ground_truth else None
    if truth is not None and reference is not None:
        item.sim_gt = float(faces[face] @ truth)
        item.copy_paste = copy_paste(faces[face], reference, truth)


def id_conf(similarities: np.ndarray) -> float | None:
    """UMO's ID-Conf of one person from their similarities to every face of the image."""
    if len(similarities) < 2:
        return None
    first, second = np.sort(similarities)[::-1][:2]
    return float(min(1.0, (first - second) / first)) if first > 0 else 0.0


def copy_paste(generated: np.ndarray, reference: np.ndarray, truth: np.ndarray, eps: float = 1e-6) -> float:
    """WithAnyone's copy-paste score of unit vectors: the angular pull towards the reference photo rather
    than the person's other photo, in units of the angle between the two."""

    def angle(a: np.ndarray, b: np.ndarray) -> float:
        return math.acos(float(np.clip(a @ b, -1.0, 1.0)))

    return (angle(generated, truth) - angle(generated, reference)) / max(angle(reference, truth), eps)

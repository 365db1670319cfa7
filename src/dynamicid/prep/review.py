"""A curator's decisions on a dataset's people, kept as data and honoured by every later run.

Each decision is one line of OUTPUT/review_log.jsonl: the action, who made it, when, the people it names and
the faces it moves or rejects, by the file's content hash and the face's number (`SHA256:FACE`), never by
path, so a moved or renamed photo stays decided. The log only grows, and each append replaces the file
atomically. Replayed in order (`Verdicts`), it says for any face where it belongs:

- merge A B: B's faces, and every later face of B, belong to A (a "same person" answer is a merge);
- rename A NEW: A is now NEW, with A's split;
- move FACES P: those faces belong to P (a new person takes the split of the faces' earlier person);
- reject FACES / reject PERSON: out of the dataset, with the reason (a person's later faces too);
- different A B: the pair is no longer suggested for a merge.

`apply_review` puts the log into effect on a finished dataset at once (the manifest, the people table and the
folders on disk); prep applies it again on every rerun (`Verdicts.resolve`).
"""

from __future__ import annotations

import getpass
import json
import logging
import os
from dataclasses import asdict, dataclass, field

from dynamicid.atomic import write_atomic
from dynamicid.errors import DynamicIDError
from dynamicid.prep.schema import manifest_rows

logger = logging.getLogger(__name__)

LOG_FILE = "review_log.jsonl"
# What the last review left the dataset as (its output stamp, this folder left out): `dynamicid run` sees a
# dataset that differs from what prep made only by a review, and reruns what reads the dataset, not prep.
REVIEW_STATE = "_review_state"
# Present while a review is being applied: a kill -9 leaves it, and the next review command (or prep run)
# finishes that review before anything else.
APPLYING_MARKER = "applying"
ACTIONS = ("merge", "rename", "move", "reject", "different")
REJECTED_REASON = "rejected_in_review"


class ReviewError(DynamicIDError):
    """A decision that cannot be made, or a log that cannot be read."""


def face_key(sha256: str, face_index: int) -> str:
    return f"{sha256}:{int(face_index)}"


@dataclass
class Decision:
    action: str
    people: list[str] = field(default_factory=list)
    faces: list[str] = field(default_factory=list)  # SHA256:FACE
    reason: str | None = None
    who: str = ""
    when: str = ""


def read_log(dataset: str) -> list[Decision]:
    """Every decision, in the order made; a line that cannot be read stops with its number."""
    path = os.path.join(dataset, LOG_FILE)
    if not os.path.isfile(path):
        return []
    decisions = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                values = json.loads(line)
                decision = Decision(**{k: values[k] for k in Decision.__dataclass_fields__ if k in values})
            except (ValueError, TypeError, KeyError) as err:
                raise ReviewError(
                    f"{path} line {number} is not a review decision ({err}); the log is the toolkit's own: "
                    "restore it from a backup, or remove that line to forget the decision"
                ) from None
            if decision.action not in ACTIONS:
                raise ReviewError(f"{path} line {number}: unknown action {decision.action!r}")
            decisions.append(decision)
    return decisions


def append_decision(dataset: str, decision: Decision) -> Decision:
    """Adds `decision` to the log (who and when filled in), replacing the file atomically."""
    from dynamicid.prep.people import now

    decision.who = decision.who or _user()
    decision.when = decision.when or now()
    path = os.path.join(dataset, LOG_FILE)
    before = open(path, "rb").read() if os.path.isfile(path) else b""
    line = json.dumps(asdict(decision), ensure_ascii=False) + "\n"
    write_atomic(path, before + line.encode("utf-8"))
    return decision


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


@dataclass
class Verdicts:
    """The log replayed: where each person and face now belongs."""

    person_of: dict[str, str] = field(default_factory=dict)  # renamed or merged person -> person
    face_person: dict[str, str] = field(default_factory=dict)  # face -> person
    rejected_faces: dict[str, str] = field(default_factory=dict)  # face -> why
    rejected_people: dict[str, str] = field(default_factory=dict)
    apart: set[frozenset] = field(default_factory=set)

    def person(self, name: str | None) -> str | None:
        seen = set()
        while name in self.person_of and name not in seen:
            seen.add(name)
            name = self.person_of[name]
        return name

    def resolve(self, key: str, identity: str | None) -> tuple[str | None, bool, str | None]:
        """(person, whether a review decided it, why it is rejected or None) for a face found under `identity`."""
        placed = self.face_person.get(key, identity)
        person = self.person(placed)
        why = self.rejected_faces.get(key) or self.rejected_people.get(person or "")
        return person, (person != identity or key in self.rejected_faces or why is not None), why


def replay(decisions: list[Decision]) -> Verdicts:
    verdicts = Verdicts()
    for decision in decisions:
        people, faces = decision.people, decision.faces
        if decision.action in ("merge", "rename"):
            into, other = (people[0], people[1]) if decision.action == "merge" else (people[1], people[0])
            verdicts.person_of.pop(into, None)  # the survivor is nobody else's now
            verdicts.person_of[other] = into
            verdicts.face_person.update(dict.fromkeys(faces, into))
        elif decision.action == "move":
            verdicts.face_person.update(dict.fromkeys(faces, people[0]))
            for face in faces:
                verdicts.rejected_faces.pop(face, None)
        elif decision.action == "reject":
            why = (
                f"rejected in review by {decision.who} on {decision.when[:10]}: {decision.reason or 'no reason given'}"
            )
            verdicts.rejected_faces.update(dict.fromkeys(faces, why))
            for person in people:
                verdicts.rejected_people[person] = why
        elif decision.action == "different":
            verdicts.apart.add(frozenset(people))
    return verdicts


def load_verdicts(dataset: str) -> Verdicts:
    return replay(read_log(dataset))


def faces_of(dataset: str, references: list[str]) -> list[str]:
    """`SHA256:FACE` keys for references given as keys, or as photos' relative paths (every face of that
    photo); a reference the manifest does not know is refused, naming it."""

    wanted = {ref for ref in references if not _is_key(ref)}
    found: dict[str, list[str]] = {}
    if wanted:
        path = os.path.join(dataset, "manifest.parquet")
        for relative, sha, index, name in manifest_rows(path, ["relative_path", "sha256", "face_index", "name"]):
            if relative in wanted and name:
                found.setdefault(relative, []).append(face_key(sha, index))
    missing = sorted(wanted - set(found))
    if missing:
        raise ReviewError(
            f"{dataset}/manifest.parquet has no face for {', '.join(missing)}: name a photo by its relative_path "
            "as the manifest gives it, or a face as SHA256:FACE (dynamicid review DATASET --list-suggestions "
            "shows the people)"
        )
    return [key for ref in references for key in ([ref] if _is_key(ref) else found[ref])]


def _is_key(reference: str) -> bool:
    sha, _, index = reference.rpartition(":")
    return len(sha) == 64 and all(c in "0123456789abcdef" for c in sha) and index.isdigit()


def rewrite_manifest(dataset: str, verdicts: Verdicts, split_of: dict[str, str]) -> int:
    """The manifest with every kept face (and every face a review rejected) where the verdicts put it: its
    person, `identity_source` = review, its person's split, and a review's rejections. Written to a temporary
    file, a batch at a time, then renamed over the old one. Returns how many rows changed."""
    import uuid

    import pyarrow as pa
    import pyarrow.parquet as pq

    path = os.path.join(dataset, "manifest.parquet")
    parquet = pq.ParquetFile(path)
    temporary = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    changed = 0
    names = ["sha256", "face_index", "identity", "identity_source", "status", "reason", "message", "split"]
    try:
        with pq.ParquetWriter(temporary, parquet.schema_arrow, compression="zstd") as writer:
            for batch in parquet.iter_batches(batch_size=8192):
                table = pa.Table.from_batches([batch])
                rows = {name: table.column(name).to_pylist() for name in names}
                changed += _decide_rows(rows, verdicts, split_of)
                for name in names[2:]:
                    position = table.schema.get_field_index(name)
                    kind = table.schema.field(name)  # its nullability too: the writer checks the whole schema
                    table = table.set_column(position, kind, pa.array(rows[name], kind.type))
                writer.write_table(table)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    return changed


def _decide_rows(rows: dict[str, list], verdicts: Verdicts, split_of: dict[str, str]) -> int:
    changed = 0
    for i, (status, reason) in enumerate(zip(rows["status"], rows["reason"])):
        if status != "ok" and reason != REJECTED_REASON:
            if reason in ("duplicate", "held_for_review"):  # a copy follows its person's new name, as prep does
                renamed = verdicts.person(rows["identity"][i])
                changed += renamed != rows["identity"][i]
                rows["identity"][i] = renamed
            continue
        before = tuple(rows[name][i] for name in rows)
        person, _, why = verdicts.resolve(face_key(rows["sha256"][i], rows["face_index"][i]), rows["identity"][i])
        if why is not None:
            rows["status"][i], rows["reason"][i], rows["message"][i] = "rejected", REJECTED_REASON, why
        elif reason == REJECTED_REASON:  # a later decision took it back
            rows["status"][i], rows["reason"][i], rows["message"][i] = "ok", None, None
        if person != rows["identity"][i]:
            rows["identity"][i], rows["identity_source"][i] = person, "review"
            rows["split"][i] = split_of.setdefault(person, rows["split"][i])  # a new person: its faces' split
        changed += before != tuple(rows[name][i] for name in rows)
    return changed


def apply_review(dataset: str) -> dict:
    """Puts the whole log into effect on a finished dataset, under its lock: the manifest (each face's person,
    source, split and status), the people table and its suggestions, and the folders. Every face goes back
    to where the job keeps it first and is placed again after, so a kill at any point is finished by the next
    review or prep run. Returns what changed."""
    from dynamicid.prep import people
    from dynamicid.prep.guard import OutputLock
    from dynamicid.prep.verify import place_faces

    manifest = os.path.join(dataset, "manifest.parquet")
    if not os.path.isfile(manifest):
        raise ReviewError(f"{manifest} not found: {dataset} is not a finished prep OUTPUT (run dynamicid prep first)")
    with OutputLock(dataset):
        marker = _applying_marker(dataset)
        write_atomic(marker, b"a review is being applied; the next review or prep run finishes it\n")
        verdicts = load_verdicts(dataset)
        earlier = people.read_earlier_run(dataset)
        place_faces(dataset, back=True)
        changed = rewrite_manifest(dataset, verdicts, earlier.known_splits())
        counts, sources = people.manifest_people(manifest)
        suggestions = [
            pair
            for pair in read_suggestions(dataset)
            if pair["a"] in counts and pair["b"] in counts and frozenset((pair["a"], pair["b"])) not in verdicts.apart
        ]
        table = people.updated_table(
            earlier, counts, people.manifest_centres(manifest), sources, earlier.table.shares, earlier.next_number()
        )
        people.write_people(dataset, table, suggestions)
        place_faces(dataset)
        _record_review_stamp(dataset)
        os.remove(marker)
    return {"rows_changed": changed, "people": len(counts), "suggested_merges": len(suggestions)}


def _record_review_stamp(dataset: str) -> None:
    from dynamicid.filestamps import output_stamp

    stamp = output_stamp(dataset, skip=(REVIEW_STATE,))
    write_atomic(os.path.join(dataset, REVIEW_STATE, "stamp.json"), json.dumps({"output_stamp": stamp}).encode())


def _applying_marker(dataset: str) -> str:
    return os.path.join(dataset, REVIEW_STATE, APPLYING_MARKER)


def interrupted(dataset: str) -> bool:
    """Whether a review was stopped while it was being applied (killed, or the power went)."""
    return os.path.isfile(_applying_marker(dataset))


def finish_interrupted(dataset: str) -> bool:
    """Applies the log again when a review was stopped halfway; returns whether one was."""
    if not interrupted(dataset):
        return False
    logger.warning("a review of %s was stopped while it was applied; finishing it first", dataset)
    apply_review(dataset)
    return True


def is_last_decision(dataset: str, action: str, people: list[str], faces: list[str]) -> bool:
    """Whether the log's last decision is this one (the command run again after a kill): the same action,
    people and faces. Faces named by path are looked up; one the manifest no longer has is not a match."""
    log = read_log(dataset)
    if not log or log[-1].action != action:
        return False
    last = log[-1]
    if action in ("reject", "move"):
        photos = [item for item in faces if item not in last.people]
        try:
            keys = faces_of(dataset, photos)
        except ReviewError:
            return False
        return set(keys) <= set(last.faces) and (action == "reject" or list(people) == last.people)
    return list(people) == last.people


def cleared_after_prep(dataset: str) -> None:
    """A prep run applies the whole log, so a review it found interrupted is finished."""
    if interrupted(dataset):
        os.remove(_applying_marker(dataset))


def reviewed_stamp(dataset: str) -> str | None:
    """The dataset's output stamp as the last review left it, or None."""
    try:
        with open(os.path.join(dataset, REVIEW_STATE, "stamp.json"), encoding="utf-8") as handle:
            return json.load(handle)["output_stamp"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def read_suggestions(dataset: str) -> list[dict]:
    from dynamicid.prep.people import SUGGESTIONS_FILE

    path = os.path.join(dataset, SUGGESTIONS_FILE)
    if not os.path.isfile(path):
        return []
    try:
        with open(path, encoding="utf-8") as handle:
            return list(json.load(handle)["suggested_merges"])
    except (ValueError, KeyError, TypeError) as err:
        logger.warning("%s cannot be read (%s); the next prep run writes it again", path, err)
        return []


def decide(dataset: str, action: str, people: list[str], faces: list[str], reason: str = "", who: str = "") -> dict:
    """One decision, checked, logged and applied: the page and the command line both come here. `faces` are
    relative paths or SHA256:FACE keys; `people` as the action needs them (see the module's list)."""
    from dynamicid.prep.people import read_people

    known = {name for name, person in read_people(dataset).people.items() if person.faces}
    if action not in ACTIONS:
        raise ReviewError(f"unknown review action {action!r}: one of {', '.join(ACTIONS)}")
    keys: list[str] = []
    if action in ("merge", "rename", "different"):
        _check_people(action, people, known)
    if action == "merge":
        keys = _faces_of_person(dataset, people[1])
    elif action == "reject":
        people = [item for item in faces if item in known]
        keys = faces_of(dataset, [item for item in faces if item not in known])
        keys += [key for person in people for key in _faces_of_person(dataset, person)]
    elif action == "move":
        if len(people) != 1 or not people[0].strip():
            raise ReviewError("move needs the one person the faces join (--into PERSON)")
        keys = faces_of(dataset, faces)
    if action in ("reject", "move") and not keys:
        raise ReviewError(f"{action} needs at least one face or person")
    decision = append_decision(dataset, Decision(action, list(people), keys, reason or None, who))
    logger.info("review: %s %s (%d faces) by %s", action, " ".join(people), len(keys), decision.who)
    return apply_review(dataset)


def _check_people(action: str, people: list[str], known: set[str]) -> None:
    if len(people) != 2 or not all(people):
        raise ReviewError(f"{action} needs two people; choose both")
    first, second = people
    if first == second:
        raise ReviewError(f"{action} needs two different people, not {first} twice")
    if action == "rename":
        if first not in known:
            raise ReviewError(f"rename: {first} is not a person of this dataset (--list-suggestions lists them)")
        if second in known:
            raise ReviewError(f"rename: {second} is a person already; to make them one, merge {second} {first}")
        return
    missing = [name for name in people if name not in known]
    if missing:
        raise ReviewError(
            f"{action}: {', '.join(missing)} not a person of this dataset (--list-suggestions lists them)"
        )


def _faces_of_person(dataset: str, person: str) -> list[str]:

    path, columns = os.path.join(dataset, "manifest.parquet"), ["identity", "status", "sha256", "face_index"]
    return [
        face_key(sha, index)
        for who, status, sha, index in manifest_rows(path, columns)
        if who == person and status == "ok"
    ]


@dataclass
class Overview:
    """What a curator looks at: the page shows it, `--list-suggestions` prints it."""

    people: dict[str, dict[str, int]]  # person -> faces per split
    suggestions: list[dict]  # {"a", "b", "links", "cosine"}, closest first
    strangers: list[dict]  # {"path", "person", "distance"}, furthest first
    copies: list[dict]  # {"path", "copy_of", "reason"}: duplicates and faces held for review


def overview(dataset: str) -> Overview:
    """The dataset's people, suggestions, suspected strangers and copies, one batch of the manifest at a time."""
    import numpy as np

    from dynamicid.prep.people import read_people

    people: dict[str, dict[str, int]] = {}
    strangers, copies = [], []
    columns = ["relative_path", "identity", "status", "reason", "split", "identity_outlier", "identity_distance"]
    columns += ["duplicate_of"]
    rows = manifest_rows(os.path.join(dataset, "manifest.parquet"), columns)
    for path, person, status, reason, split, outlier, distance, copy_of in rows:
        if status == "ok" and person:
            counts = people.setdefault(person, {})
            counts[split or "none"] = counts.get(split or "none", 0) + 1
            if outlier:
                strangers.append({"path": path, "person": person, "distance": round(distance, 3)})
        elif reason in ("duplicate", "held_for_review"):
            copies.append({"path": path, "person": person, "copy_of": copy_of, "reason": reason})
    centres = {name: p.centre for name, p in read_people(dataset).people.items() if p.centre}
    suggestions = []
    for pair in read_suggestions(dataset):
        a, b = centres.get(pair["a"]), centres.get(pair["b"])
        cosine = float(np.dot(a, b)) if a and b else float("nan")
        suggestions.append(pair | {"cosine": round(cosine, 3)})
    suggestions.sort(key=lambda pair: -pair["cosine"] if pair["cosine"] == pair["cosine"] else 2.0)
    strangers.sort(key=lambda row: -row["distance"])
    return Overview(dict(sorted(people.items())), suggestions, strangers, copies)

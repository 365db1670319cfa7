"""The dataset's people, kept across runs in OUTPUT/identities.parquet: one row per person.

A person's name and split are given once and never change. On a rerun with more photos:
- a face a run has already put with a person stays with that person (its key is the file's content hash
  and the face's number, so a moved or renamed file stays too);
- a new face joins the person whose faces it clusters with;
- a cluster of new faces only is a new person, numbered past every number used before;
- a cluster that holds faces of two existing people does not merge them: each face stays where it was,
  and the pair becomes a suggestion for review (`OUTPUT/identity_suggestions.json`);
- a person keeps the split first given, even when the split shares change (new shares apply to new
  people only).
The table also holds each person's centre (the unit mean of their faces): what a new face is matched
against, and what the review compares.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dynamicid.atomic import write_atomic
from dynamicid.prep.schema import manifest_rows

logger = logging.getLogger(__name__)

PEOPLE_FILE = "identities.parquet"
SUGGESTIONS_FILE = "identity_suggestions.json"
CLUSTER_PREFIX = "person-"
_NUMBERED = re.compile(rf"{CLUSTER_PREFIX}(\d+)")
_SHARES_KEY = b"dynamicid.split_shares"
_NEXT_KEY = b"dynamicid.next_person"

PEOPLE_SCHEMA = pa.schema(
    [
        ("identity", pa.string()),
        ("source", pa.string()),  # folder | cluster | review
        ("split", pa.string()),
        ("first_seen", pa.string()),  # UTC, ISO 8601
        ("faces", pa.int64()),  # kept faces in the latest run
        ("centre", pa.list_(pa.float32())),  # unit mean of those faces; null when none
    ]
)


@dataclass
class Person:
    identity: str
    source: str
    split: str | None
    first_seen: str
    faces: int = 0
    centre: list[float] | None = None


@dataclass
class PeopleTable:
    """The people of a dataset, the split shares that were in force, and the next free cluster number."""

    people: dict[str, Person] = field(default_factory=dict)
    shares: str | None = None
    next_number: int = 1


@dataclass
class EarlierRun:
    """What the dataset already says: the table, and the last manifest's faces and splits (which also cover
    a run killed between writing its manifest and its table)."""

    table: PeopleTable
    face_identity: dict[tuple[str, int], str]  # (sha256, face) -> person, for faces a run or a review placed
    split_of: dict[str, str]  # person -> split

    def known_splits(self) -> dict[str, str]:
        known = dict(self.split_of)
        known.update({name: p.split for name, p in self.table.people.items() if p.split})
        return known

    def next_number(self) -> int:
        used = [_number(name) for name in [*self.table.people, *self.face_identity.values()]]
        return max([self.table.next_number, *[n + 1 for n in used if n is not None]])


def _number(identity: str) -> int | None:
    match = _NUMBERED.fullmatch(identity)
    return int(match.group(1)) if match else None


def cluster_name(number: int) -> str:
    return f"{CLUSTER_PREFIX}{number:04d}"


def now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat()


def read_people(output: str) -> PeopleTable:
    """The table as the last run left it (empty when there is none, or it cannot be read: then the manifest
    alone says who is who, and the table is written again)."""
    path = os.path.join(output, PEOPLE_FILE)
    if not os.path.isfile(path):
        return PeopleTable()
    try:
        table = pq.read_table(path)
    except Exception as err:  # pyarrow raises several types for a damaged file
        logger.warning("%s cannot be read (%s); the people are taken from the manifest", path, err)
        return PeopleTable()
    meta = table.schema.metadata or {}
    people = {}
    for row in table.to_pylist():
        people[row["identity"]] = Person(**{name: row.get(name) for name in PEOPLE_SCHEMA.names})
    shares = meta.get(_SHARES_KEY, b"").decode() or None
    return PeopleTable(people, shares, int(meta.get(_NEXT_KEY, b"1").decode() or 1))


def read_earlier_run(output: str) -> EarlierRun:
    """The table, and from the last manifest: where each placed face went, and each person's split."""

    table = read_people(output)
    manifest = os.path.join(output, "manifest.parquet")
    face_identity: dict[tuple[str, int], str] = {}
    split_of: dict[str, str] = {}
    if not os.path.isfile(manifest):
        return EarlierRun(table, face_identity, split_of)
    columns = ["sha256", "face_index", "identity", "status", "split", "identity_source"]
    try:
        for sha, face, identity, status, split, source in manifest_rows(manifest, columns):
            if identity and split:
                split_of.setdefault(identity, split)
            if identity and status == "ok" and source in ("cluster", "review"):
                face_identity[(sha, face)] = identity
    except Exception as err:  # an older or damaged manifest: its people are found again
        logger.warning("%s cannot be read (%s); its people will be found again", manifest, err)
    return EarlierRun(table, face_identity, split_of)


@dataclass
class ClusterNames:
    names: list[str]  # per face
    suggestions: list[dict]  # {"a", "b", "links"}: existing people that one cluster joins
    next_number: int


def name_clusters(keys: list[tuple[str, int]], label: np.ndarray, earlier: EarlierRun) -> ClusterNames:
    """Each face's person: the one a run placed it with, else its cluster's (the person most of the cluster's
    placed faces belong to), else a new person numbered past every number used."""
    before = [earlier.face_identity.get(key) for key in keys]
    votes: dict[int, Counter] = {}
    for cluster, name in zip(label.tolist(), before):
        if name is not None:
            votes.setdefault(cluster, Counter())[name] += 1
    number = earlier.next_number()
    chosen: dict[int, str] = {}
    suggestions: Counter = Counter()
    for cluster in _clusters_largest_first(label):
        counts = votes.get(cluster)
        if counts:
            ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
            chosen[cluster] = ranked[0][0]
            for other, links in ranked[1:]:
                suggestions[tuple(sorted((ranked[0][0], other)))] += min(links, ranked[0][1])
        else:
            chosen[cluster], number = cluster_name(number), number + 1
    names = [old if old is not None else chosen[cluster] for cluster, old in zip(label.tolist(), before)]
    pairs = [{"a": a, "b": b, "links": links} for (a, b), links in suggestions.most_common()]
    return ClusterNames(names, pairs, number)


def _clusters_largest_first(label: np.ndarray) -> list[int]:
    values, first, sizes = np.unique(label, return_index=True, return_counts=True)
    return [int(values[i]) for i in np.lexsort((first, -sizes))]


def manifest_people(manifest_path: str) -> tuple[dict[str, tuple[str, int]], dict[str, str]]:
    """Each person's split and kept faces, and where their name came from, read from a manifest."""
    counts: dict[str, list] = {}
    sources: dict[str, str] = {}
    for identity, split, status, source in manifest_rows(
        manifest_path, ["identity", "split", "status", "identity_source"]
    ):
        if identity and status == "ok":
            counts.setdefault(identity, [split, 0])[1] += 1
            sources[identity] = source
    return {name: (split, faces) for name, (split, faces) in counts.items()}, sources


def manifest_centres(manifest_path: str) -> dict[str, list[float]]:
    """Each person's unit mean embedding over their kept faces (copies are not kept), a batch of the manifest
    at a time: what the table holds as `centre`."""
    sums: dict[str, np.ndarray] = {}
    for identity, status, embedding in manifest_rows(manifest_path, ["identity", "status", "embedding"]):
        if identity and status == "ok" and embedding:
            sums[identity] = sums.get(identity, 0) + np.asarray(embedding, np.float64)
    return {name: (total / np.linalg.norm(total)).astype(np.float32).tolist() for name, total in sums.items()}


def updated_table(
    earlier: EarlierRun,
    counts: dict[str, tuple[str, int]],
    centres: dict,
    sources: dict,
    shares: str | None,
    next_number: int,
) -> PeopleTable:
    """The table after a run: every earlier person kept (their name stays used), this run's counted.
    `counts`: person -> (split, kept faces), read from the new manifest."""
    people = {name: Person(**{**vars(p), "faces": 0}) for name, p in earlier.table.people.items()}
    seen = now()
    for name, (split, faces) in counts.items():
        person = people.get(name) or Person(name, sources.get(name) or "folder", split, seen)
        person.split = person.split or split
        person.faces, person.centre = faces, centres.get(name)
        people[name] = person
    return PeopleTable(people, shares, max(next_number, earlier.next_number()))


def write_people(output: str, table: PeopleTable, suggestions: list[dict]) -> None:
    """The table and the suggestions, each replaced atomically."""
    rows = [vars(table.people[name]) for name in sorted(table.people)]
    meta = {_SHARES_KEY: (table.shares or "").encode(), _NEXT_KEY: str(table.next_number).encode()}
    arrow = pa.Table.from_pylist(rows, schema=PEOPLE_SCHEMA).replace_schema_metadata(meta)
    sink = pa.BufferOutputStream()
    pq.write_table(arrow, sink)
    write_atomic(os.path.join(output, PEOPLE_FILE), sink.getvalue().to_pybytes())
    text = json.dumps({"suggested_merges": suggestions}, indent=2, ensure_ascii=False)
    write_atomic(os.path.join(output, SUGGESTIONS_FILE), text.encode())

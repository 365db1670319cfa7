"""Who is who among the kept faces, from their embeddings: near copies, clusters (`--layout cluster`) and
strangers in labelled folders. Runs on the driver over `neighbours.FaceVectors`; every step works on the
k-nearest-neighbour graph or on per-identity sums, so time and memory grow with n, not n^2.

- Near copies: two neighbours are one photo (re-encoded, resized or lightly cropped) when their embeddings
  agree as one person's do and their face hashes nearly match, or when their embeddings agree as only
  copies do and the hashes are close (a crop moves the alignment a little, and with it some bits).
  Each group of copies keeps its first face in manifest order.
- Clusters: Chinese whispers (Biemann 2006, the method dlib ships for faces) on the graph whose edges join
  neighbours at or above the embedder's same-person cosine. Unlike joining every connected pair, one
  mistaken edge does not merge two people: a face takes the label that weighs most among its neighbours.
  No number of people is needed.
- Distances: each face's cosine distance to the mean of the other faces of its identity; a face of a
  labelled folder further than the same-person threshold is flagged as a likely stranger.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dynamicid.faces.face_hash import hash_distances
from dynamicid.faces.identity_thresholds import IdentityThresholds
from dynamicid.prep.neighbours import FaceVectors, float_blocks, nearest_neighbours
from dynamicid.prep.people import cluster_name

NEIGHBOURS = 16
COPY_BITS = 8  # hash distance of a re-encoded or resized copy (measured: at most 8 of 64)
CROPPED_COPY_BITS = 20  # ... of a lightly cropped copy (measured: at most 18); strangers differ by 18 or more
WHISPER_ROUNDS = 60
PAIR_BLOCK_ROWS = 65536


@dataclass
class IdentityFindings:
    """Per face of `FaceVectors`, in its order."""

    copy_of: np.ndarray  # index of the kept face this one copies, or -1
    label: np.ndarray  # cluster number (clusters only; -1 elsewhere)
    distance: np.ndarray  # 1 - cosine to the mean of the rest of its identity; NaN when alone
    outlier: np.ndarray  # bool
    names: list[str] | None = None  # each face's person, when clustered
    held: list[str | None] | None = None  # why a face is held out for review (one photo, two people), or None


def find_identities(faces: FaceVectors, thresholds: IdentityThresholds, cluster: bool, seed: int = 0, namer=None):
    """Near copies, then (when `cluster`) the clusters and their people, then each face's distance to its
    identity. `namer(labels)` gives each face its person from the cluster numbers (`people.name_clusters`
    keeps earlier runs' people); by default clusters are person-0001, ... from the largest."""
    count = len(faces)
    neighbours, similarity = nearest_neighbours(faces.vectors, NEIGHBOURS, seed) if count else (None, None)
    copy_of = near_copies(faces, neighbours, similarity, thresholds) if count else np.zeros(0, np.int64)
    copy_of, held = settle_conflicts(faces, copy_of, thresholds.same_person)
    originals = (copy_of < 0) & np.array([why is None for why in held], bool)
    label = np.full(count, -1, np.int64)
    names = None
    if cluster and count:
        graph = _same_person_edges(neighbours, similarity, thresholds.cluster_edge, originals)
        label[originals] = chinese_whispers(count, *graph, seed=seed)[originals]
        label[~originals] = label[copy_of[~originals]]
        label = _renumbered(label)
        names = namer(label) if namer else [cluster_name(value + 1) for value in label.tolist()]
        names = [names[keeper] if keeper >= 0 else own for keeper, own in zip(copy_of.tolist(), names)]
        groups = _identity_codes(names)
    else:
        groups = _identity_codes(faces.identity)
    distance = distance_to_identity(faces.vectors, groups, originals)
    outlier = ~np.isnan(distance) & (1 - distance < thresholds.same_person) & originals
    return IdentityFindings(copy_of, label, distance, outlier, names, held)


def near_copies(faces: FaceVectors, neighbours, similarity, thresholds: IdentityThresholds) -> np.ndarray:
    """For each face, the first face (in manifest order) of its group of copies, or -1 for that first one
    and for faces with no copy."""
    pairs: list[tuple[np.ndarray, np.ndarray]] = []
    for start in range(0, len(faces), PAIR_BLOCK_ROWS):  # a block of faces' pairs at a time: few are copies
        block = slice(start, start + PAIR_BLOCK_ROWS)
        rows, others, cosine = _neighbour_pairs(neighbours[block], similarity[block], thresholds.same_person, start)
        bits = hash_distances(faces.hashes[rows], faces.hashes[others])
        same = (bits <= COPY_BITS) | ((cosine >= thresholds.near_copy) & (bits <= CROPPED_COPY_BITS))
        pairs.append((rows[same], others[same]))
    first, second = (np.concatenate(side) if pairs else np.zeros(0, np.int64) for side in zip(*pairs))
    root = _union(len(faces), first, second)
    return np.where(root == np.arange(len(faces)), -1, root)


def settle_conflicts(faces: FaceVectors, copy_of: np.ndarray, same_person: float):
    """One photo under two or more people: the copy under the person its face matches stays, the others become
    its copies; when no person matches it, or more than one does, every copy is held out for review. A match is
    a cosine at or above `same_person` with the mean of that person's other photos (copies of this one not
    counted). Path order never decides. Returns the new `copy_of`, and per face why it is held (or None)."""
    held: list[str | None] = [None] * len(copy_of)
    root = np.where(copy_of >= 0, copy_of, np.arange(len(copy_of)))
    in_group = np.bincount(root, minlength=len(root))[root] > 1
    groups = _identity_codes(faces.identity)
    members: dict[int, list[int]] = {}
    for face in np.flatnonzero(in_group & (groups >= 0)).tolist():
        members.setdefault(int(root[face]), []).append(face)
    conflicts = [faces_ for faces_ in members.values() if len({int(groups[f]) for f in faces_}) > 1]
    if not conflicts:
        return copy_of, held
    cosine = 1 - distance_to_identity(faces.vectors, groups, (copy_of < 0) & ~in_group)
    copy_of = copy_of.copy()
    for group in conflicts:
        people = sorted({faces.identity[f] for f in group}, key=str)
        matching = sorted({faces.identity[f] for f in group if cosine[f] >= same_person}, key=str)
        if len(matching) == 1:
            keeper = min(f for f in group if faces.identity[f] == matching[0])
            copy_of[group] = keeper
            copy_of[keeper] = -1
            continue
        verdict = "matches none of them" if not matching else f"matches {len(matching)} of them"
        for face in group:
            copy_of[face] = -1
            held[face] = f"the same photo is under {', '.join(map(str, people))} and {verdict}: held out for review"
    return copy_of, held


def _union(count: int, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Connected groups of the pairs; each node's root is the smallest index of its group."""
    parent = np.arange(count)

    def find(node: int) -> int:
        while parent[node] != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    for a, b in zip(first.tolist(), second.tolist()):
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return np.array([find(node) for node in range(count)], dtype=np.int64)


def _neighbour_pairs(neighbours, similarity, threshold: float, first_row: int = 0):
    """(face, neighbour, cosine) of every neighbour at or above the cosine `threshold`, as flat arrays; row i
    of `neighbours` is face `first_row + i`."""
    rows = np.repeat(first_row + np.arange(len(neighbours)), neighbours.shape[1])
    others, cosine = neighbours.ravel(), similarity.ravel()
    keep = (others >= 0) & (cosine >= threshold)
    return rows[keep], others[keep], cosine[keep]


def _same_person_edges(neighbours, similarity, threshold: float, members: np.ndarray):
    """The graph's edges, both ways, between members that are neighbours at or above the threshold."""
    rows, others, weight = _neighbour_pairs(neighbours, similarity, threshold)
    keep = members[rows] & members[others]
    rows, others, weight = rows[keep], others[keep], weight[keep]
    return np.concatenate([rows, others]), np.concatenate([others, rows]), np.concatenate([weight, weight])


def chinese_whispers(count: int, source, target, weight, seed: int = 0, rounds: int = WHISPER_ROUNDS):
    """Labels of the graph's nodes: each round, a random half of the nodes takes the label with the largest
    summed edge weight among its neighbours (ties: the smaller label). Half, not all: updating every node
    at once lets two labels swap back and forth forever. Returns labels 0..m-1, largest cluster first."""
    label = np.arange(count, dtype=np.int64)
    if len(source) == 0:
        return _renumbered(label)
    rng = np.random.default_rng(seed)
    quiet = 0
    for _ in range(rounds):
        key = source * count + label[target]
        unique, inverse = np.unique(key, return_inverse=True)
        sums = np.bincount(inverse, weights=weight)
        node, candidate = unique // count, unique % count
        order = np.lexsort((candidate, -sums, node))
        first = order[np.r_[True, node[order][1:] != node[order][:-1]]]
        chosen = label.copy()
        chosen[node[first]] = candidate[first]
        update = rng.random(count) < 0.5
        changed = int(((chosen != label) & update).sum())
        label = np.where(update, chosen, label)
        quiet = quiet + 1 if changed == 0 else 0
        if quiet >= 3:
            break
    return _renumbered(label)


def _renumbered(label: np.ndarray) -> np.ndarray:
    """Labels as 0..m-1 by size, largest first (ties: the one whose first member comes first)."""
    values, first, inverse, sizes = np.unique(label, return_index=True, return_inverse=True, return_counts=True)
    rank = np.empty(len(values), np.int64)
    rank[np.lexsort((first, -sizes))] = np.arange(len(values))
    return rank[inverse]


def _identity_codes(identities: list[str | None]) -> np.ndarray:
    """The folder identities as numbers; faces without one are -1 (no identity to compare with)."""
    codes: dict[str, int] = {}
    return np.array([-1 if name is None else codes.setdefault(name, len(codes)) for name in identities], np.int64)


def distance_to_identity(vectors: np.ndarray, groups: np.ndarray, members: np.ndarray) -> np.ndarray:
    """1 - cosine between each face and the mean of the other members of its group (NaN when it has no
    other member). Copies are not members: a stranger's copy must not vouch for the stranger.

    From each group's sum S: a member v's others sum to S - v, whose cosine with v is (v.S - v.v) / |S - v|,
    with |S - v|^2 = S.S - 2 v.S + v.v. Faces are taken a block at a time, so the driver holds the sums
    (one row per group with a member) and never a widened copy of every face."""
    distance = np.full(len(vectors), np.nan)
    counted = members & (groups >= 0)
    if not counted.any():
        return distance
    counts = np.bincount(groups[counted], minlength=int(groups.max()) + 1)
    slot = np.full(len(counts), -1, np.int64)  # a group with a member -> its row of `sums`
    slot[counts > 0] = np.arange(int((counts > 0).sum()))
    sums = np.zeros((int((counts > 0).sum()), vectors.shape[1]), np.float64)
    for start, block in float_blocks(vectors):
        chosen = counted[start : start + len(block)]
        np.add.at(sums, slot[groups[start : start + len(block)][chosen]], block[chosen])
    squared = np.einsum("gd,gd->g", sums, sums)
    for start, block in float_blocks(vectors):
        rows = np.arange(start, start + len(block))
        group, own = groups[rows], counted[rows].astype(np.float64)
        valid = (group >= 0) & (np.where(group >= 0, counts[np.maximum(group, 0)], 0) - own > 0)
        v, own = block[valid].astype(np.float64), own[valid]
        where = slot[group[valid]]
        dot, self_dot = np.einsum("rd,rd->r", v, sums[where]), np.einsum("rd,rd->r", v, v)
        norm = np.sqrt(np.maximum(squared[where] - 2 * own * dot + own * self_dot, 0.0))
        ok = norm > 1e-9
        distance[rows[valid][ok]] = 1 - (dot[ok] - own[ok] * self_dot[ok]) / norm[ok]
    return distance


def findings_frame(faces: FaceVectors, found: IdentityFindings):
    """The findings as rows to join into the manifest (`curate.FINDINGS_COLUMNS`)."""
    import pandas as pd

    copies = found.copy_of
    held = found.held if found.held is not None else [None] * len(faces)
    return pd.DataFrame(
        {
            "relative_path": faces.relative_path,
            "face_index": faces.face_index.astype(np.int32),
            "found_identity": found.names if found.names is not None else [None] * len(faces),
            "identity_distance": found.distance,
            "identity_outlier": found.outlier,
            "copy_of_path": [faces.relative_path[c] if c >= 0 else None for c in copies.tolist()],
            "copy_of_identity": [faces.identity[c] if c >= 0 else None for c in copies.tolist()],
            "rejection": ["held_for_review" if why else None for why in held],
            "rejection_message": held,
            "reviewed": [False] * len(faces),
        }
    )


def pairwise_precision_recall(found: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """How well groups `found` match the people `truth`, over all pairs of faces: of the pairs put together,
    the share that are one person (precision); of the pairs that are one person, the share put together
    (recall). From the contingency counts, without listing pairs."""

    def pairs(counts: np.ndarray) -> float:
        counts = counts.astype(np.float64)
        return float((counts * (counts - 1) / 2).sum())

    _, both = np.unique(np.stack([found, truth]), axis=1, return_counts=True)
    together, same = pairs(np.unique(found, return_counts=True)[1]), pairs(np.unique(truth, return_counts=True)[1])
    agree = pairs(both)
    return (agree / together if together else 1.0), (agree / same if same else 1.0)

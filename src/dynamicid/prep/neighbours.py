"""The kept faces' embeddings, read from the job's rows into one array, and each face's nearest neighbours.

Curation works on this k-nearest-neighbour graph, never on all pairs: near copies are neighbours whose
hashes are close, clusters are groups of the graph, and nothing grows with n^2. The neighbours come from
FAISS: an exact inner-product index up to `EXACT_UP_TO` faces; above it, an inverted-file index with 8-bit
codes (about 2 sqrt(n) lists, 16 searched per query), whose candidates are then scored exactly.

The driver's memory is what bounds curation at scale, so every large array is held once: the embeddings
in half precision (a cosine is off by under 1e-3; 0.3 GB per 300,000 512-d faces), the index's 8-bit codes
(a quarter of float32), and everything else is done a block of rows at a time. benchmarks/RESULTS.md has
the scale table."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from dynamicid.faces.face_hash import hashes_as_integers

EXACT_UP_TO = 50_000
SEARCHED_LISTS = 16
TRAINING_POINTS_PER_LIST = 40  # FAISS's k-means asks for 39 or more points per list
BLOCK_ROWS = 4096  # rows converted to float32 at once: 8 MB of 512-d vectors
STORED = np.float16


@dataclass
class FaceVectors:
    """The manifest's kept faces in its order: where each is, its identity, unit embedding and hash."""

    relative_path: list[str]
    face_index: np.ndarray
    identity: list[str | None]
    vectors: np.ndarray  # (n, d) unit rows, float16 as read (any float dtype is accepted)
    hashes: np.ndarray  # (n,) uint64
    sha256: np.ndarray | None = None  # (n,) bytes: the file's content hash; with face_index, a face's lasting key

    def __len__(self) -> int:
        return len(self.relative_path)

    def keys(self) -> list[tuple[str, int]]:
        """(content hash, face) per face: what stays the same when a file is moved or renamed."""
        files = [h.decode() for h in self.sha256] if self.sha256 is not None else self.relative_path
        return list(zip(files, self.face_index.tolist()))


def parquet_files(rows_path: str) -> list[str]:
    """The Parquet file, or a folder's Parquet parts (Spark's own `_` and `.` files left out), in one order."""
    if not os.path.isdir(rows_path):
        return [rows_path]
    names = sorted(n for n in os.listdir(rows_path) if n.endswith(".parquet") and not n.startswith(("_", ".")))
    return [os.path.join(rows_path, name) for name in names]


def _kept_batches(rows_path: str, columns: list[str], batch_rows: int):
    """The `ok` rows with an embedding, a batch at a time, in one fixed order. One file is open at a time: a
    dataset over thousands of parts holds every part's metadata (0.6 GB at 100,000 rows of the manifest's
    width), a file at a time holds one."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    wanted = sorted(set(columns) | {"status", "embedding"})
    for path in parquet_files(rows_path):
        with pq.ParquetFile(path) as parquet:
            for batch in parquet.iter_batches(batch_size=batch_rows, columns=wanted, use_threads=False):
                keep = pc.and_(pc.equal(batch.column("status"), "ok"), pc.is_valid(batch.column("embedding")))
                batch = batch.filter(keep)
                if batch.num_rows:
                    yield batch


def read_face_vectors(rows_path: str, batch_rows: int = 8192) -> FaceVectors:
    """Every `ok` row with an embedding, from a Parquet file or a folder of parts (the job's rows), in
    manifest order: by relative path, then face. Two passes, a batch at a time: the first reads where each
    face is and sorts them; the second puts each embedding straight into its place in one half-precision
    array, so the driver never holds the embeddings twice."""
    paths: list[str] = []
    indices: list[np.ndarray] = []
    identities: list[str | None] = []
    contents: list[np.ndarray] = []
    names: dict[str | None, str | None] = {}  # one string per identity, not one per face
    hashes: list[np.ndarray] = []
    dim = 0
    columns = ["relative_path", "face_index", "identity", "face_hash", "sha256"]
    for batch in _kept_batches(rows_path, columns, batch_rows):
        dim = dim or len(batch.column("embedding")[0])
        paths += batch.column("relative_path").to_pylist()
        indices.append(batch.column("face_index").to_numpy(zero_copy_only=False))
        identities += [names.setdefault(name, name) for name in batch.column("identity").to_pylist()]
        contents.append(np.array([h or "" for h in batch.column("sha256").to_pylist()], dtype="S64"))
        hashes.append(hashes_as_integers(batch.column("face_hash").to_pylist()))
    if not paths:
        return FaceVectors([], np.zeros(0, int), [], np.zeros((0, 0), STORED), np.zeros(0, np.uint64))
    face_index = np.concatenate(indices)
    faces = face_index.tolist()
    order = np.array(sorted(range(len(paths)), key=lambda i: (paths[i], faces[i])), dtype=np.int64)
    place = np.empty_like(order)
    place[order] = np.arange(len(order))
    vectors = np.empty((len(paths), dim), STORED)
    start = 0
    for batch in _kept_batches(rows_path, [], batch_rows):
        block = batch.column("embedding").flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)
        vectors[place[start : start + len(block)]] = block
        start += len(block)
    if start != len(paths):
        raise RuntimeError(f"{rows_path} changed while it was read ({len(paths)} faces, then {start})")
    return FaceVectors(
        [paths[i] for i in order],
        face_index[order],
        [identities[i] for i in order],
        vectors,
        np.concatenate(hashes)[order],
        np.concatenate(contents)[order],
    )


def float_blocks(vectors: np.ndarray, rows: int = BLOCK_ROWS):
    """(start, float32 block) over `vectors`, `rows` at a time."""
    for start in range(0, len(vectors), rows):
        yield start, np.ascontiguousarray(vectors[start : start + rows], dtype=np.float32)


def nearest_neighbours(vectors: np.ndarray, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """For each row, its `k` most similar other rows (by inner product) and the similarities, (n, k) each,
    most similar first; -1 marks a missing neighbour (fewer than k+1 faces). Found, scored and ordered a
    block of rows at a time, straight into the two results."""
    count, _ = vectors.shape
    neighbours = np.full((count, k), -1, np.int64)
    similarities = np.zeros((count, k), np.float32)
    if count < 2:
        return neighbours, similarities
    index = _index_of(vectors, seed)
    for start, block in float_blocks(vectors):
        _, found = index.search(block, k + 1)
        scored = _exact_similarities(vectors, block, found)
        order = np.argsort(-scored, axis=1, kind="stable")  # the 8-bit codes' ranking, corrected
        found, scored = np.take_along_axis(found, order, axis=1), np.take_along_axis(scored, order, axis=1)
        rows = slice(start, start + len(block))
        neighbours[rows], similarities[rows] = _without_self(found, scored, k, first_row=start)
    return neighbours, similarities


def _index_of(vectors: np.ndarray, seed: int):
    """An exact index for few faces; for many, an inverted file of 8-bit codes (a quarter of the vectors'
    float32 size), trained on a sample of about 40 faces per list, as FAISS's k-means asks."""
    import faiss

    count, dim = vectors.shape
    if count <= EXACT_UP_TO:
        index = faiss.IndexFlatIP(dim)
    else:
        lists = int(2 * math.sqrt(count))
        index = faiss.IndexIVFScalarQuantizer(
            faiss.IndexFlatIP(dim), dim, lists, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT
        )
        index.by_residual = False  # codes of the unit vectors themselves: no residuals to train or hold
        size = min(count, TRAINING_POINTS_PER_LIST * lists)
        sample = np.sort(np.random.default_rng(seed).choice(count, size, replace=False))
        index.train(np.ascontiguousarray(vectors[sample], dtype=np.float32))
        index.nprobe = SEARCHED_LISTS
    for _, block in float_blocks(vectors):
        index.add(block)
    return index


def _exact_similarities(vectors: np.ndarray, queries: np.ndarray, found: np.ndarray) -> np.ndarray:
    """The inner products of each query with its candidates, from the stored vectors, one candidate rank at
    a time so that only a block of vectors is ever widened (-inf: no candidate)."""
    similarity = np.empty(found.shape, np.float32)
    for rank in range(found.shape[1]):
        candidates = vectors[np.maximum(found[:, rank], 0)].astype(np.float32)
        similarity[:, rank] = np.einsum("rd,rd->r", queries, candidates)
    similarity[found < 0] = -np.inf
    return similarity


def _without_self(neighbours: np.ndarray, similarities: np.ndarray, k: int, first_row: int = 0):
    """Drops each row's own index from its list (it is usually first, but ties may put a copy first); row i
    of the block is face `first_row + i`."""
    rows = first_row + np.arange(len(neighbours))[:, None]
    is_self = neighbours == rows
    # Push self to the end of each row, keeping the others in order, then cut to k.
    order = np.argsort(is_self, axis=1, kind="stable")
    neighbours = np.take_along_axis(neighbours, order, axis=1)[:, :k]
    similarities = np.take_along_axis(similarities, order, axis=1)[:, :k]
    similarities[neighbours < 0] = 0.0
    return neighbours, similarities

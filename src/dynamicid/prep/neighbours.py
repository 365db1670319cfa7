"""The kept faces' embeddings, read from the job's rows into one array, and each face's nearest neighbours.

Curation works on this k-nearest-neighbour graph, never on all pairs: near copies are neighbours whose
hashes are close, clusters are groups of the graph, and nothing grows with n^2. The neighbours come from
FAISS: an exact inner-product index up to `EXACT_UP_TO` faces, an inverted-file index above: about
2 sqrt(n) lists, 16 searched per query (pairwise recall of the clusters 0.9998 at 100k synthetic faces,
0.93 at 1M; searching more lists at 1M did not finish in 30 minutes on 2 cores). The driver holds n x d
float32 (2 GB per million 512-d faces, 0.5 GB for dlib's 128-d); benchmarks/RESULTS.md has the scale
table."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from dynamicid.faces.face_hash import hashes_as_integers

EXACT_UP_TO = 50_000
SEARCHED_LISTS = 16
TRAINING_SAMPLE = 100_000


@dataclass
class FaceVectors:
    """The manifest's kept faces in its order: where each is, its identity, unit embedding and hash."""

    relative_path: list[str]
    face_index: np.ndarray
    identity: list[str | None]
    vectors: np.ndarray  # (n, d) float32, unit rows
    hashes: np.ndarray  # (n,) uint64

    def __len__(self) -> int:
        return len(self.relative_path)


def read_face_vectors(rows_path: str, batch_rows: int = 65536) -> FaceVectors:
    """Every `ok` row with an embedding, from a Parquet file or a folder of parts (the job's rows), a batch at
    a time (never the whole table), in manifest order: by relative path, then face."""
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    columns = ["relative_path", "face_index", "identity", "status", "embedding", "face_hash"]
    paths: list[str] = []
    indices: list[np.ndarray] = []
    identities: list[str | None] = []
    blocks: list[np.ndarray] = []
    hashes: list[np.ndarray] = []
    for batch in ds.dataset(rows_path, format="parquet").to_batches(columns=columns, batch_size=batch_rows):
        keep = pc.and_(pc.equal(batch.column("status"), "ok"), pc.is_valid(batch.column("embedding")))
        batch = batch.filter(keep)
        if batch.num_rows == 0:
            continue
        embedding = batch.column("embedding")
        dim = len(embedding[0])
        blocks.append(embedding.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, dim))
        paths += batch.column("relative_path").to_pylist()
        indices.append(batch.column("face_index").to_numpy(zero_copy_only=False))
        identities += batch.column("identity").to_pylist()
        hashes.append(hashes_as_integers(batch.column("face_hash").to_pylist()))
    if not blocks:
        return FaceVectors([], np.zeros(0, int), [], np.zeros((0, 0), np.float32), np.zeros(0, np.uint64))
    face_index = np.concatenate(indices)
    order = np.lexsort((face_index, np.array(paths, dtype=object).astype(str)))
    return FaceVectors(
        [paths[i] for i in order],
        face_index[order],
        [identities[i] for i in order],
        np.concatenate(blocks)[order],
        np.concatenate(hashes)[order],
    )


def nearest_neighbours(vectors: np.ndarray, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """For each row, its `k` most similar other rows (by inner product) and the similarities, (n, k) each;
    -1 marks a missing neighbour (fewer than k+1 faces)."""
    import faiss

    count, dim = vectors.shape
    if count < 2:
        return np.full((count, k), -1, np.int64), np.zeros((count, k), np.float32)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if count <= EXACT_UP_TO:
        index = faiss.IndexFlatIP(dim)
    else:
        lists = int(2 * math.sqrt(count))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, lists, faiss.METRIC_INNER_PRODUCT)
        sample = np.random.default_rng(seed).choice(count, min(count, TRAINING_SAMPLE), replace=False)
        index.train(vectors[np.sort(sample)])
        index.nprobe = SEARCHED_LISTS
    index.add(vectors)
    similarities, neighbours = index.search(vectors, k + 1)
    return _without_self(neighbours, similarities, k)


def _without_self(neighbours: np.ndarray, similarities: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Drops each row's own index from its list (it is usually first, but ties may put a copy first)."""
    rows = np.arange(len(neighbours))[:, None]
    is_self = neighbours == rows
    # Push self to the end of each row, keeping the others in order, then cut to k.
    order = np.argsort(is_self, axis=1, kind="stable")
    neighbours = np.take_along_axis(neighbours, order, axis=1)[:, :k]
    similarities = np.take_along_axis(similarities, order, axis=1)[:, :k]
    similarities[neighbours < 0] = 0.0
    return neighbours, similarities

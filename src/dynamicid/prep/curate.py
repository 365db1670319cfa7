"""Curation after the job, on the whole manifest, in Spark (the driver never holds it):

- exact duplicates: files with the same bytes (sha256). The copy the driver keeps (under the person its face
  matches; among copies under one person, the first by path) keeps its faces; the others' kept faces become
  `rejected`, reason `duplicate`, with `duplicate_of` naming the kept file, and the message says when the
  copy sits under another identity;
- what `identities.find_identities` found on the driver (near copies, photos held for review, clusters and
  their people, distances), joined in;
- identity-disjoint splits: every face of one identity gets the same `split` (train, val or test), the one
  its person was given when first seen (`people`), else from a seeded hash of the identity, so evaluation
  never sees a training identity.

Curation marks rows; it deletes nothing. The files of a face it does not keep are set aside by the runner,
so a rerun finds them and resumes instead of redoing the face.
"""

from __future__ import annotations

SPLITS = ("train", "val", "test")
SPLIT_BUCKETS = 1_000_000


def parse_split(text: str) -> tuple[float, float, float] | None:
    """ "0.9,0.05,0.05" -> the three shares; None when it is not three shares from 0 to 1 summing to 1."""
    try:
        shares = [float(part) for part in text.split(",")]
    except ValueError:
        return None
    if len(shares) != 3 or any(not 0 <= share <= 1 for share in shares) or abs(sum(shares) - 1) > 1e-6:
        return None
    return shares[0], shares[1], shares[2]


def _under_another_identity(kept_identity):
    from pyspark.sql import functions as F

    elsewhere = ~F.col("identity").eqNullSafe(kept_identity)
    note = F.concat(
        F.lit(" under another identity ("),
        F.coalesce(kept_identity, F.lit("none")),
        F.lit("): the same photo cannot be two people; check both"),
    )
    return F.when(elsewhere, note).otherwise(F.lit(""))


def _rejected_as_duplicate(frame, copy, kept_path, message):
    """`frame` with the rows where `copy` holds rejected as duplicates of `kept_path`."""
    from pyspark.sql import functions as F

    return frame.withColumns(
        {
            "status": F.when(copy, F.lit("rejected")).otherwise(F.col("status")),
            "reason": F.when(copy, F.lit("duplicate")).otherwise(F.col("reason")),
            "message": F.when(copy, message).otherwise(F.col("message")),
            "duplicate_of": F.when(copy, kept_path).otherwise(F.col("duplicate_of")),
        }
    )


def mark_exact_duplicates(frame, findings=None):
    """The job's rows with `duplicate_of` added and the other copies of one file's bytes rejected. The copy
    kept is the one the driver's `findings` keep (the one under the person its face matches); path order
    only breaks ties."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    files = frame.select("sha256", "relative_path", "identity", "face_index").where(F.col("sha256").isNotNull())
    if findings is not None:
        kept_face = F.col("copy_of_path").isNull() & F.col("rejection").isNull()
        decided = findings.select("relative_path", "face_index", kept_face.alias("kept_face"))
        files = files.join(decided, ["relative_path", "face_index"], "left")
    else:
        files = files.withColumn("kept_face", F.lit(True))
    files = files.groupBy("sha256", "relative_path", "identity").agg(
        F.max(F.coalesce(F.col("kept_face"), F.lit(False)).cast("int")).alias("kept_by_driver")
    )
    first = Window.partitionBy("sha256").orderBy(F.desc("kept_by_driver"), "relative_path")
    kept = files.withColumn("rank", F.row_number().over(first)).where(F.col("rank") == 1)
    kept = kept.select("sha256", F.col("relative_path").alias("kept_path"), F.col("identity").alias("kept_identity"))
    joined = frame.withColumn("duplicate_of", F.lit(None).cast("string")).join(kept, "sha256", "left")
    copy = (F.col("status") == "ok") & F.col("kept_path").isNotNull() & (F.col("relative_path") != F.col("kept_path"))
    message = F.concat(F.lit("the same file as "), F.col("kept_path"), _under_another_identity(F.col("kept_identity")))
    marked = _rejected_as_duplicate(joined, copy, F.col("kept_path"), message)
    return marked.select(*frame.columns, "duplicate_of")


# What the driver's `identities` pass hands back, one row per face the job kept (`identities.findings_frame`).
FINDINGS_COLUMNS = [
    ("relative_path", "string"),
    ("face_index", "int"),
    ("found_identity", "string"),
    ("identity_distance", "double"),
    ("identity_outlier", "boolean"),
    ("copy_of_path", "string"),
    ("copy_of_identity", "string"),
    ("rejection", "string"),  # held_for_review (one photo under two people) or rejected_in_review, or null
    ("rejection_message", "string"),
    ("reviewed", "boolean"),  # a review decided this face's person
]


def with_findings(frame, findings, layout: str):
    """`frame` (after `mark_exact_duplicates`) with the driver's findings: near copies rejected, cluster
    identities set, distances and outlier flags. The findings cover every face the job kept, exact duplicates
    included (the driver finds them as copies too, and gives a copy its kept face's cluster)."""
    from pyspark.sql import functions as F

    joined = frame.join(findings, ["relative_path", "face_index"], "left")
    copy = (F.col("status") == "ok") & F.col("copy_of_path").isNotNull()
    message = F.concat(
        F.lit("a near copy of "),
        F.col("copy_of_path"),
        F.lit(" (the same face, re-encoded, resized or cropped)"),
        _under_another_identity(F.col("copy_of_identity")),
    )
    joined = _rejected_as_duplicate(joined, copy, F.col("copy_of_path"), message)
    out = F.col("rejection").isNotNull() & F.col("status").isin("ok", "rejected")
    joined = joined.withColumns(
        {
            "status": F.when(out, F.lit("rejected")).otherwise(F.col("status")),
            "reason": F.when(out, F.col("rejection")).otherwise(F.col("reason")),
            "message": F.when(out, F.col("rejection_message")).otherwise(F.col("message")),
            "duplicate_of": F.when(out, F.lit(None).cast("string")).otherwise(F.col("duplicate_of")),
        }
    )
    found = F.col("found_identity")
    identity = found if layout == "cluster" else F.coalesce(found, F.col("identity"))
    source = F.when(F.coalesce(F.col("reviewed"), F.lit(False)), F.lit("review")).when(
        identity.isNotNull(), F.lit("cluster" if layout == "cluster" else "folder")
    )
    return joined.select(
        *[c for c in frame.columns if c != "identity"],
        identity.alias("identity"),
        F.col("identity").alias("input_identity"),
        source.alias("identity_source"),
        "identity_distance",
        F.coalesce(F.col("identity_outlier"), F.lit(False)).alias("identity_outlier"),
    )


def with_split(frame, split: str, seed: int, known=None):
    """`frame` with `split`: train, val or test per identity (a face without one: per file). A person in
    `known` (identity, known_split) keeps the split given before; the shares decide for new people only."""
    from pyspark.sql import functions as F

    shares = parse_split(split)
    assert shares is not None  # PrepConfig checked it
    key = F.coalesce(F.col("identity"), F.col("name"), F.col("relative_path"))
    bucket = F.pmod(F.xxhash64(F.lit(seed), key), F.lit(SPLIT_BUCKETS)) / SPLIT_BUCKETS
    split_of = F.when(bucket < shares[0], "train").when(bucket < shares[0] + shares[1], "val").otherwise("test")
    if known is None:
        return frame.withColumn("split", split_of)
    joined = frame.join(F.broadcast(known), "identity", "left")
    return joined.withColumn("split", F.coalesce(F.col("known_split"), split_of)).select(*frame.columns, "split")

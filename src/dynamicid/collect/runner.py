"""Running `dynamicid collect`: checks, the lock, the Spark job, the manifest, content duplicates, the summary."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
import uuid
from dataclasses import dataclass

from dynamicid.atomic import write_atomic
from dynamicid.collect.config import CollectConfig
from dynamicid.collect.fetch import TEMPORARY_PREFIX
from dynamicid.collect.job import (
    COLLECT_DDL,
    COLUMNS,
    SCHEMA,
    STATE,
    CollectError,
    download_partition,
    read_list,
    settled,
)
from dynamicid.prep import outputs
from dynamicid.prep.schema import read_checked_parquet
from dynamicid.prep.sparkenv import spark_uri

logger = logging.getLogger(__name__)
MANIFEST = "manifest.parquet"
RUNNING = "running"  # present while a run works: a run that finds it sweeps a crashed run's temporaries


@dataclass
class CollectResult:
    manifest_path: str
    summary: dict


def run_collect(config: CollectConfig, spark=None) -> CollectResult:
    from dynamicid.prep.guard import OutputLock, check_writable

    if not os.path.isfile(config.urls):
        raise CollectError(f"URL list not found: {config.urls}")
    output = os.path.abspath(config.output)
    if os.path.isfile(output):
        raise CollectError(f"the output {output} is a file; give a folder")
    check_writable(output, STATE)
    state = os.path.join(output, STATE)
    with OutputLock(output, STATE, "collect"):
        marker = os.path.join(state, RUNNING)
        if os.path.exists(marker):
            removed = outputs.remove_temporaries(output, lambda name: name.startswith(TEMPORARY_PREFIX))
            logger.info("removed %d temporary files of an interrupted run", removed)
        shutil.rmtree(os.path.join(state, "runs"), ignore_errors=True)  # a killed run's rows: ours, under the lock
        write_atomic(marker, b"")
        if spark is None:
            from dynamicid.prep.sparkenv import build_session

            spark = build_session(config.master, app_name="dynamicid-collect")
        started = time.perf_counter()
        manifest_path, fetched_now = _collect(spark, config, output, state)
        summary = _summary(spark, manifest_path, fetched_now, time.perf_counter() - started)
        write_atomic(os.path.join(state, "summary.json"), json.dumps(summary, indent=1).encode())
        os.remove(marker)
    return CollectResult(manifest_path, summary)


def _collect(spark, config: CollectConfig, output: str, state: str) -> tuple[str, int]:
    """Duplicate URLs marked, settled ones carried over, the rest downloaded; returns the manifest and how
    many URLs were fetched in this run."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    cached = read_list(spark, config).cache()
    malformed = cached.where(F.col("problem").isNotNull()).select(
        "row", "url", "identity", "caption", F.lit("invalid_url").alias("status"), F.col("problem").alias("message")
    )
    listing = cached.where(F.col("problem").isNull()).drop("problem")
    first = Window.partitionBy("url").orderBy("row")
    marked = listing.withColumn("first_row", F.first("row").over(first)).withColumn(
        "first_identity", F.first("identity").over(first)
    )
    duplicates = marked.where(F.col("row") != F.col("first_row")).select(
        "row",
        "url",
        "identity",
        "caption",
        F.lit("duplicate_url").alias("status"),
        F.concat(F.lit("listed before, as "), F.coalesce(F.col("first_identity"), F.lit("(no identity)"))).alias(
            "message"
        ),
    )
    unique = marked.where(F.col("row") == F.col("first_row")).select("row", "url", "identity", "caption")
    manifest_path = os.path.join(state, MANIFEST)
    carried = withdrawn = None
    run_dir = os.path.join(state, "runs", uuid.uuid4().hex[:12])
    try:
        if os.path.isfile(manifest_path):
            carried, withdrawn = _previous_rows(spark, manifest_path, unique, output, run_dir)
            unique = unique.join(carried.select("url"), "url", "left_anti")
        count = unique.count()
        rows_uri = spark_uri(os.path.join(run_dir, "rows"))
        _download(spark, unique, count, config, output, rows_uri)
        fresh = spark.read.schema(COLLECT_DDL).parquet(rows_uri)
        every = fresh.unionByName(duplicates, allowMissingColumns=True).unionByName(malformed, allowMissingColumns=True)
        for earlier in (carried, withdrawn):
            if earlier is not None:
                every = every.unionByName(earlier, allowMissingColumns=True)
        _write_manifest(spark, every, manifest_path, output)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
        cached.unpersist()  # else a rerun on a rewritten list of the same name would read this cache
    return manifest_path, count


def _previous_rows(spark, manifest_path: str, unique, output: str, run_dir: str):
    """The earlier manifest's rows a rerun keeps (`carried`: settled, still listed under the same identity,
    and for a photo, its file still in OUTPUT), and `withdrawn`: a row per URL no longer listed whose photo
    was removed now (a takedown). A photo listed now under another identity is removed and fetched again."""
    from pyspark.sql import functions as F

    previous = read_manifest(spark, manifest_path, run_dir)
    listed = unique.select("url", F.col("identity").alias("listed_identity"))
    joined = previous.join(listed, "url", "left")
    same = F.col("listed_identity").eqNullSafe(F.col("identity"))
    checked = joined.mapInPandas(_check_paths(output), schema=f"{COLLECT_DDL}, listed_identity string, present boolean")
    checked_uri = spark_uri(os.path.join(run_dir, "previous"))  # written once: the removals below change `present`
    checked.write.mode("overwrite").parquet(checked_uri)
    checked = spark.read.parquet(checked_uri)
    carried = settled(checked.where(same & ((F.col("status") != "ok") | F.col("present"))))
    stale = checked.where(~same & F.col("present")).select("path")
    stale.coalesce(spark.sparkContext.defaultParallelism).foreachPartition(_remover(output, "path"))
    gone = checked.join(unique.select("url"), "url", "left_anti")  # not listed at all now
    withdrawn = gone.where(F.col("present") | (F.col("status") == "withdrawn")).select(
        *[c for c in COLUMNS if c not in ("status", "path", "message")],
        F.lit("withdrawn").alias("status"),
        F.lit(None).cast("string").alias("path"),
        F.lit("no longer in the URL list: its photo was removed from OUTPUT").alias("message"),
    )
    return carried.select(*COLUMNS), withdrawn.select(*COLUMNS)


def read_manifest(spark, manifest_path: str, run_dir: str):
    """An earlier manifest, its columns checked first (`schema.read_checked_parquet`)."""
    return read_checked_parquet(spark, manifest_path, SCHEMA, run_dir, "move it aside to collect every URL again")


def _check_paths(output: str):
    """For mapInPandas: `present` is whether a row's photo is a file inside OUTPUT; a path that would leave
    OUTPUT (a hand-edited manifest) is never read or removed, and the row is fetched again."""

    def run(batches):
        for batch in batches:
            batch["present"] = [bool(path) and inside(output, path) is not None for path in batch["path"]]
            batch.loc[~batch["present"], "path"] = None
            yield batch

    return run


def inside(output: str, relative: str) -> str | None:
    """OUTPUT/relative when that is a file inside OUTPUT (after links), else None."""
    if not isinstance(relative, str) or os.path.isabs(relative):
        return None
    root = os.path.realpath(output)
    full = os.path.realpath(os.path.join(root, relative))
    return full if full.startswith(root + os.sep) and os.path.isfile(full) else None


def _download(spark, unique, count: int, config: CollectConfig, output: str, rows_uri: str) -> None:
    from dynamicid.prep.spark_job import _SparkProgress

    cores = spark.sparkContext.defaultParallelism
    partitions = max(1, min(count, max(math.ceil(count / config.urls_per_partition), 2 * cores)))
    result = unique.repartition(partitions).mapInPandas(download_partition(config, output), schema=COLLECT_DDL)
    with _SparkProgress(spark, count, partitions, config.progress and count > 0, label="collect"):
        result.write.mode("overwrite").parquet(rows_uri)


def _write_manifest(spark, every, manifest_path: str, output: str) -> None:
    """Same bytes as a photo already kept: the later one becomes duplicate_content and its file goes (after the
    manifest that says so is written, so a crash in between leaves only a file no row names)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    from dynamicid.prep.runner import write_one_parquet

    ok = F.col("status") == "ok"
    kept_first = Window.partitionBy("sha256").orderBy("row")  # the first listed is kept, in any run
    photos = every.where(ok).withColumn("rank", F.row_number().over(kept_first))
    photos = photos.withColumn("kept_path", F.first("path").over(kept_first))
    again = F.col("rank") > 1
    photos = photos.select(
        *[c for c in COLUMNS if c not in ("status", "path", "message")],
        F.when(again, F.lit("duplicate_content")).otherwise(F.col("status")).alias("status"),
        F.when(again, F.lit(None)).otherwise(F.col("path")).alias("path"),
        F.when(again, F.concat(F.lit("the same bytes as "), F.col("kept_path")))
        .otherwise(F.col("message"))
        .alias("message"),
        F.when(again, F.col("path")).alias("drop_path"),
    ).cache()
    rest = every.where(~ok | F.col("status").isNull()).withColumn("drop_path", F.lit(None).cast("string"))
    final = photos.unionByName(rest.select(*photos.columns))
    write_one_parquet(final.select(*COLUMNS).orderBy("row"), manifest_path)
    drops = photos.where(F.col("drop_path").isNotNull()).select("drop_path")
    drops.coalesce(spark.sparkContext.defaultParallelism).foreachPartition(_remover(output, "drop_path"))
    photos.unpersist()


def _remover(output: str, column: str):
    """Removes the rows' photos on the workers: only files inside OUTPUT."""

    def remove(rows) -> None:
        for row in rows:
            path = inside(output, row[column])
            if path is not None:
                os.remove(path)

    return remove


def _summary(spark, manifest_path: str, fetched_now: int, seconds: float) -> dict:
    from pyspark.sql import functions as F

    table = spark.read.parquet(spark_uri(manifest_path))
    per_status = table.groupBy("status").agg(F.count("*").alias("n"), F.sum("bytes").alias("bytes")).collect()
    counts = {row["status"]: row["n"] for row in per_status}
    kept_bytes = sum(row["bytes"] or 0 for row in per_status if row["status"] == "ok")
    return {
        "urls": sum(counts.values()),
        "statuses": dict(sorted(counts.items())),
        "photos": counts.get("ok", 0),
        "bytes": int(kept_bytes),
        "fetched_this_run": fetched_now,
        "seconds": round(seconds, 2),
        "urls_per_second": round(fetched_now / seconds, 2) if seconds > 0 else None,
    }

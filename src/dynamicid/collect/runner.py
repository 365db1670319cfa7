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
from dynamicid.collect.job import COLLECT_DDL, COLUMNS, STATE, CollectError, download_partition, read_list, settled
from dynamicid.prep import outputs

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

    listing = read_list(spark, config).cache()
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
    carried = None
    if os.path.isfile(manifest_path):
        previous = settled(spark.read.schema(COLLECT_DDL).parquet("file://" + manifest_path))
        previous = previous.withColumnRenamed("row", "old_row").withColumnRenamed("identity", "old_identity")
        carried = (
            previous.join(unique.select("row", "url", "identity"), "url")
            .where(F.col("old_identity").eqNullSafe(F.col("identity")))  # a new identity is fetched again
            .drop("old_row", "old_identity")
        )
        unique = unique.join(carried.select("url"), "url", "left_anti")
    run_dir = os.path.join(state, "runs", uuid.uuid4().hex[:12])
    try:
        count = unique.count()
        rows_uri = "file://" + os.path.join(run_dir, "rows")
        _download(spark, unique, count, config, output, rows_uri)
        fresh = spark.read.schema(COLLECT_DDL).parquet(rows_uri)
        every = fresh.unionByName(duplicates, allowMissingColumns=True)
        if carried is not None:
            every = every.unionByName(carried, allowMissingColumns=True)
        _write_manifest(spark, every, manifest_path, output)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
        listing.unpersist()
    return manifest_path, count


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
    drops.coalesce(spark.sparkContext.defaultParallelism).foreachPartition(_remover(output))  # on the workers
    photos.unpersist()


def _remover(output: str):
    def remove(rows) -> None:
        for row in rows:
            path = os.path.join(output, row.drop_path)
            if os.path.isfile(path):
                os.remove(path)

    return remove


def _summary(spark, manifest_path: str, fetched_now: int, seconds: float) -> dict:
    from pyspark.sql import functions as F

    table = spark.read.parquet("file://" + manifest_path)
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

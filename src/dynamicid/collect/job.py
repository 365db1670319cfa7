"""`dynamicid collect` on Spark: the URL list is read by Spark (the driver never holds it), duplicate URLs
are marked, URLs a previous run settled are carried over, the rest are downloaded in Spark tasks with many
downloads at once per task, and the rows become OUTPUT/_collect/manifest.parquet."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import unquote, urlsplit

import pandas as pd

from dynamicid.collect.config import CollectConfig
from dynamicid.collect.fetch import RETRIED_ON_RERUN, Fetched, HostLimits, fetch
from dynamicid.errors import InputError, first_line
from dynamicid.prep import outputs
from dynamicid.prep.schema import spark_ddl
from dynamicid.prep.sparkenv import spark_uri

STATE = "_collect"
# The manifest's columns, written once: the names and Spark's schema both come from here.
SCHEMA = [
    ("row", "bigint"),
    ("url", "string"),
    ("identity", "string"),
    ("caption", "string"),
    ("status", "string"),
    ("http_status", "int"),
    ("bytes", "bigint"),
    ("sha256", "string"),
    ("content_type", "string"),
    ("path", "string"),
    ("elapsed_ms", "double"),
    ("message", "string"),
    ("settled_at", "double"),
]
COLUMNS = [name for name, _ in SCHEMA]
COLLECT_DDL = spark_ddl(SCHEMA)
READERS = {".csv": "csv", ".tsv": "tsv", ".parquet": "parquet", ".jsonl": "json", ".json": "json", ".ndjson": "json"}


class CollectError(InputError):
    """A problem with the URL list or OUTPUT, found before any download."""


def photo_name(url: str) -> str:
    """A readable, unique name without extension: the URL's last path part, escaped, and 12 hex digits of
    the URL's hash (two URLs never share a name; the bytes decide the extension)."""
    stem = unquote(urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1]).rsplit(".", 1)[0][:60] or "photo"
    return f"{outputs.path_component(stem)}-{hashlib.sha1(url.encode('utf-8', 'replace')).hexdigest()[:12]}"


def read_list(spark, config: CollectConfig):
    """The URL list as a DataFrame of (row, url, identity, caption, problem), read by Spark; `row` is the
    listing order, and `problem` says why a row is not a URL row at all (a malformed JSON line), else null."""
    from pyspark.sql import functions as F

    path = os.path.abspath(config.urls)
    kind = READERS.get(os.path.splitext(path)[1].lower(), "text")
    if kind != "parquet":
        check_encoding(path, config.encoding)
    try:
        frame = _reader(spark, kind, config).load(spark_uri(path))
        columns = frame.columns
    except Exception as err:  # Spark's AnalysisException or a Java error: a list it cannot read
        raise CollectError(
            f"{config.urls} cannot be read as a {kind} list ({first_line(err)[:200]}); check the file, or give the "
            "list as .csv, .tsv, .parquet, .jsonl or plain text"
        ) from None
    if kind == "text":
        frame, columns = frame.withColumnRenamed("_c0", config.url_column), [config.url_column]
    if config.url_column not in columns:
        raise CollectError(
            f"{config.urls} has no column {config.url_column!r} (its columns: {', '.join(columns) or 'none'}); "
            "name the URL column with --url-column"
        )

    def optional(name: str):
        return F.col(name).cast("string") if name in columns else F.lit(None).cast("string")

    corrupt = F.col(CORRUPT) if CORRUPT in columns else F.lit(None).cast("string")
    frame = frame.select(
        F.coalesce(F.trim(F.col(config.url_column).cast("string")), F.substring(F.trim(corrupt), 1, 500)).alias("url"),
        optional(config.identity_column).alias("identity"),
        optional(config.caption_column).alias("caption"),
        F.when(corrupt.isNotNull(), F.lit("this line of the list is not valid JSON")).alias("problem"),
    ).where(F.col("url").isNotNull() & (F.col("url") != ""))
    return frame.withColumn("row", F.monotonically_increasing_id())


CORRUPT = "_corrupt_record"


def _reader(spark, kind: str, config: CollectConfig):
    reader = spark.read.option("encoding", config.spark_charset)
    if kind in ("csv", "tsv"):  # RFC 4180: a quoted field may hold commas, doubled quotes and newlines
        options = {"header": True, "multiLine": True, "escape": '"', "sep": "\t" if kind == "tsv" else ","}
        return reader.format("csv").options(**options)
    if kind == "text":  # one URL a line, read as a one-column CSV that quotes nothing
        return reader.format("csv").options(header=False, sep="\u0001", quote="\u0000", escape="\u0000")
    if kind == "json":
        return reader.format("json").options(mode="PERMISSIVE", columnNameOfCorruptRecord=CORRUPT)
    return reader.format("parquet")


def check_encoding(path: str, encoding: str) -> None:
    """A text list must decode in `encoding` (UTF-8 by default): the first line that does not is named."""
    import codecs

    decoder = codecs.getincrementaldecoder(encoding)()  # the config checked the name
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, 1):
            try:
                decoder.decode(line)
            except UnicodeDecodeError as err:
                raise CollectError(
                    f"{path}, line {number}: the text is not {encoding} ({err.reason} at byte {err.start}); save the "
                    "list as UTF-8, or name its encoding with --encoding (e.g. --encoding latin-1)"
                ) from None


def _download_one(item: Any, config: CollectConfig, output: str, hosts: HostLimits) -> dict:
    began = time.perf_counter()
    folder = os.path.join(output, outputs.identity_folder(item.identity))
    try:
        fetched = fetch(item.url, os.path.join(folder, photo_name(item.url)), config, hosts)
    except Exception as err:  # never one URL's end of the job: a row that says what happened
        fetched = Fetched("error", message=f"{type(err).__name__}: {err}"[:300])
    return {
        "row": item.row,
        "url": item.url,
        "identity": item.identity,
        "caption": item.caption,
        "status": fetched.status,
        "http_status": fetched.http_status,
        "bytes": fetched.bytes,
        "sha256": fetched.sha256,
        "content_type": fetched.content_type,
        "path": os.path.relpath(fetched.path, output) if fetched.path else None,
        "elapsed_ms": (time.perf_counter() - began) * 1000,
        "message": fetched.message,
        "settled_at": time.time(),
    }


def download_partition(config: CollectConfig, output: str):
    """For mapInPandas: each task downloads its URLs `config.threads` at a time."""

    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        # The task's URLs (at most urls_per_partition short rows) go to the pool at once: Arrow hands them
        # over in small batches, and waiting for each batch's slowest download would idle the other threads.
        items = [item for batch in batches for item in batch.itertuples(index=False)]
        hosts = HostLimits(config.per_host)
        with ThreadPoolExecutor(config.threads) as pool:
            rows = list(pool.map(lambda item: _download_one(item, config, output, hosts), items))
        for start in range(0, len(rows), 1024):
            yield pd.DataFrame(rows[start : start + 1024], columns=COLUMNS).astype({"http_status": "Int32"})

    return run


def settled(previous):
    """A previous run's rows that a rerun keeps: all but the transient failures (retried)."""
    from pyspark.sql import functions as F

    transient = F.col("status").isin(*RETRIED_ON_RERUN) | (
        (F.col("status") == "http_error") & ((F.col("http_status") == 429) | (F.col("http_status") >= 500))
    )
    return previous.where(~transient & ~F.col("status").isin("duplicate_url", "withdrawn"))

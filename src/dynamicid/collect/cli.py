"""`dynamicid collect`. Command modules print their report to stdout; the library logs."""

from __future__ import annotations

from dynamicid.collect.config import CollectConfig
from dynamicid.options import Command, config_from


def run_collect_command(args) -> int:
    from dynamicid.collect.runner import run_collect

    config = config_from(args, CollectConfig)
    result = run_collect(config)
    summary = result.summary
    print(f"collected {summary['photos']} photos ({summary['bytes'] / 2**20:.1f} MiB) from {summary['urls']} URLs")
    for status, count in summary["statuses"].items():
        print(f"  {status:<18} {count}")
    rate = summary["urls_per_second"]
    print(f"  fetched this run:  {summary['fetched_this_run']} URLs in {summary['seconds']} s ({rate} URLs/s)")
    print(f"  manifest:          {result.manifest_path}")
    print(f"next: dynamicid prep {config.output} DATASET")
    return 0


COMMANDS = (
    Command(
        "collect",
        "download photos from a URL list on Spark, with a status for every URL, laid out for prep",
        "Reads URLS (CSV, TSV, Parquet, JSON Lines or plain text) with Spark and downloads every http(s) URL in "
        "Spark tasks, many at once per task. Photos go to OUTPUT/<identity>/NAME.EXT (the extension from the "
        "bytes; no identity column: OUTPUT/NAME.EXT), ready for `dynamicid prep OUTPUT DATASET`; "
        "OUTPUT/_collect/manifest.parquet has a row per listed URL with its status (ok, http_error, timeout, "
        "too_large, not_an_image, incomplete, redirect_error, connection_error, invalid_url, opted_out, "
        "duplicate_url, duplicate_content). A rerun fetches only what is not settled: new URLs and transient "
        "failures.",
        CollectConfig,
        run_collect_command,
    ),
)

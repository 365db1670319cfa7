"""`dynamicid collect`. Command modules print their report to stdout; the library logs."""

from __future__ import annotations

from dynamicid.collect.config import CollectConfig
from dynamicid.options import Command, config_from, counted


def run_collect_command(args) -> int:
    from dynamicid.collect.runner import run_collect

    config = config_from(args, CollectConfig)
    result = run_collect(config)
    summary = result.summary
    photos, urls = counted(summary["photos"], "photo"), counted(summary["urls"], "URL")
    print(f"collected {photos} ({summary['bytes'] / 2**20:.1f} MiB) from {urls}")
    for status, count in summary["statuses"].items():
        print(f"  {status:<18} {count}")
    rate = summary["urls_per_second"]
    print(
        f"  fetched this run:  {counted(summary['fetched_this_run'], 'URL')} in {summary['seconds']} s ({rate} URLs/s)"
    )
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
        "too_large, not_an_image, incomplete, redirect_error, connection_error, invalid_url, blocked_address, "
        "opted_out, duplicate_url, duplicate_content, withdrawn). Loopback, private, link-local and reserved "
        "addresses are never connected to (--allow-addresses). A rerun fetches only what is not settled and "
        "honours the list as it is now: a URL taken off it has its photo removed.",
        CollectConfig,
        run_collect_command,
    ),
)

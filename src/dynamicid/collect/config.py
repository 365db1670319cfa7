"""Typed configuration of `dynamicid collect`."""

from __future__ import annotations

from dataclasses import dataclass

from dynamicid import __version__
from dynamicid.options import check_limits, option

USER_AGENT = f"dynamicid-collect/{__version__} (face dataset research)"


@dataclass(frozen=True)
class CollectConfig:
    """`dynamicid collect URLS OUTPUT`: every field is an option of the command and a key of its --config file."""

    urls: str = option(
        help="the URL list: .csv, .tsv, .parquet, .jsonl/.json (a url column, optional identity and caption) or "
        "plain text (one URL per line)",
        positional=True,
    )
    output: str = option(help="folder for the photos, as prep reads them (OUTPUT/<identity>/NAME.ext)", positional=True)
    url_column: str = option("url", "the URL list's column of URLs")
    identity_column: str = option("identity", "the column naming the person (absent: a flat folder)")
    caption_column: str = option("caption", "the column of captions, kept in the manifest (absent: none)")
    max_bytes: int = option(
        20 * 1024 * 1024, "largest photo, in bytes (Content-Length and streamed)", limits=(1, 2**34)
    )
    timeout: float = option(10.0, "seconds to connect, and between two reads of a response", limits=(0.1, 600.0))
    max_seconds: float = option(
        60.0, "seconds one download may take in all (a slow server is a timeout)", limits=(1.0, 3600.0)
    )
    retries: int = option(2, "retries after a timeout, a lost connection, 429 or 5xx (with backoff)", limits=(0, 20))
    backoff: float = option(
        1.0, "seconds before the first retry; doubled each time (Retry-After wins)", limits=(0.0, 600.0)
    )
    max_redirects: int = option(5, "redirects followed, at most", limits=(0, 50))
    per_host: int = option(4, "downloads at once from one host, in each Spark task", limits=(1, 1000))
    threads: int = option(32, "downloads at once in each Spark task (they wait on the network)", limits=(1, 1024))
    urls_per_partition: int = option(512, "URLs per Spark task", limits=(1, 10_000_000))
    respect_opt_out: bool = option(
        True, "download photos whose server says X-Robots-Tag: noai or noimageai (by default they are opted_out)"
    )
    user_agent: str = option(USER_AGENT, "the User-Agent header sent")
    master: str | None = option(None, "Spark master (default: local[*], or spark-submit's)")
    progress: bool = option(True, "no progress bar")

    def __post_init__(self) -> None:
        check_limits(self)

"""Typed configuration of `dynamicid collect`."""

from __future__ import annotations

import codecs
from dataclasses import dataclass

from dynamicid import __version__
from dynamicid.collect.network import parse_networks
from dynamicid.errors import ConfigError
from dynamicid.options import check_limits, option

# Python's codec names -> the names Spark's CSV and JSON readers take (the encodings they read).
SPARK_CHARSETS = {
    "utf-8": "utf-8",
    "iso8859-1": "iso-8859-1",
    "ascii": "us-ascii",
    "utf-16": "utf-16",
    "utf-16-be": "utf-16be",
    "utf-16-le": "utf-16le",
    "utf-32": "utf-32",
}
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
    encoding: str = option(
        "utf-8", "the text encoding of a CSV, TSV, JSON Lines or plain-text list: " + ", ".join(SPARK_CHARSETS.values())
    )
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
        True,
        "download photos whose server says X-Robots-Tag: noai or noimageai, or whose C2PA credentials say "
        "training-mining notAllowed (by default they are opted_out)",
    )
    user_agent: str = option(USER_AGENT, "the User-Agent header sent (printable ASCII)")
    allow_addresses: str = option(
        "",
        "addresses collect may connect to beyond public ones, as CIDRs separated by commas (e.g. 10.0.0.0/8); by "
        "default loopback, private, link-local (the cloud metadata address) and reserved addresses are "
        "blocked_address, for listed URLs and redirects alike",
    )
    master: str | None = option(None, "Spark master (default: local[*], or spark-submit's)")
    progress: bool = option(True, "no progress bar")

    def __post_init__(self) -> None:
        check_limits(self)
        if not (self.user_agent.isascii() and self.user_agent.isprintable() and self.user_agent.strip()):
            raise ConfigError(
                f"--user-agent {self.user_agent!r}: an HTTP header holds printable ASCII only; give such a text"
            )
        self.allowed_networks  # noqa: B018 - a bad CIDR is refused now, before any download
        self.spark_charset  # noqa: B018 - and an encoding Spark cannot read

    @property
    def spark_charset(self) -> str:
        """The encoding as Spark's readers name it."""
        try:
            name = codecs.lookup(self.encoding).name
        except LookupError:
            name = None
        if name not in SPARK_CHARSETS:
            raise ConfigError(
                f"--encoding {self.encoding!r}: the lists can be read in {', '.join(SPARK_CHARSETS.values())}"
            )
        return SPARK_CHARSETS[name]

    @property
    def allowed_networks(self) -> tuple:
        return parse_networks(self.allow_addresses)

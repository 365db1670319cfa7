"""`dynamicid collect` against its own network and hostile servers (issue 35 §3, §4): blocked addresses for
listed URLs, redirects and names; one deadline for the whole exchange; IPv6 literals; options refused
before any download; and the URL list as it is now (takedowns, gone files, manifests edited by hand)."""

import ipaddress
import os
import socket
import time

import pandas as pd
import pytest
from photo_server import PhotoServer

from dynamicid.collect import CollectConfig, run_collect
from dynamicid.collect.fetch import HostLimits, fetch
from dynamicid.collect.job import CollectError
from dynamicid.collect.network import refusal
from dynamicid.errors import ConfigError, InputError

LOOPBACK = "127.0.0.1/32"
QUICK = dict(timeout=1.0, max_seconds=1.5, retries=0, backoff=0.05, max_bytes=200_000, progress=False)


@pytest.fixture(scope="module")
def server():
    with PhotoServer() as running:
        yield running


def _fetch(url: str, folder, **options):
    config = CollectConfig(urls="-", output=str(folder), **(QUICK | options))
    return fetch(url, str(folder / "photo"), config, HostLimits(4))


@pytest.mark.parametrize(
    "address, blocked",
    [
        ("127.0.0.1", True),
        ("10.1.2.3", True),
        ("172.16.0.9", True),
        ("192.168.1.1", True),
        ("169.254.169.254", True),
        ("100.64.0.1", True),  # shared address space (carrier NAT)
        ("0.0.0.0", True),
        ("::1", True),
        ("fe80::1", True),
        ("fd00::1", True),
        ("::ffff:127.0.0.1", True),  # IPv4-mapped loopback
        ("224.0.0.1", True),
        ("93.184.216.34", False),
        ("2606:4700::1111", False),
    ],
)
def test_only_public_addresses_pass_unless_allowed(address, blocked):
    assert (refusal(address) is not None) == blocked, address
    everything = [ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")]
    assert refusal(address, everything) is None, address  # --allow-addresses lets any of them


def test_listed_urls_redirects_and_names_to_the_local_network_are_blocked_without_connecting(server, tmp_path):
    before = server.requests.copy()
    port = server.url.rsplit(":", 1)[1]
    for url in (f"{server.url}/photo/a.jpg", f"http://localhost:{port}/photo/a.jpg"):
        got = _fetch(url, tmp_path)
        assert got.status == "blocked_address" and "loopback" in got.message, (url, got)
    assert server.requests == before  # nothing reached the server
    # With the loopback address allowed, a redirect onwards to the metadata address or a private one is blocked.
    for path in ("/to-metadata", "/to-private"):
        got = _fetch(server.url + path, tmp_path, allow_addresses=LOOPBACK)
        assert got.status == "blocked_address", (path, got)
    assert "169.254.169.254" in _fetch(server.url + "/to-metadata", tmp_path, allow_addresses=LOOPBACK).message
    assert _fetch(server.url + "/photo/a.jpg", tmp_path, allow_addresses=LOOPBACK).status == "ok"
    assert not list(tmp_path.glob(".collect-*"))


def test_the_address_connected_to_is_checked_not_only_the_name(server, tmp_path, monkeypatch):
    """A name that resolves to a public address but whose connection lands on a blocked one (a DNS or NAT
    trick) is refused after connecting: the check reads the socket's peer."""
    port = int(server.url.rsplit(":", 1)[1])
    real_connect = socket.socket.connect

    def resolve(host, port_, *args, **kwargs):
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", port_))]

    def connect(sock, address):  # the trick: the public address is not where the socket goes
        return real_connect(sock, ("127.0.0.1", port))

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    monkeypatch.setattr(socket.socket, "connect", connect)
    got = _fetch(f"http://photos.example:{port}/photo/a.jpg", tmp_path)
    assert got.status == "blocked_address" and "127.0.0.1" in got.message


def test_one_deadline_bounds_the_whole_exchange(server, tmp_path):
    for path, status in (
        ("/trickle-headers", "timeout"),
        ("/continue-flood", "timeout"),
        ("/endless-trailer", "timeout"),
        ("/many-headers", "connection_error"),
        ("/huge-headers", "connection_error"),
        ("/superscript", "connection_error"),
        ("/to-unicode", "redirect_error"),
    ):
        started = time.monotonic()
        got = _fetch(server.url + path, tmp_path, allow_addresses=LOOPBACK)
        assert got.status == status, (path, got)
        assert time.monotonic() - started < QUICK["max_seconds"] + 1.5, path
    got = _fetch(server.url.rsplit(":", 1)[0] + ":99999/x.jpg", tmp_path, allow_addresses=LOOPBACK)
    assert got.status == "invalid_url" and "port" in got.message
    assert not list(tmp_path.glob(".collect-*"))


def test_ipv6_literals_reach_their_host_and_port(tmp_path):
    try:
        ipv6 = PhotoServer(host="::1")
    except OSError:
        pytest.skip("this machine has no IPv6 loopback")
    with ipv6:
        assert _fetch(ipv6.url + "/photo/a.jpg", tmp_path).status == "blocked_address"
        got = _fetch(ipv6.url + "/photo/a.jpg", tmp_path, allow_addresses="::1/128")
        assert got.status == "ok" and ipv6.requests["/photo/a.jpg"] == 1


def test_bad_options_are_refused_before_any_download(tmp_path):
    with pytest.raises(ConfigError, match="printable ASCII"):
        CollectConfig(urls="u.csv", output="o", user_agent="café中")
    with pytest.raises(ConfigError, match="'10.0.0.0/33' is not an address"):
        CollectConfig(urls="u.csv", output="o", allow_addresses="127.0.0.1/32, 10.0.0.0/33")


def _listing(folder, rows, name="urls.csv"):
    pd.DataFrame(rows, columns=["url", "identity"]).to_csv(folder / name, index=False)
    return str(folder / name)


def _manifest(result) -> pd.DataFrame:
    return pd.read_parquet(result.manifest_path).sort_values("row")


def test_a_rerun_honours_the_list_as_it_is_now(spark, server, tmp_path):
    out = tmp_path / "photos [2024]"  # glob characters in the path: Spark must not expand them
    rows = [(f"{server.url}/photo/{name}.jpg", who) for name, who in (("p1", "ann"), ("p2", "ann"), ("p3", "bob"))]
    rows.append((f"{server.url}/to-unicode", "bob"))
    config = CollectConfig(urls=_listing(tmp_path, rows), output=str(out), **(QUICK | {"allow_addresses": LOOPBACK}))
    first = _manifest(run_collect(config, spark=spark))
    assert list(first.status) == ["ok", "ok", "ok", "redirect_error"]
    paths = dict(zip(first.url, first.path))

    # a2 is taken down, b1 is now listed as ann, a1's file is deleted by hand, and a killed run left rows.
    (out / paths[rows[0][0]]).unlink()
    (out / "_collect" / "runs" / "dead0").mkdir(parents=True)
    now = [rows[0], (rows[2][0], "ann"), rows[3]]
    before = server.requests.copy()
    second = _manifest(
        run_collect(config.__class__(**{**config.__dict__, "urls": _listing(tmp_path, now)}), spark=spark)
    )
    by_url = second.set_index("url")
    assert by_url.loc[rows[1][0], "status"] == "withdrawn" and not (out / paths[rows[1][0]]).exists()
    assert by_url.loc[rows[2][0], "identity"] == "ann" and by_url.loc[rows[2][0], "path"].startswith("ann/")
    assert not (out / paths[rows[2][0]]).exists()  # no longer under bob: identities never mix
    assert by_url.loc[rows[0][0], "status"] == "ok" and (out / by_url.loc[rows[0][0], "path"]).is_file()
    assert server.requests["/photo/p1.jpg"] == before["/photo/p1.jpg"] + 1  # its file was gone: fetched again
    assert not (out / "_collect" / "runs" / "dead0").exists()  # the killed run's rows
    assert not (out / "bob").exists() or not any((out / "bob").iterdir())

    # A hand-edited manifest whose path leaves OUTPUT: never read, trusted or deleted; the row is fetched again.
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    edited = pd.read_parquet(out / "_collect" / "manifest.parquet")
    edited.loc[edited.url == rows[0][0], "path"] = "../victim.txt"
    edited.to_parquet(out / "_collect" / "manifest.parquet", index=False)
    third = _manifest(
        run_collect(config.__class__(**{**config.__dict__, "urls": _listing(tmp_path, now)}), spark=spark)
    )
    assert victim.read_text() == "keep me"
    assert third.set_index("url").loc[rows[0][0], "path"].startswith("ann/")

    # prep reads the bracketed folder as it is (Spark would expand [2024] as a pattern) into another one.
    from dynamicid.prep.config import PrepConfig
    from dynamicid.prep.runner import run_prep

    dataset = tmp_path / "dataset [v1]"
    prepped = run_prep(PrepConfig(input=str(out), output=str(dataset), progress=False), spark=spark)
    manifest = pd.read_parquet(prepped.manifest_path)
    assert sorted(manifest.relative_path.str.split("/").str[0]) == ["ann", "ann"]  # withdrawn photos are gone


def test_lists_are_read_as_they_are_written(spark, server, tmp_path):
    a, b = f"{server.url}/photo/q1.jpg", f"{server.url}/photo/q2.jpg"
    (tmp_path / "quoted.csv").write_text(f'url,identity,caption\n{a},ann,"two\nlines, ""quoted"""\n{b},ann,plain\n')
    config = CollectConfig(
        urls=str(tmp_path / "quoted.csv"), output=str(tmp_path / "o1"), **QUICK, allow_addresses=LOOPBACK
    )
    got = _manifest(run_collect(config, spark=spark))
    assert list(got.url) == [a, b] and got.caption.iloc[0] == 'two\nlines, "quoted"' and set(got.status) == {"ok"}

    (tmp_path / "mixed.jsonl").write_text(f'{{"url": "{a}"}}\n{{not json\n{{"url": "{b}"}}\n')
    config = CollectConfig(
        urls=str(tmp_path / "mixed.jsonl"), output=str(tmp_path / "o2"), **QUICK, allow_addresses=LOOPBACK
    )
    got = _manifest(run_collect(config, spark=spark))
    bad = got[got.status == "invalid_url"]
    assert (
        len(got) == 3 and len(bad) == 1 and "not valid JSON" in bad.message.iloc[0] and "{not json" in bad.url.iloc[0]
    )

    (tmp_path / "latin.txt").write_bytes(f"{a}\n{b}?name=caf\xe9\n".encode("latin-1"))
    latin = dict(urls=str(tmp_path / "latin.txt"), output=str(tmp_path / "o3"), **QUICK, allow_addresses=LOOPBACK)
    with pytest.raises(CollectError, match=r"latin.txt, line 2: the text is not utf-8.*--encoding"):
        run_collect(CollectConfig(**latin), spark=spark)
    got = _manifest(run_collect(CollectConfig(**latin, encoding="latin-1"), spark=spark))
    assert got.url.iloc[1].endswith("café") and got.status.iloc[1] == "invalid_url"  # not ASCII: never sent as is

    (tmp_path / "broken.parquet").write_bytes(b"PAR1 this is not parquet")
    broken = CollectConfig(urls=str(tmp_path / "broken.parquet"), output=str(tmp_path / "o4"), **QUICK)
    with pytest.raises(CollectError, match="cannot be read as a parquet list"):
        run_collect(broken, spark=spark)


def test_error_rows_are_retried_and_a_manifest_of_the_wrong_shape_is_refused(spark, server, tmp_path):
    rows = [(f"{server.url}/photo/e1.jpg", "ann")]
    config = CollectConfig(urls=_listing(tmp_path, rows), output=str(tmp_path / "o"), **QUICK, allow_addresses=LOOPBACK)
    run_collect(config, spark=spark)
    manifest = tmp_path / "o" / "_collect" / "manifest.parquet"
    edited = pd.read_parquet(manifest)
    (tmp_path / "o" / edited.path.iloc[0]).unlink()
    edited[["status", "path", "message"]] = ["error", None, "RuntimeError: a bug since fixed"]
    edited.to_parquet(manifest, index=False)  # a pandas round trip: an all-null column, other integer widths
    again = _manifest(run_collect(config, spark=spark))
    assert list(again.status) == ["ok"] and again.path.iloc[0]
    assert os.path.isfile(tmp_path / "o" / again.path.iloc[0])
    # A column of the wrong type (edited by hand): refused with what to do, never a Spark stack.
    edited = pd.read_parquet(manifest)
    edited["bytes"] = edited["bytes"].astype(str)
    edited.to_parquet(manifest, index=False)
    with pytest.raises(InputError, match=r"column bytes should be bigint, not string.*move it aside"):
        run_collect(config, spark=spark)

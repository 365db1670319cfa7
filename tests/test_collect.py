"""`dynamicid collect` (issue 26 §1) against a hostile web server on the loopback address (photo_server.py):
a status for every URL, nothing written outside OUTPUT or half-written, duplicates, resume."""

import json
import os

import pandas as pd
import pytest
from photo_server import PhotoServer

from dynamicid.collect import CollectConfig, run_collect
from dynamicid.collect.job import CollectError
from dynamicid.prep import outputs

LOOPBACK = "127.0.0.1/32"  # the tests' photo server: collect blocks loopback addresses unless allowed
FAST = dict(
    timeout=1.0, max_seconds=1.5, retries=1, backoff=0.05, max_bytes=200_000, progress=False, allow_addresses=LOOPBACK
)


@pytest.fixture(scope="module")
def server():
    with PhotoServer() as running:
        yield running


def _cases(url: str) -> list[tuple[str, str | None, str]]:
    """(url, identity, the status it must get)."""
    return [
        (f"{url}/photo/a.jpg", "ann", "ok"),
        (f"{url}/photo/b.jpg", "ann", "ok"),
        (f"{url}/png/c.jpg", "bob", "ok"),
        (f"{url}/moved", "bob", "ok"),
        (f"{url}/flaky/d.jpg", "bob", "ok"),
        (f"{url}/photo/a.jpg", "bob", "duplicate_url"),
        (f"{url}/same/e.jpg", "cy", "duplicate_content"),
        (f"{url}/status/404", "cy", "http_error"),
        (f"{url}/status/500", "cy", "http_error"),
        (f"{url}/slow", "cy", "timeout"),
        (f"{url}/drip", "cy", "timeout"),
        (f"{url}/announced-huge", "cy", "too_large"),
        (f"{url}/streamed-huge", "cy", "too_large"),
        (f"{url}/text", "cy", "not_an_image"),
        (f"{url}/cut", "cy", "incomplete"),
        (f"{url}/loop/a", "cy", "redirect_error"),
        (f"{url}/hops/0", "cy", "redirect_error"),
        (f"{url}/to-file", "cy", "redirect_error"),
        ("http://127.0.0.1:1/closed.jpg", "cy", "connection_error"),
        ("file:///etc/passwd", "cy", "invalid_url"),
        ("ftp://example.com/x.jpg", "cy", "invalid_url"),
        (f"{url}/noai", "cy", "opted_out"),
        (f"{url}/photo/evil.jpg", "../../evil", "ok"),
    ]


def test_every_url_gets_its_status_and_photos_land_as_prep_reads_them(spark, server, tmp_path):
    cases = _cases(server.url)
    listing = tmp_path / "urls.csv"
    pd.DataFrame(
        [(u, i, f"caption {n}") for n, (u, i, _) in enumerate(cases)], columns=["url", "identity", "caption"]
    ).to_csv(listing, index=False)
    out = tmp_path / "photos"
    result = run_collect(CollectConfig(urls=str(listing), output=str(out), **FAST), spark=spark)
    manifest = pd.read_parquet(result.manifest_path).sort_values("row")
    assert len(manifest) == len(cases)
    got = list(zip(manifest.url, manifest.status))
    assert got == [(u, s) for u, _, s in cases], [(u, s, w) for (u, s), (_, _, w) in zip(got, cases) if s != w]
    by_url = manifest.drop_duplicates("url").set_index("url")
    assert by_url.loc[f"{server.url}/status/404", "http_status"] == 404
    assert "same bytes as ann/a-" in manifest[manifest.status == "duplicate_content"].message.iloc[0]
    assert by_url.loc[f"{server.url}/png/c.jpg", "path"].endswith(".png")  # the bytes decide, not the URL
    ok = manifest[manifest.status == "ok"]
    assert all((out / path).is_file() for path in ok.path)
    assert all(os.path.realpath(out / path).startswith(str(out) + os.sep) for path in ok.path)  # no escape
    assert not (tmp_path / "evil").exists()
    assert {outputs.identity_folder("../../evil"), "_collect", "ann", "bob"} <= set(os.listdir(out))
    leftovers = [f for _, _, files in os.walk(out) for f in files if f.startswith(".collect-")]
    assert leftovers == [] and ok.caption.str.startswith("caption").all()
    summary = json.loads((out / "_collect" / "summary.json").read_text())
    assert summary["photos"] == 6 and summary["statuses"]["timeout"] == 2

    # A run killed mid-download leaves its hidden temporary and the running marker: the next run sweeps it.
    (out / "_collect" / "running").write_bytes(b"")
    leftover = next(out.rglob("*.jpg")).parent / ".collect-0123456789ab"
    leftover.write_bytes(b"half a photo")

    # A rerun fetches only what is not settled: the transient failures, not the photos or the 404.
    before = server.requests.copy()
    again = run_collect(CollectConfig(urls=str(listing), output=str(out), **FAST), spark=spark)
    assert not leftover.exists() and not (out / "_collect" / "running").exists()
    fetched = {path for path, count in server.requests.items() if count > before[path]}
    assert "/photo/a.jpg" not in fetched and "/status/404" not in fetched and "/slow" in fetched
    assert again.summary["fetched_this_run"] == 5  # timeout x2, 500, incomplete, connection_error
    assert list(pd.read_parquet(again.manifest_path).sort_values("row").status) == [s for _, _, s in cases]


def test_lists_in_every_format_and_bad_lists_are_refused(spark, server, tmp_path):
    from dynamicid.collect.job import read_list

    urls = [f"{server.url}/photo/list-{n}.jpg" for n in range(3)]
    (tmp_path / "plain.txt").write_text("\n".join(urls) + "\n\n")
    pd.DataFrame({"link": urls, "who": ["x", "y", "y"]}).to_parquet(tmp_path / "list.parquet")
    (tmp_path / "list.jsonl").write_text("\n".join(json.dumps({"url": u, "caption": "c"}) for u in urls))
    pd.DataFrame({"url": urls, "identity": ["x", "x", "y"]}).to_csv(tmp_path / "list.tsv", sep="\t", index=False)
    for name, options, identities in (
        ("plain.txt", {}, [None, None, None]),
        ("list.parquet", {"url_column": "link", "identity_column": "who"}, ["x", "y", "y"]),
        ("list.jsonl", {}, [None, None, None]),
        ("list.tsv", {}, ["x", "x", "y"]),
    ):
        config = CollectConfig(urls=str(tmp_path / name), output=str(tmp_path / "o"), **FAST, **options)
        rows = read_list(spark, config).toPandas().sort_values("row")
        assert list(rows.url) == urls and list(rows.identity.replace({float("nan"): None})) == identities, name
    with pytest.raises(CollectError, match="has no column 'url' .*link, who.*--url-column"):
        read_list(spark, CollectConfig(urls=str(tmp_path / "list.parquet"), output=str(tmp_path / "o"), **FAST))
    with pytest.raises(CollectError, match="URL list not found"):
        run_collect(CollectConfig(urls=str(tmp_path / "none.csv"), output=str(tmp_path / "o"), **FAST), spark=spark)
    # A flat list (no identity column) lands in OUTPUT itself, as prep's flat layout reads it.
    out = tmp_path / "flat"
    assert (
        run_collect(CollectConfig(urls=str(tmp_path / "plain.txt"), output=str(out), **FAST), spark=spark).summary[
            "photos"
        ]
        == 3
    )
    assert sorted(p.suffix for p in out.iterdir() if p.is_file()) == [".jpg", ".jpg", ".jpg"]


def test_the_command_collects_real_faces_that_prep_then_reads_by_identity(shared_faces, tmp_path, capsys):
    from dynamicid import cli

    photos = {
        f"{person}-{path.name}": str(path)
        for person in ("obama", "biden")
        for path in sorted((shared_faces / "identities" / person).iterdir())[:2]
    }
    with PhotoServer(photos) as faces:
        rows = [(f"{faces.url}/file/{key}", key.split("-")[0]) for key in photos]
        pd.DataFrame(rows, columns=["url", "identity"]).to_csv(tmp_path / "faces.csv", index=False)
        argv = ["collect", str(tmp_path / "faces.csv"), str(tmp_path / "photos"), "--no-progress"]
        code = cli.main([*argv, "--allow-addresses", LOOPBACK])
    printed = capsys.readouterr().out
    assert code == 0 and "collected 4 photos" in printed and "next: dynamicid prep" in printed
    assert cli.main(["prep", str(tmp_path / "photos"), str(tmp_path / "dataset"), "--no-progress"]) == 0
    manifest = pd.read_parquet(tmp_path / "dataset" / "manifest.parquet")
    assert len(manifest) == 4  # _collect/ is not read as photos
    assert sorted(manifest[manifest.status == "ok"].identity.unique()) == ["biden", "obama"]

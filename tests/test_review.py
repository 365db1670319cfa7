"""Review (issue 36 §3): a curator's decisions are data, applied at once, and honoured by every later run."""

import json
import os
import shlex
import shutil
from pathlib import Path

import pandas as pd
import pytest
from conftest import readme_block
from PIL import Image

from dynamicid import cli
from dynamicid.prep import PrepConfig
from dynamicid.prep.people import SUGGESTIONS_FILE, read_people
from dynamicid.prep.review import LOG_FILE, Decision, ReviewError, decide, overview, replay
from dynamicid.prep.runner import run_prep
from dynamicid.prep.verify import check_outputs

REVIEW_SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "review.png"


def prep(spark, input_dir, output_dir, **options):
    return run_prep(PrepConfig(input=str(input_dir), output=str(output_dir), progress=False, **options), spark=spark)


def _rows(out) -> pd.DataFrame:
    return pd.read_parquet(out / "manifest.parquet").set_index("relative_path")


def _folders(out) -> dict[str, set[str]]:
    """person folder -> the names of the faces in it, as on disk."""
    found: dict[str, set[str]] = {}
    for path in (out / "images").rglob("*.jpg"):
        found.setdefault(path.parent.name, set()).add(path.stem)
    return found


def _on_disk_equals_manifest(out) -> None:
    rows = _rows(out)
    kept = rows[rows.status == "ok"]
    expected: dict[str, set[str]] = {}
    for identity, name in zip(kept.identity, kept.name):
        expected.setdefault(identity, set()).add(name)
    assert _folders(out) == expected
    assert check_outputs(str(out)).ok


def _decisions_hold(out, rows: pd.DataFrame, split_of: dict) -> None:
    """The four decisions of the README's block (and of the page test) hold in `rows` and on disk."""
    for photo in ("rose_leslie/1.jpg", "rose_leslie/2.jpg"):
        assert (rows.loc[photo, "identity"], rows.loc[photo, "identity_source"]) == ("kit_harington", "review")
        assert rows.loc[photo, "split"] == split_of["kit_harington"]
    obama = rows[rows.index.str.startswith("obama/") & (rows.status == "ok")]
    assert set(obama.identity) == {"barack_obama"} and set(obama.split) == {split_of["obama"]}
    assert rows.loc["biden/2.jpg", "identity"] == "joe" and rows.loc["biden/1.jpg", "identity"] == "biden"
    assert rows.loc["biden/2.jpg", "split"] == split_of["biden"]  # the faces' split: never a leak
    rejected = rows.loc["alex_lacamoire/1.jpg"]
    assert (rejected.status, rejected.reason) == ("rejected", "rejected_in_review")
    assert "a poster, not the person" in rejected.message
    named = set(rows[rows.status == "ok"].identity) | set(rows[rows.reason == "duplicate"].identity)
    assert "rose_leslie" not in named and "obama" not in named
    _on_disk_equals_manifest(out)


def _five_people(spark, shared_faces, tmp_path):
    """A prepped dataset of five people (obama's 2.jpg held back, to arrive later); its input, output and splits."""
    source, out = tmp_path / "in", tmp_path / "out"
    for person in ("obama", "biden", "kit_harington", "rose_leslie", "alex_lacamoire"):
        shutil.copytree(shared_faces / "identities" / person, source / person)
    (source / "obama" / "2.jpg").rename(tmp_path / "obama-2.jpg")
    prep(spark, source, out, split="0.5,0,0.5")
    before = _rows(out)
    return source, out, dict(zip(before.identity, before.split))


@pytest.mark.slow  # three prep runs
def test_merge_rename_move_and_reject_are_applied_and_survive_a_rerun_with_new_photos(
    spark, shared_faces, tmp_path, capsys
):
    source, out, split_of = _five_people(spark, shared_faces, tmp_path)

    # The README's review block, as written (its dataset/ is this OUTPUT).
    for line in readme_block("dynamicid review dataset/").splitlines():
        words = shlex.split(line, comments=True)
        assert words[:2] == ["dynamicid", "review"] and words[2] == "dataset/"
        assert cli.main(["review", str(out), *words[3:]]) == 0, line
    listing = capsys.readouterr().out
    assert "people: 5" in listing and "suspected strangers" in listing  # the first line lists before deciding

    _decisions_hold(out, _rows(out), split_of)
    table = read_people(str(out))
    assert table.people["barack_obama"].split == split_of["obama"] and table.people["joe"].faces == 1
    assert table.people["rose_leslie"].faces == 0  # kept, so the name is never given to someone else
    log = [json.loads(line) for line in (out / LOG_FILE).read_text().splitlines()]
    assert [entry["action"] for entry in log] == ["merge", "rename", "move", "reject"]
    assert log[0]["who"] and log[0]["when"] and len(log[0]["faces"]) == 2
    assert all(":" in face and "/" not in face for entry in log for face in entry["faces"])  # by content

    # A rerun with the same photos, then with a new one: every decision holds, and the new photo of the renamed
    # person joins barack_obama.
    prep(spark, source, out, split="0.5,0,0.5")
    _decisions_hold(out, _rows(out), split_of)
    shutil.copy(tmp_path / "obama-2.jpg", source / "obama" / "2.jpg")
    again = prep(spark, source, out, split="0.5,0,0.5")
    rows = _rows(out)
    _decisions_hold(out, rows, split_of)
    assert rows.loc["obama/2.jpg", "identity"] == "barack_obama" and again.summary["new_people"] == 0

    # The listing shows the people with their faces per split.
    assert cli.main(["review", str(out), "--list-suggestions"]) == 0
    listed = capsys.readouterr().out
    assert "barack_obama" in listed and "joe" in listed and "suggested merges (closest first): 0" in listed


@pytest.mark.slow  # the browser, two prep runs
def test_the_review_page_merges_splits_rejects_and_renames_with_clicks_and_a_rerun_keeps_them(
    spark, shared_faces, tmp_path, browser
):
    from dynamicid.prep.config import ReviewConfig
    from dynamicid.serving.review_page import serve_review
    from dynamicid.testing.serve import free_port

    source, out, split_of = _five_people(spark, shared_faces, tmp_path)
    config = ReviewConfig(dataset=str(out), port=free_port(), who="curator", auth="ann:s3cret")
    app, url = serve_review(config, block=False)
    page = browser.new_page(viewport={"width": 1400, "height": 1800})
    try:
        assert page.request.post(url + "login", form={"username": "ann", "password": "wrong"}).status >= 400
        assert page.request.post(url + "login", form={"username": "ann", "password": "s3cret"}).ok
        page.goto(url)
        page.wait_for_selector("#people .person")
        assert page.locator("#people .person").count() == 5 and page.locator("#people img").count() >= 12

        def choose(group: str, label: str) -> None:
            page.locator(f"#{group} label", has_text=label).first.click()

        def fill(field: str, text: str) -> None:
            page.locator(f"#{field}").locator("textarea, input").first.fill(text)

        def press(button: str, action: str) -> None:
            page.click(f"#{button}")
            page.wait_for_function(
                f"document.querySelector('#status').innerText.includes('{action} logged and applied')", timeout=60000
            )

        choose("person", "kit_harington")
        choose("other", "rose_leslie")
        press("merge", "merge")
        choose("person", "biden")
        choose("faces", "biden/2.jpg")
        fill("name", "joe")
        press("move", "move")
        choose("person", "obama")
        fill("name", "barack_obama")
        press("rename", "rename")
        choose("person", "alex_lacamoire")
        choose("faces", "alex_lacamoire/1.jpg")
        fill("reason", "a poster, not the person")
        press("reject-faces", "reject")
        assert page.locator("#people .person").count() == 5  # kit (with rose), biden, joe, barack_obama, alex
        page.screenshot(path=str(tmp_path / "review.png"), full_page=True)
        if os.environ.get("DYNAMICID_SCREENSHOT"):  # refresh the README's picture
            shot = Image.open(tmp_path / "review.png").convert("RGB")
            shot = shot.resize((shot.width // 2, shot.height // 2)).crop((0, 0, shot.width // 2, 700))
            shot.convert("P", palette=Image.Palette.ADAPTIVE, colors=128).save(REVIEW_SCREENSHOT, optimize=True)
    finally:
        page.close()
        app.close()
    _decisions_hold(out, _rows(out), split_of)
    log = [json.loads(line) for line in (out / LOG_FILE).read_text().splitlines()]
    assert [entry["action"] for entry in log] == ["merge", "move", "rename", "reject"]
    assert {entry["who"] for entry in log} == {"ann"}  # the one logged in, not the server's --who
    shutil.copy(tmp_path / "obama-2.jpg", source / "obama" / "2.jpg")
    prep(spark, source, out, split="0.5,0,0.5")
    rows = _rows(out)
    _decisions_hold(out, rows, split_of)
    assert rows.loc["obama/2.jpg", "identity"] == "barack_obama"


def test_decisions_are_checked_before_they_are_logged(spark, shared_faces, tmp_path):
    out = tmp_path / "out"
    prep(spark, shared_faces / "identities", out)
    for action, people, faces, words in [
        ("merge", ["obama", "nobody"], [], "nobody not a person of this dataset"),
        ("rename", ["obama", "biden"], [], "biden is a person already; to make them one, merge biden obama"),
        ("move", ["joe"], ["biden/9.jpg"], "no face for biden/9.jpg"),
        ("merge", ["obama", "obama"], [], "two different people"),
        ("merge", ["obama"], [], "merge needs two people; choose both"),  # the page with one person chosen
    ]:
        with pytest.raises(ReviewError, match=words):
            decide(str(out), action, people, faces)
    assert not (out / LOG_FILE).exists()
    assert cli.main(["review", str(out), "--move", "biden/1.jpg"]) == 1  # --into missing: one clear line
    # A suggested pair answered "different people" is not suggested again; "same person" merges them.
    pairs = [{"a": "biden", "b": "obama", "links": 1}, {"a": "kit_harington", "b": "rose_leslie", "links": 2}]
    (out / SUGGESTIONS_FILE).write_text(json.dumps({"suggested_merges": pairs}))
    assert [s["a"] for s in overview(str(out)).suggestions] == ["kit_harington", "biden"]  # closest first
    assert cli.main(["review", str(out), "--different", "biden", "obama"]) == 0
    assert json.loads((out / SUGGESTIONS_FILE).read_text())["suggested_merges"] == pairs[1:]
    assert cli.main(["review", str(out), "--same", "kit_harington", "rose_leslie"]) == 0
    rows = _rows(out)
    assert set(rows[rows.index.str.startswith("rose_leslie/")].identity) == {"kit_harington"}
    assert json.loads((out / SUGGESTIONS_FILE).read_text())["suggested_merges"] == []
    assert [json.loads(line)["action"] for line in (out / LOG_FILE).read_text().splitlines()] == ["different", "merge"]


def test_the_log_replays_in_order_and_a_later_decision_takes_an_earlier_back():
    face = "a" * 64 + ":0"
    verdicts = replay(
        [
            Decision("rename", ["ann", "anna"]),
            Decision("reject", [], [face], "blurry", "cu", "2026-12-07"),
            Decision("move", ["bob"], [face]),
            Decision("rename", ["anna", "ann"]),
            Decision("different", ["ann", "bob"]),
        ]
    )
    assert verdicts.resolve(face, "ann") == ("bob", True, None)  # moved after it was rejected: back in
    assert verdicts.resolve("b" * 64 + ":0", "ann") == ("ann", False, None)  # renamed there and back
    assert verdicts.resolve("b" * 64 + ":0", "anna") == ("ann", True, None)
    assert frozenset(("ann", "bob")) in verdicts.apart


# `dynamicid review` in a process that SIGKILLs itself at the KILL_AT-th file it moves in the dataset (a face
# is four files; the faces a review placed go back where the job keeps them first, then are placed again).
_KILLED_REVIEW = """
import os, signal, sys
from dynamicid import cli
from dynamicid.prep import outputs

moves, real_replace = [0], os.replace


class _KillingOs:
    def __getattr__(self, name):
        return getattr(os, name)

    def replace(self, source, target):
        moves[0] += 1
        if moves[0] == int(os.environ["KILL_AT"]):
            os.kill(os.getpid(), signal.SIGKILL)
        real_replace(source, target)


outputs.os = _KillingOs()
sys.exit(cli.main(sys.argv[1:]))
"""


def _review_killed_at(out, decision: list[str], move: int) -> None:
    import signal
    import subprocess
    import sys

    argv = [sys.executable, "-c", _KILLED_REVIEW, "review", str(out), *decision]
    done = subprocess.run(argv, env={**os.environ, "KILL_AT": str(move)}, capture_output=True, text=True)
    assert done.returncode == -signal.SIGKILL, f"not killed at move {move}: {done.stderr[-2000:]}"
    check = check_outputs(str(out))
    assert not check.ok and "was stopped while it was applied" in check.describe()


@pytest.mark.slow  # two prep runs and four killed review processes
def test_a_review_killed_while_it_moves_faces_is_finished_by_the_next_command_or_prep(
    spark, shared_faces, tmp_path, capsys
):
    source, out = tmp_path / "in", tmp_path / "out"
    for person in ("obama", "biden", "kit_harington"):
        shutil.copytree(shared_faces / "identities" / person, source / person)
    prep(spark, source, out)
    # Killed at its first move; mid-face as faces are placed (4 back, then 12 placed); as the faces go back
    # (12 back, then 16 placed): then the same command again, as the interrupted message says.
    cases = [
        (["--reject", "obama/3.jpg", "--reason", "blurred"], 1),
        (["--rename", "biden", "joe"], 10),
        (["--move", "kit_harington/2.jpeg", "--into", "kit"], 7),
    ]
    for decision, move in cases:
        _review_killed_at(out, decision, move)
        assert cli.main(["review", str(out), *decision]) == 0
        assert "already logged" in capsys.readouterr().out
        _on_disk_equals_manifest(out)
    rows = _rows(out)
    assert (rows.loc["obama/3.jpg", "status"], rows.loc["obama/3.jpg", "reason"]) == ("rejected", "rejected_in_review")
    assert rows.loc["biden/1.jpg", "identity"] == "joe" and rows.loc["kit_harington/2.jpeg", "identity"] == "kit"

    # Killed again, and this time prep runs next: it applies the whole log and the dataset is whole.
    _review_killed_at(out, ["--merge", "kit_harington", "kit"], 20)
    prep(spark, source, out)
    _on_disk_equals_manifest(out)
    rows = _rows(out)
    assert set(rows[rows.index.str.startswith("kit_harington/")].identity) == {"kit_harington"}
    assert rows.loc["obama/3.jpg", "reason"] == "rejected_in_review" and rows.loc["biden/2.jpg", "identity"] == "joe"
    assert [json.loads(line)["action"] for line in (out / LOG_FILE).read_text().splitlines()] == [
        "reject",
        "rename",
        "move",
        "merge",
    ]

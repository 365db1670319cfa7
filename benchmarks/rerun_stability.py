"""Rerun stability (issue 36 §1): photos from ../shared/faces added in rounds to one unlabelled folder, `prep
--layout cluster --split 0.5,0,0.5` run on it after each round. Per round: the share of people seen before
whose name changed, and the share whose split moved, for the kept OUTPUT (the identity table carries people
over) and, as the baseline, a fresh OUTPUT each round (every run names and splits from scratch).

    python benchmarks/rerun_stability.py [--rounds 3] [--json benchmarks/results-rerun-stability.json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared"


def _round_of(photo: Path, rounds: int) -> int:
    """Photos join in rounds by their place in the person's folder (first photos first), and people with
    fewer photos join later: every round adds both new photos of known people and new people."""
    people = sorted(p.name for p in photo.parent.parent.iterdir() if p.is_dir())
    first_round = people.index(photo.parent.name) * rounds // len(people)
    place = sorted(photo.parent.iterdir()).index(photo)
    return min(rounds - 1, first_round + place)


def _people(manifest) -> dict[str, tuple[str, str]]:
    ok = manifest[manifest.status == "ok"]
    return {path: (person, split) for path, person, split in zip(ok.relative_path, ok.identity, ok.split)}


def _changes(before: dict, after: dict) -> dict:
    """Of the people before (each known by its photos), the share whose photos now carry another name, and
    the share now in another split."""
    people = {}
    for path, (person, split) in before.items():
        people.setdefault((person, split), []).append(path)
    renamed = sum(any(after[p][0] != person for p in paths) for (person, _), paths in people.items())
    moved = sum(any(after[p][1] != split for p in paths) for (_, split), paths in people.items())
    count = len(people)
    return {"people_before": count, "renamed": round(renamed / count, 3), "split_moved": round(moved / count, 3)}


def measure(spark, rounds: int, workdir: Path, baseline: bool = True) -> list[dict]:
    from dynamicid.prep import PrepConfig
    from dynamicid.prep.runner import run_prep

    photos = sorted(p for p in (SHARED / "faces" / "identities").rglob("*.*") if "240p" not in p.name)
    flat, kept = workdir / "flat", workdir / "kept"
    flat.mkdir()
    results, earlier = [], {}
    for number in range(rounds):
        for photo in photos:
            if _round_of(photo, rounds) == number:
                shutil.copy(photo, flat / f"{photo.parent.name}__{photo.name}")
        options = dict(input=str(flat), layout="cluster", split="0.5,0,0.5", progress=False)
        now = {
            "kept": _people(run_prep(PrepConfig(output=str(kept), **options), spark=spark).manifest()),
            "fresh": _people(
                run_prep(PrepConfig(output=str(workdir / f"fresh{number}"), **options), spark=spark).manifest()
            ),
        }
        row = {
            "round": number + 1,
            "photos": len(list(flat.iterdir())),
            "people": len({v[0] for v in now["kept"].values()}),
        }
        for kind in now:
            if earlier:
                row[kind] = _changes(earlier[kind], now[kind])
        results.append(row)
        earlier = now
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", default=None)
    parser.add_argument("--no-baseline", action="store_true", help="leave out the fresh-OUTPUT runs")
    args = parser.parse_args()
    from dynamicid.prep.sparkenv import build_session

    spark = build_session("local[2]", app_name="rerun-stability")
    workdir = Path(tempfile.mkdtemp(prefix="rerun-stability-"))
    try:
        results = measure(spark, args.rounds, workdir, baseline=not args.no_baseline)
    finally:
        spark.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(results, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()

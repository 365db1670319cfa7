"""The identity outcome classifier (`faces/identity_check.py`, issue 38) on composites of real photos: its
confusion matrix, the figures its blend thresholds come from, and the check's cost per image.

For every ordered pair (A, B) of the people with two or more photos in ../shared/faces, seven composites
are made from aligned faces (`dynamicid.testing.composites`), with the persons asked for in boxes and each
person's reference a photo that is not pasted:
correct (A, B); swapped (B, A); one person twice (A, A'); one missing (A, empty); a stranger in B's box;
an extra stranger (A, B and a stranger, two persons asked for); a blend (a morph of A and B, then B).

    python benchmarks/identity_outcomes.py [--people N] [--out PATH]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmarks_common import results_path  # noqa: E402

from dynamicid.faces import FaceAnalyzer  # noqa: E402
from dynamicid.faces.identity_check import IMAGE_OUTCOMES, check_faces, check_thresholds, unit_rows  # noqa: E402
from dynamicid.testing.composites import aligned_face, canvas, morph  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "faces" / "identities"
STRANGER = "lin_manuel_miranda"  # one photo only: never a requested person here
CASES = {
    "correct": ("ok", lambda a, b, s, m: [a[0], b[0]]),
    "swapped": ("swapped", lambda a, b, s, m: [b[0], a[0]]),
    "twice": ("duplicate", lambda a, b, s, m: [a[0], a[1]]),
    "missing": ("missing", lambda a, b, s, m: [a[0], None]),
    "stranger_in_box": ("missing", lambda a, b, s, m: [a[0], s]),
    "extra_stranger": ("extra_face", lambda a, b, s, m: [a[0], b[0], s]),
    "blend": ("blended", lambda a, b, s, m: [m, b[0]]),
}


def _people(limit: int | None) -> dict[str, list[str]]:
    found = {
        folder.name: sorted(str(p) for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        for folder in sorted(SHARED.iterdir())
        if folder.is_dir() and folder.name != STRANGER
    }
    return dict(list({name: paths for name, paths in found.items() if len(paths) >= 2}.items())[:limit])


def _embedding(analyzer: FaceAnalyzer, aligned: np.ndarray) -> np.ndarray:
    image, _ = canvas([aligned])
    return analyzer.analyze(image)[0].embedding


def blend_figures(analyzer, aligned: dict, references: dict) -> dict:
    """What the blend thresholds rest on: for each morph, its similarity to the closer and the other of its
    two people and their gap; for each real photo, its gap to the next person."""
    morphs, reals = [], []
    names = list(references)
    refs = unit_rows([references[n] for n in names])
    for a, b in itertools.combinations(names, 2):
        sims = refs @ unit_rows(_embedding(analyzer, morph(aligned[a][0], aligned[b][0])))
        pair = sorted([sims[names.index(a)], sims[names.index(b)]], reverse=True)
        morphs.append({"pair": f"{a}+{b}", "closer": round(pair[0], 4), "other": round(pair[1], 4)})
    for name in names:
        for face in aligned[name][:-1]:
            sims = np.sort(refs @ unit_rows(_embedding(analyzer, face)))[::-1]
            reals.append({"person": name, "own": round(sims[0], 4), "next": round(sims[1], 4)})
    return {
        "morph_closer_min": min(m["closer"] for m in morphs),
        "morph_other_min": min(m["other"] for m in morphs),
        "morph_gap_max": round(max(m["closer"] - m["other"] for m in morphs), 4),
        "real_gap_min": round(min(r["own"] - r["next"] for r in reals), 4),
        "morphs": morphs,
        "reals": reals,
    }


def confusion(analyzer, aligned: dict, references: dict, stranger: np.ndarray) -> tuple[dict, list, list]:
    thresholds = check_thresholds(analyzer.config.embedder)
    matrix = {truth: dict.fromkeys(IMAGE_OUTCOMES, 0) for truth in {c[0] for c in CASES.values()}}
    wrong, seconds = [], []
    for a, b in itertools.permutations(references, 2):
        blend = morph(aligned[a][0], aligned[b][0])
        for case, (truth, tiles_of) in CASES.items():
            image, boxes = canvas(tiles_of(aligned[a], aligned[b], stranger, blend))
            started = time.perf_counter()
            faces = analyzer.analyze(image)
            refs = np.stack([references[a], references[b]])
            checked = check_faces(faces, image.shape[1::-1], refs, boxes[:2], thresholds)
            seconds.append(time.perf_counter() - started)
            matrix[truth][checked.outcome] += 1
            if checked.outcome != truth:
                wrong.append({"case": case, "a": a, "b": b, "found": checked.outcome})
    return matrix, wrong, seconds


def check_cost(analyzer, aligned: dict, references: dict, side: int, repeats: int = 5) -> float:
    """Seconds to check one generated-size image (two persons on a side x side canvas): analysis and check."""
    from PIL import Image

    names = list(references)[:2]
    image, boxes = canvas([aligned[names[0]][0], aligned[names[1]][0]])
    image = np.asarray(Image.fromarray(image).resize((side, side * image.shape[0] // image.shape[1])))
    refs = np.stack([references[n] for n in names])
    thresholds = check_thresholds(analyzer.config.embedder)
    started = time.perf_counter()
    for _ in range(repeats):
        check_faces(analyzer.analyze(image), image.shape[1::-1], refs, boxes, thresholds)
    return (time.perf_counter() - started) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--people", type=int, default=None, help="use the first N people (default: all)")
    parser.add_argument("--out", default=results_path("results-identity-outcomes.json"))
    args = parser.parse_args()
    analyzer = FaceAnalyzer()
    people = _people(args.people)
    aligned = {name: [aligned_face(analyzer, p) for p in paths] for name, paths in people.items()}
    references = {name: _embedding(analyzer, faces[-1]) for name, faces in aligned.items()}  # never pasted
    stranger = aligned_face(analyzer, str(next((SHARED / STRANGER).iterdir())))
    matrix, wrong, seconds = confusion(analyzer, aligned, references, stranger)
    total = sum(sum(row.values()) for row in matrix.values())
    result = {
        "machine": f"{os.cpu_count()} cores, CPU",
        "embedder": analyzer.config.embedder,
        "thresholds": check_thresholds(analyzer.config.embedder).__dict__,
        "people": list(people),
        "composites": total,
        "correct": total - len(wrong),
        "confusion": matrix,
        "wrong": wrong,
        "blend_figures": blend_figures(analyzer, aligned, references),
        "seconds_per_composite": round(float(np.mean(seconds)), 3),
        "seconds_per_image": {
            str(side): round(check_cost(analyzer, aligned, references, side), 3) for side in (512, 768)
        },
    }
    print(json.dumps({k: v for k, v in result.items() if k != "blend_figures"}, indent=2))
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

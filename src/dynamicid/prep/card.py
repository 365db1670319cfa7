"""The dataset card: OUTPUT/dataset_card.md and OUTPUT/dataset_card.html, with charts as PNGs in
OUTPUT/dataset_card/. What a user looks at before training: how many faces and people, the splits, why
files were rejected, photos per person, head pose, emotions, sizes, the duplicates and strangers curation
found (with their faces), and the licences of the models that made the data.

The manifest is read a batch of a few columns at a time into counters, fixed-bin histograms and short
lists, so the card costs the same memory at a million rows as at ten."""

from __future__ import annotations

import html
import io
import os
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from dynamicid.atomic import write_atomic
from dynamicid.drawing import bar_chart
from dynamicid.faces.analyzer import FaceAnalysisConfig
from dynamicid.prep import outputs

CARD_DIR = "dataset_card"
LISTED = 50  # duplicates and outliers named on the card
COLUMNS = [
    "relative_path",
    "status",
    "reason",
    "identity",
    "name",
    "yaw",
    "pitch",
    "emotion",
    "width",
    "height",
    "source_bytes",
    "duplicate_of",
    "message",
    "identity_outlier",
    "identity_distance",
]
ANGLE_BINS = np.arange(-90, 91, 15)
PER_PERSON_BINS = [(1, 1), (2, 2), (3, 4), (5, 8), (9, 16), (17, 32), (33, 10**12)]
SIDE_BINS = [0, 256, 512, 1024, 2048, 4096, 10**9]

# What is known of each backend's weights; every card names the models that made its data.
LICENCES = {
    "dlib-hog": "dlib's HOG detector, part of dlib (Boost Software License)",
    "dlib-68": "dlib's 68-point predictor, trained on iBUG 300-W, whose licence excludes commercial use",
    "dlib-resnet": "dlib's face ResNet, weights from the face_recognition_models package: see its terms",
    "insightface": "InsightFace model packs: non-commercial research only",
    "fer": "the fer package's expression model: MIT (notice in faces/data/LICENSE-fer.txt)",
    "internvl": "InternVL: see the model card of the weights used",
    "measured": "no model: the toolkit's own captions from the measured face",
}


@dataclass
class CardTally:
    """What the card shows beyond prep's summary (which counts the files, faces, rejections and splits)."""

    per_identity: Counter = field(default_factory=Counter)
    emotions: Counter = field(default_factory=Counter)
    yaw: np.ndarray = field(default_factory=lambda: np.zeros(len(ANGLE_BINS) - 1, int))
    pitch: np.ndarray = field(default_factory=lambda: np.zeros(len(ANGLE_BINS) - 1, int))
    sides: np.ndarray = field(default_factory=lambda: np.zeros(len(SIDE_BINS) - 1, int))
    source_bytes: int = 0
    duplicates: list = field(default_factory=list)
    outliers: list = field(default_factory=list)

    def add(self, batch) -> None:
        ok = batch.status.eq("ok")
        self.per_identity.update(batch.identity[ok].dropna())
        self.emotions.update(batch.emotion[ok].dropna())
        for counts, column in ((self.yaw, "yaw"), (self.pitch, "pitch")):
            counts += np.histogram(batch[column][ok].dropna().clip(-90, 90), ANGLE_BINS)[0]
        self.sides += np.histogram(batch[["width", "height"]].min(axis=1).dropna(), SIDE_BINS)[0]
        self.source_bytes += int(batch.source_bytes.fillna(0).sum())
        copies = batch[batch.reason.eq("duplicate")]
        self.duplicates += copies[["relative_path", "duplicate_of", "message"]].head(LISTED).values.tolist()
        self.duplicates = self.duplicates[:LISTED]
        strangers = batch[ok & batch.identity_outlier.fillna(False).astype(bool)]
        columns = ["relative_path", "identity", "name", "identity_distance"]
        self.outliers = sorted(self.outliers + strangers[columns].values.tolist(), key=lambda r: -r[3])[:LISTED]

    def people_by_photo_count(self) -> tuple[list[str], list[int]]:
        counts = list(self.per_identity.values())
        labels = [
            f"{low}" if low == high else (f"{low}-{high}" if high < 10**12 else f"{low}+")
            for low, high in PER_PERSON_BINS
        ]
        return labels, [sum(low <= n <= high for n in counts) for low, high in PER_PERSON_BINS]


def tally(manifest_path: str, batch_rows: int = 65536) -> CardTally:
    import pyarrow.parquet as pq

    counted = CardTally()
    for batch in pq.ParquetFile(manifest_path).iter_batches(batch_size=batch_rows, columns=COLUMNS):
        counted.add(batch.to_pandas())
    return counted


def _charts(summary: dict, counted: CardTally, folder: str) -> dict[str, str]:
    """The card's charts as PNGs in `folder`; title -> file name."""
    reasons = Counter(summary["rejected"]) + Counter(summary["errors"])
    angles = [f"{a:+d}" for a in ANGLE_BINS[:-1]]
    sides = ["<256", "256-511", "512-1023", "1024-2047", "2048-4095", "4096+"]
    charts = {
        "People by number of kept faces": counted.people_by_photo_count(),
        "Files rejected or failed, by reason": (list(reasons), list(reasons.values())),
        "Head yaw of kept faces (degrees, bins of 15)": (angles, counted.yaw.tolist()),
        "Head pitch of kept faces (degrees, bins of 15)": (angles, counted.pitch.tolist()),
        "Emotions of kept faces": (list(counted.emotions), list(counted.emotions.values())),
        "Shorter side of the photos (px)": (sides, counted.sides.tolist()),
    }
    os.makedirs(folder, exist_ok=True)
    files = {}
    for number, (title, (labels, values)) in enumerate(charts.items()):
        name = f"chart_{number}.png"
        buffer = io.BytesIO()
        bar_chart(title, labels, values).save(buffer, format="PNG")
        write_atomic(os.path.join(folder, name), buffer.getvalue())
        files[title] = name
    return files


def _models(faces: FaceAnalysisConfig, captioner: str) -> list[tuple[str, str, str]]:
    """(part, backend, licence) of every model that made the data."""
    parts = [
        ("face detector", faces.detector),
        ("landmarks", faces.landmarks),
        ("identity embedder", faces.embedder),
        ("expression classifier", faces.expression),
        ("captioner", captioner),
    ]
    known = lambda name: next((text for key, text in LICENCES.items() if name.startswith(key)), None)  # noqa: E731
    return [(part, name, known(name) or "see the model's own terms") for part, name in parts]


def _facts(summary: dict, counted: CardTally) -> list[tuple[str, str]]:
    splits = ", ".join(f"{k} {v}" for k, v in summary["kept_faces_by_split"].items()) or "none"
    failed = sum(summary["rejected"].values()) + sum(summary["errors"].values())
    return [
        ("files read", f"{summary['files']:,}"),
        ("faces kept", f"{summary['kept_faces']:,}"),
        ("people", f"{summary['identities']:,}"),
        ("kept faces per split", splits),
        ("rejected or failed rows", f"{failed:,}"),
        ("duplicates (exact and near copies)", f"{summary['rejected'].get('duplicate', 0):,}"),
        ("identity outliers (left out of training)", f"{summary['identity_outliers']:,}"),
        ("input size", f"{counted.source_bytes / 2**20:,.1f} MiB"),
    ]


def write_card(output: str, manifest_path: str, summary: dict, faces: FaceAnalysisConfig, captioner: str) -> str:
    """Writes the card (Markdown and HTML) and its charts; returns the HTML's path."""
    counted = tally(manifest_path)
    charts = _charts(summary, counted, os.path.join(output, CARD_DIR))
    facts, models = _facts(summary, counted), _models(faces, captioner)
    markdown = _markdown(facts, charts, counted, models)
    write_atomic(os.path.join(output, "dataset_card.md"), markdown.encode("utf-8"))
    page = os.path.join(output, "dataset_card.html")
    write_atomic(page, _html(facts, charts, counted, models).encode("utf-8"))
    return page


def _markdown(facts, charts: dict[str, str], counted: CardTally, models) -> str:
    lines = ["# Dataset card", "", "| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in facts]
    for title, name in charts.items():
        lines += ["", f"## {title}", "", f"![{title}]({CARD_DIR}/{name})"]
    lines += ["", f"## Identity outliers (up to {LISTED}, furthest first)", ""]
    lines += ["| photo | identity | distance |", "|---|---|---|"]
    lines += [f"| {path} | {identity} | {distance:.3f} |" for path, identity, _, distance in counted.outliers]
    lines += ["", f"## Duplicates (up to {LISTED})", "", "| photo | copy of | note |", "|---|---|---|"]
    lines += [f"| {path} | {kept} | {message} |" for path, kept, message in counted.duplicates]
    lines += ["", "## Models and their licences", "", "| part | model | licence |", "|---|---|---|"]
    lines += [f"| {part} | {name} | {licence} |" for part, name, licence in models]
    return "\n".join(lines) + "\n"


def _html(facts, charts: dict[str, str], counted: CardTally, models) -> str:
    e = html.escape
    rows = "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in facts)
    figures = "".join(
        f'<figure><img src="{CARD_DIR}/{name}" alt="{e(title)}"></figure>' for title, name in charts.items()
    )
    strangers = "".join(
        f'<tr><td><img class="face" src="{e(_face_image(identity, name))}" alt="{e(path)}"></td>'
        f"<td>{e(path)}</td><td>{e(str(identity))}</td><td>{distance:.3f}</td></tr>"
        for path, identity, name, distance in counted.outliers
    )
    copies = "".join(
        f"<tr><td>{e(path)}</td><td>{e(str(kept))}</td><td>{e(str(message))}</td></tr>"
        for path, kept, message in counted.duplicates
    )
    none = '<tr><td colspan="4">none found</td></tr>'
    strangers, copies = strangers or none, copies or none
    licences = "".join(f"<tr><td>{e(p)}</td><td>{e(n)}</td><td>{e(lic)}</td></tr>" for p, n, lic in models)
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Dataset card</title><style>
body{{font-family:sans-serif;margin:24px;color:#222}} table{{border-collapse:collapse;margin:8px 0 24px}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}} figure{{display:inline-block;margin:8px}}
img.face{{width:96px;height:96px}}</style></head><body><h1>Dataset card</h1><table>{rows}</table>
<h2>Charts</h2>{figures}
<h2>Identity outliers (up to {LISTED}, furthest first)</h2>
<table><tr><th>face</th><th>photo</th><th>identity</th><th>distance</th></tr>{strangers}</table>
<h2>Duplicates (up to {LISTED})</h2><table><tr><th>photo</th><th>copy of</th><th>note</th></tr>{copies}</table>
<h2>Models and their licences</h2><table><tr><th>part</th><th>model</th><th>licence</th></tr>{licences}</table>
</body></html>"""


def _face_image(identity: str | None, name: str) -> str:
    """The aligned face's path relative to OUTPUT (the page sits in OUTPUT)."""
    from urllib.parse import quote

    parts = (outputs.IMAGES_DIR, outputs.identity_folder(identity), f"{name}.jpg")
    return "/".join(quote(part) for part in parts if part)

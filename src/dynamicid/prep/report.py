"""What a person sees at the end of `prep`: the summary table and the contact sheet."""

from __future__ import annotations

import io
import json
import os
import textwrap
from collections import Counter

import pandas as pd
from PIL import Image, ImageDraw

from dynamicid.drawing import font
from dynamicid.imagefile import Rejected, open_image
from dynamicid.options import counted
from dynamicid.prep import outputs
from dynamicid.prep.schema import STAGE_TIMINGS, points_array

# What the summary and the contact sheet read; the point lists are fetched for the sheet's faces only.
REPORT_COLUMNS = [
    "relative_path",
    "face_index",
    "identity",
    "name",
    "status",
    "reason",
    "resumed",
    "face_prompt",
    "identity_outlier",
    "split",
] + [f"ms_{stage}" for stage in STAGE_TIMINGS]


class ManifestTally:
    """The summary and the contact sheet's candidates, counted over the manifest in record batches, so
    the driver's memory does not grow with the manifest. The manifest is sorted by relative path, so a
    file's rows are adjacent and distinct paths are counted at their first row."""

    def __init__(self, sheet_limit: int = 48):
        self.limit = sheet_limit
        self.files = self.kept = self.kept_images = self.resumed_files = 0
        self.files_by_status, self.rejected, self.errors = Counter(), Counter(), Counter()
        self.outliers, self.faces_by_split = 0, Counter()
        self.identities: set = set()
        self.stage_sums: dict[str, float] = {}
        self.stage_counts: dict[str, int] = {}
        self.candidates: dict = {}  # identity -> up to `limit` kept rows, for the first `limit` identities
        self._last_path = self._last_kept_path = None

    def add(self, batch: pd.DataFrame) -> None:
        paths = batch.relative_path
        first = _starts(paths, self._last_path)
        self._last_path = paths.iloc[-1] if len(paths) else self._last_path
        resumed = batch.resumed.fillna(False).astype(bool)
        self.files += int(first.sum())
        self.files_by_status.update(batch.status[first])
        self.resumed_files += int(resumed[first].sum())
        ok = batch.status.eq("ok")
        kept_paths = paths[ok]
        self.kept += int(ok.sum())
        self.kept_images += int(_starts(kept_paths, self._last_kept_path).sum())
        self._last_kept_path = kept_paths.iloc[-1] if len(kept_paths) else self._last_kept_path
        self.identities.update(batch.identity[ok].dropna().unique())
        self.rejected.update(batch.reason[batch.status.eq("rejected")])
        self.outliers += int((ok & batch.identity_outlier.fillna(False).astype(bool)).sum())
        self.faces_by_split.update(batch.split[ok].dropna())
        self.errors.update(batch.reason[batch.status.eq("error")])
        fresh = batch[ok & ~resumed]
        for column in (c for c in batch.columns if c.startswith("ms_")):
            values = fresh[column].dropna()
            self.stage_sums[column] = self.stage_sums.get(column, 0.0) + float(values.sum())
            self.stage_counts[column] = self.stage_counts.get(column, 0) + int(len(values))
        self._keep_candidates(batch[ok])

    def _keep_candidates(self, kept: pd.DataFrame) -> None:
        for identity, group in kept.groupby(kept.identity.fillna(""), sort=False):  # in order of appearance
            if identity not in self.candidates and len(self.candidates) >= self.limit:
                continue
            rows = self.candidates.setdefault(identity, [])
            rows.extend(row for _, row in group.head(self.limit - len(rows)).iterrows())

    def sheet_rows(self) -> pd.DataFrame:
        rows = [row for rows in self.candidates.values() for row in rows]
        return pd.DataFrame(rows, columns=REPORT_COLUMNS) if rows else pd.DataFrame(columns=REPORT_COLUMNS)

    def summary(self, job_seconds: float, wall_seconds: float) -> dict:
        processed = self.files - self.resumed_files
        stage_ms = {
            column[3:]: round(self.stage_sums[column] / count, 2)
            for column, count in self.stage_counts.items()
            if count
        }
        return {
            "files": self.files,
            "kept_faces": self.kept,
            "kept_images": self.kept_images,
            "identities": len(self.identities),
            "identity_outliers": self.outliers,
            "kept_faces_by_split": dict(sorted(self.faces_by_split.items())),
            "rejected": dict(self.rejected.most_common()),
            "errors": dict(self.errors.most_common()),
            "resumed": self.resumed_files,
            "processed_this_run": processed,
            "job_seconds": round(job_seconds, 2),
            "wall_seconds": round(wall_seconds, 2),
            "images_per_second": round(processed / job_seconds, 2) if job_seconds > 0 and processed else None,
            "mean_stage_ms_kept": stage_ms,
        }


def _starts(paths: pd.Series, last) -> pd.Series:
    """True where a path differs from the one before it (the previous batch's last path for the first)."""
    previous = paths.shift(1)
    if last is not None and len(previous):
        previous.iloc[0] = last
    return paths.ne(previous)


def tally_manifest(manifest_path: str, sheet_limit: int = 48, batch_rows: int = 65536) -> ManifestTally:
    """Read only the report's columns, a batch at a time."""
    import pyarrow.parquet as pq

    tally = ManifestTally(sheet_limit)
    for batch in pq.ParquetFile(manifest_path).iter_batches(batch_size=batch_rows, columns=REPORT_COLUMNS):
        tally.add(batch.to_pandas())
    return tally


def summarize(manifest: pd.DataFrame, job_seconds: float, wall_seconds: float) -> dict:
    """The summary of a manifest already in memory (one batch of the tally)."""
    tally = ManifestTally()
    tally.add(manifest)
    return tally.summary(job_seconds, wall_seconds)


def format_summary(summary: dict, output: str) -> str:
    lines = [
        "",
        f"prep finished: {counted(summary['files'], 'file')}, {counted(summary['kept_faces'], 'face')} kept "
        f"from {counted(summary['kept_images'], 'image')} ({counted(summary['identities'], 'identity', 'identities')})",
    ]
    if summary["resumed"]:
        lines.append(
            f"  resumed from earlier runs: {counted(summary['resumed'], 'file')} (skipped, outputs already complete)"
        )
    if summary.get("stale_outputs_removed"):
        lines.append(
            f"  removed {summary['stale_outputs_removed']} output files no row lists any more "
            "(their input changed or is gone, or a setting changed)"
        )
    if summary["images_per_second"]:
        lines.append(
            f"  processed {counted(summary['processed_this_run'], 'file')} in {summary['job_seconds']:.1f} s: "
            f"{summary['images_per_second']:.2f} images/s"
        )
    if summary.get("new_people") is not None and summary["new_people"] != summary["identities"]:
        lines.append(
            f"  people: {counted(summary['new_people'], 'new person', 'new people')}; everyone seen before kept "
            "their name and split (identities.parquet)"
        )
    if summary.get("suggested_merges"):
        lines.append(
            f"  suggested merges: {counted(summary['suggested_merges'], 'pair')} of people that new photos link; "
            "nobody was merged (identity_suggestions.json)"
        )
    if summary.get("split_shares_changed"):
        lines.append("  the split shares changed: they apply to new people only")
    if summary["identity_outliers"]:
        lines.append(
            f"  identity outliers: {summary['identity_outliers']} kept faces unlike the rest of their identity "
            "(identity_outlier in the manifest; training leaves them out unless --keep-outliers)"
        )
    if set(summary["kept_faces_by_split"]) - {"train"}:
        lines.append(
            "  split: " + ", ".join(f"{k} {counted(v, 'face')}" for k, v in summary["kept_faces_by_split"].items())
        )
    for title, counts in (("rejected", summary["rejected"]), ("errors", summary["errors"])):
        if counts:
            lines.append(f"  {title}: {sum(counts.values())}")
            width = max(len(k) for k in counts)
            lines.extend(f"    {reason:<{width}}  {count}" for reason, count in counts.items())
    if summary["mean_stage_ms_kept"]:
        stages = ", ".join(f"{k} {v:.0f}" for k, v in summary["mean_stage_ms_kept"].items())
        lines.append(f"  mean ms per kept image: {stages}")
    lines += [
        f"  outputs:        {os.path.join(output, outputs.IMAGES_DIR)}/",
        f"  manifest:       {os.path.join(output, 'manifest.parquet')}",
        f"  people:         {os.path.join(output, 'identities.parquet')}",
        f"  contact sheet:  {os.path.join(output, 'contact_sheet.png')}",
        f"  dataset card:   {os.path.join(output, 'dataset_card.html')} (and dataset_card.md)",
        f"  summary:        {os.path.join(output, 'summary.json')}",
    ]
    return "\n".join(lines)


def write_summary(summary: dict, output: str) -> None:
    outputs.write_atomic(os.path.join(output, "summary.json"), json.dumps(summary, indent=2).encode())


def _spread_over_identities(kept: pd.DataFrame, limit: int) -> pd.DataFrame:
    """Round-robin over identities so one large identity does not fill the sheet."""
    groups = [
        g for _, g in kept.sort_values(["identity", "relative_path"]).groupby(kept.identity.fillna(""), sort=True)
    ]
    picked, depth = [], 0
    while len(picked) < limit and any(depth < len(g) for g in groups):
        for group in groups:
            if depth < len(group) and len(picked) < limit:
                picked.append(group.iloc[depth])
        depth += 1
    return pd.DataFrame(picked)


def _with_landmarks(chosen: pd.DataFrame, manifest_path: str | None, batch_rows: int = 8192) -> pd.DataFrame:
    """The chosen rows with their aligned landmarks, read from the manifest a batch at a time and kept only for
    these rows, so the whole landmark column is never in memory at once."""
    if not len(chosen) or manifest_path is None:
        return chosen
    import pyarrow.parquet as pq

    wanted = set(zip(chosen.relative_path, chosen.face_index))
    found = []
    columns = ["relative_path", "face_index", "aligned_landmarks"]
    for batch in pq.ParquetFile(manifest_path, pre_buffer=False).iter_batches(
        batch_size=batch_rows, columns=columns, use_threads=False
    ):
        keys = zip(batch.column(0).to_pylist(), batch.column(1).to_pylist())
        keep = [index for index, key in enumerate(keys) if key in wanted]
        if keep:
            found.append(batch.take(keep).to_pandas())
    points = pd.concat(found, ignore_index=True) if found else pd.DataFrame(columns=columns)
    return chosen.merge(points, on=["relative_path", "face_index"], how="left")


def contact_sheet(
    tally: ManifestTally,
    output: str,
    limit: int = 48,
    tile: int = 224,
    columns: int = 6,
    manifest_path: str | None = None,
) -> str | None:
    """A grid of aligned faces with their landmarks and face prompts. Returns the PNG path.

    The faces come from the tally's candidates; their point lists are read from `manifest_path`."""
    kept = tally.sheet_rows()
    path = os.path.join(output, "contact_sheet.png")
    counts, reasons = tally.files_by_status, tally.rejected
    header = 56
    caption_height = 58
    chosen = _with_landmarks(_spread_over_identities(kept, limit) if len(kept) else kept, manifest_path)
    rows = max(1, -(-len(chosen) // columns))
    sheet = Image.new("RGB", (columns * tile, header + rows * (tile + caption_height)), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    title_font, text_font = font(18), font(12)
    draw.text(
        (10, 6),
        f"dynamicid prep: {counted(tally.kept, 'face')} kept, {counted(counts.get('rejected', 0), 'file')} rejected, "
        f"{counted(counts.get('error', 0), 'error')}",
        fill=(240, 240, 240),
        font=title_font,
    )
    detail = ", ".join(f"{r} {n}" for r, n in reasons.most_common()) or "none rejected"
    draw.text((10, 32), f"rejected: {detail}"[:160], fill=(200, 200, 200), font=text_font)
    for slot, (_, row) in enumerate(chosen.iterrows()):
        x = (slot % columns) * tile
        y = header + (slot // columns) * (tile + caption_height)
        face_path = outputs.face_paths(output, row.identity, row["name"])["jpg"]
        try:
            face = open_image(face_path)
        except Rejected:
            continue
        scale = tile / face.width
        face = face.resize((tile, tile), Image.BILINEAR)
        overlay = ImageDraw.Draw(face)
        for px, py in points_array(row.get("aligned_landmarks")) * scale:
            overlay.ellipse((px - 1.5, py - 1.5, px + 1.5, py + 1.5), fill=(0, 255, 120))
        sheet.paste(face, (x, y))
        label = f"{row.identity or ''}/{row['name']}"[:34]
        draw.text((x + 4, y + tile + 2), label, fill=(255, 220, 120), font=text_font)
        for i, line in enumerate(textwrap.wrap(row.face_prompt or "", 34)[:3]):
            draw.text((x + 4, y + tile + 16 + 13 * i), line, fill=(220, 220, 220), font=text_font)
    encoded = io.BytesIO()
    sheet.save(encoded, format="PNG")
    outputs.write_atomic(path, encoded.getvalue())
    return path

"""OUTPUT/report.html: one page with every stage's status, time and fingerprint, linking each stage's own
report (collect's summary, the dataset card and contact sheet, the loss curves, the eval report, the
published model's card)."""

from __future__ import annotations

import html
import json
import os
import time

from dynamicid.atomic import write_atomic
from dynamicid.recipe.recipe import STAGE_ORDER, Recipe
from dynamicid.recipe.stages import FOLDERS

OWN_REPORTS = {
    "collect": ("_collect/summary.json", "_collect/manifest.parquet"),
    "prep": ("dataset_card.html", "contact_sheet.png", "summary.json"),
    "train.anchor": ("loss.png",),
    "train.reconfig": ("loss.png",),
    "eval": ("report.html", "report.png", "summary.json"),
}
STYLE = (
    "body{font:15px system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse}"
    "td,th{border:1px solid #ccc;padding:.35em .7em;text-align:left;vertical-align:top}"
    ".done{color:#176b2c}.failed,.interrupted{color:#a11}.started{color:#a60}code{font-size:13px}"
)


def write_report(recipe: Recipe, stages: dict[str, dict], next_run: dict[str, str] | None = None) -> str:
    """`next_run`: stage -> what the next `dynamicid run` would do with it and why (the plan made now)."""
    next_run = next_run or {}
    rows = [
        _row(recipe, stage, stages.get(stage) or {}, next_run.get(stage, ""))
        for stage in STAGE_ORDER
        if recipe.has(stage)
    ]
    written = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>dynamicid run</title><style>{STYLE}</style>"
        f"</head><body><h1>dynamicid run</h1><p>recipe <code>{html.escape(os.path.abspath(recipe.path))}</code>"
        f" · written {html.escape(written)}</p>"
        "<table><tr><th>stage</th><th>status</th><th>seconds</th><th>fingerprint</th><th>reports</th>"
        f"<th>the next run</th></tr>{''.join(rows)}</table></body></html>"
    )
    path = os.path.join(recipe.output, "report.html")
    write_atomic(path, page.encode("utf-8"))
    return path


def _row(recipe: Recipe, stage: str, record: dict, next_run: str) -> str:
    status = record.get("status", "not run")
    links = [
        f"<a href='{html.escape(os.path.join(FOLDERS[stage], name))}'>{html.escape(name)}</a>"
        for name in OWN_REPORTS.get(stage, ())
        if os.path.exists(os.path.join(recipe.output, FOLDERS[stage], name))
    ]
    notes = _notes(recipe, stage, record)
    return (
        f"<tr><td>{stage}</td><td class='{html.escape(status)}'>{html.escape(status)}</td>"
        f"<td>{record.get('seconds', '')}</td><td><code>{html.escape(str(record.get('fingerprint', ''))[:12])}</code>"
        f"</td><td>{' · '.join(links)}{notes}</td><td>{html.escape(next_run)}</td></tr>"
    )


def _notes(recipe: Recipe, stage: str, record: dict) -> str:
    parts = []
    failures = record.get("failures") or []
    if record.get("message") and not failures:  # a failed gate's message repeats its reasons: shown once
        parts.append(html.escape(record["message"]))
    for failure in failures:
        parts.append(html.escape(failure))
    champion = os.path.join(recipe.output, "eval-champion", "report.html")
    if stage == "gate" and os.path.exists(champion):
        parts.append("<a href='eval-champion/report.html'>the published model's eval on the same set</a>")
    if stage == "gate" and record.get("scores"):
        shown = {k: v for k, v in record["scores"].items() if k in ("face_sim_mean", "leak_positive_share")}
        parts.append(html.escape(json.dumps(shown)))
    if stage == "publish" and record.get("to"):
        to = record["to"]
        card = os.path.join(to, "README.md")
        shown = f"<a href='{html.escape(card)}'>model card</a>" if os.path.exists(card) else html.escape(to)
        parts.append(f"version {record.get('version')}: {shown}")
    return "".join(f"<br>{part}" for part in parts)

"""The report a person looks at: report.html (grid, matched faces, scores, histogram) and report.png."""

from __future__ import annotations

import html
import os

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from dynamicid.drawing import font
from dynamicid.imagefile import open_image

COLOURS = [(46, 204, 113), (52, 152, 219), (241, 196, 15), (231, 76, 60), (155, 89, 182), (26, 188, 156)]
THUMB = 320


def _fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, (float, np.floating)) else str(value)


def annotated_thumbnail(rgb: np.ndarray, rows: list[dict], source_width: int, size: int = THUMB) -> Image.Image:
    """The image with each matched face boxed in its person's colour; boxes are in full-resolution pixels."""
    image = Image.fromarray(rgb)
    shrink = size / max(image.size)
    image = image.resize((max(1, round(image.width * shrink)), max(1, round(image.height * shrink))), Image.BILINEAR)
    scale = image.width / source_width
    draw = ImageDraw.Draw(image)
    label_font = font(13)
    for index, row in enumerate(rows):
        if row["box"] is None:
            continue
        colour = COLOURS[index % len(COLOURS)]
        x0, y0, x1, y1 = (v * scale for v in row["box"])
        draw.rectangle((x0, y0, x1, y1), outline=colour, width=3)
        draw.text((x0 + 3, max(0, y0 - 16)), f"{row['person']} {row['face_sim']:.2f}", fill=colour, font=label_font)
    return image


def face_thumbnail(aligned: np.ndarray, size: int = 96) -> Image.Image:
    return Image.fromarray(aligned).resize((size, size), Image.BILINEAR)


def reference_thumbnail(rgb: np.ndarray, size: int = 96) -> Image.Image:
    image = Image.fromarray(rgb)
    image.thumbnail((size, size))
    return image


def histogram_svg(values: list[float], bins: int = 20, width: int = 420, height: int = 160) -> str:
    counts, edges = np.histogram(np.clip(values, -1, 1), bins=bins, range=(min(0.0, min(values, default=0)), 1.0))
    top = max(counts.max(), 1)
    bar = width / bins
    bars = "".join(
        f'<rect x="{i * bar:.1f}" y="{height - 20 - c / top * (height - 30):.1f}" width="{bar - 2:.1f}" '
        f'height="{c / top * (height - 30):.1f}" fill="#3498db">'
        f"<title>{edges[i]:.2f}–{edges[i + 1]:.2f}: {c}</title></rect>"
        for i, c in enumerate(counts)
    )
    axis = (
        f'<text x="0" y="{height - 4}" font-size="11">{edges[0]:.2f}</text>'
        f'<text x="{width - 24}" y="{height - 4}" font-size="11">{edges[-1]:.2f}</text>'
    )
    return f'<svg width="{width}" height="{height}" role="img" aria-label="FaceSim histogram">{bars}{axis}</svg>'


PERSON_ROWS = (
    ("outcome", "outcome"),
    ("FaceSim", "face_sim"),
    ("Sim(Ref)", "sim_ref"),
    ("Sim(GT)", "sim_gt"),
    ("CP", "copy_paste"),
    ("ID-Conf", "id_conf"),
    ("looks like", "looks_like"),
    ("leak margin", "leak_margin"),
    ("asked", "requested_face_prompt"),
    ("measured", "measured_face_prompt"),
    ("agreement", "prompt_agreement"),
)


def _person_html(person: dict) -> str:
    """One person of a card: the reference and the matched face side by side, then the scores."""
    rows = "".join(
        f"<tr><th>{label}</th><td>{html.escape(_fmt(person.get(key)))}</td></tr>" for label, key in PERSON_ROWS
    )
    shown = ((person.get("reference_thumb"), "reference"), (person.get("face_thumb"), "matched face"))
    faces = "".join(
        f'<figure><img src="{html.escape(src)}" alt="{html.escape(alt)}" width="96">'
        f"<figcaption>{alt}</figcaption></figure>"
        for src, alt in shown
        if src
    )
    if person.get("face_thumb") is None:
        faces += '<figure><div class="missing">no face</div><figcaption>matched face</figcaption></figure>'
    colour = "rgb({},{},{})".format(*(int(v) for v in person["colour"]))
    return (
        f'<div class="person" style="border-color:{colour}"><b>{html.escape(person["person"])}</b>'
        f"<div>{faces}</div><table>{rows}</table></div>"
    )


def _card_html(card: dict) -> str:
    clip = f"<p>CLIP-T {_fmt(card.get('clip_t'))}</p>" if card.get("clip_t") is not None else ""
    return (
        f'<div class="card"><img class="main" src="{html.escape(card["thumb"])}" alt="{html.escape(card["name"])}">'
        f'<p class="name">{html.escape(card["name"])}</p><p>{html.escape(card.get("prompt") or "")}</p>{clip}'
        f"{''.join(_person_html(person) for person in card['persons'])}</div>"
    )


def write_html(path: str, scores: pd.DataFrame, summary: dict, cards: list[dict]) -> None:
    stats = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(_fmt(v))}</td></tr>"
        for k, v in summary.items()
        if not isinstance(v, (dict, list))
    )
    blocks = [_card_html(card) for card in cards]
    per_person = summary.get("person_outcomes", {})
    outcomes = "".join(
        f"<tr><th>{html.escape(name)}</th><td>{count}</td><td>{per_person.get(name, '')}</td></tr>"
        for name, count in summary.get("image_outcomes", {}).items()
    )
    document = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>dynamicid eval report</title>
<style>
body {{ font-family: sans-serif; margin: 20px; background: #fafafa; color: #222; }}
.grid {{ display: flex; flex-wrap: wrap; gap: 14px; }}
.card {{ background: white; border: 1px solid #ddd; border-radius: 6px; padding: 8px; width: 340px; }}
.card img.main {{ max-width: 320px; max-height: 320px; display: block; }}
.person {{ border-left: 5px solid; padding-left: 6px; margin-top: 6px; }}
.person figure {{ display: inline-block; margin: 0 4px 0 0; }}
figcaption {{ font-size: 11px; color: #666; text-align: center; }}
.missing {{ width: 96px; height: 96px; background: #eee; color: #a00; display: flex; align-items: center;
            justify-content: center; }}
table {{ border-collapse: collapse; font-size: 13px; }} th {{ text-align: left; padding-right: 8px; }}
.name {{ font-weight: bold; word-break: break-all; }}
</style></head><body>
<h1>dynamicid eval</h1>
<div style="display:flex; gap:30px"><table>{stats}</table>
<div><h3>FaceSim of every requested person</h3>{histogram_svg(list(scores.face_sim))}</div>
<div><h3>Outcomes</h3><table><tr><th></th><th>images</th><th>persons</th></tr>{outcomes}</table>
<p><small>Matched by the Hungarian algorithm. Sim(Ref), Sim(GT) and CP after WithAnyone's MultiID-Bench;
ID-Conf after UMO. Thresholds: {html.escape(str(summary.get("outcome_thresholds", "")))}
({html.escape(str(summary.get("embedding_model", "")))}).</small></p></div></div>
<h2>Images</h2><div class="grid">{"".join(blocks)}</div>
</body></html>"""
    temporary = path + ".tmp-report"
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(document)
    os.replace(temporary, path)


def write_png(path: str, cards: list[dict], thumbs_dir: str, columns: int = 4) -> None:
    tile_w, text_h = THUMB, 18 + 16 * max((len(c["persons"]) for c in cards), default=1)
    rows = max(1, -(-len(cards) // columns))
    sheet = Image.new("RGB", (columns * tile_w, rows * (tile_w + text_h)), (30, 30, 30))
    draw = ImageDraw.Draw(sheet)
    label_font = font(12)
    for slot, card in enumerate(cards):
        x, y = (slot % columns) * tile_w, (slot // columns) * (tile_w + text_h)
        thumb = open_image(os.path.join(thumbs_dir, os.path.basename(card["thumb"])))
        sheet.paste(thumb, (x + (tile_w - thumb.width) // 2, y + (tile_w - thumb.height) // 2))
        draw.text((x + 4, y + tile_w + 2), card["name"][:44], fill=(240, 240, 240), font=label_font)
        for i, person in enumerate(card["persons"]):
            text = f"{person['person']}: sim {_fmt(person['face_sim'], 2)}  margin {_fmt(person['leak_margin'], 2)}"
            draw.text((x + 4, y + tile_w + 18 + 16 * i), text[:48], fill=person["colour"], font=label_font)
    temporary = path + ".tmp-report.png"
    sheet.save(temporary, format="PNG")
    os.replace(temporary, path)

"""`run_eval`: score every item, then write scores.parquet, summary.json, report.html and report.png."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass

import pandas as pd

from dynamicid.evaluation import heldout, report
from dynamicid.evaluation.config import EvalConfig
from dynamicid.evaluation.inputs import read_items
from dynamicid.evaluation.scoring import ImageAnalyses, ReferenceBank, score_image
from dynamicid.faces import FaceAnalysisConfig, FaceAnalyzer
from dynamicid.faces.identity_check import measured_blend
from dynamicid.faces.record import config_of
from dynamicid.options import counted
from dynamicid.responsible.provenance import COMPOSITE, read_provenance, save_with_provenance

logger = logging.getLogger(__name__)


@dataclass
class EvalResult:
    scores: pd.DataFrame
    summary: dict
    report_html: str
    report_png: str


def _mean(series: pd.Series) -> float | None:
    values = pd.to_numeric(series, errors="coerce").dropna()
    return round(float(values.mean()), 4) if len(values) else None


def outcome_figures(scores: pd.DataFrame) -> dict:
    """The outcome counts (per person and per image), each failure's share of images, and the means of
    Sim(Ref), Sim(GT), CP and ID-Conf."""
    from dynamicid.faces.identity_check import IMAGE_OUTCOMES, OUTCOMES

    per_image = scores.groupby("image").image_outcome.first()
    figures: dict = {
        "person_outcomes": {name: int((scores.outcome == name).sum()) for name in OUTCOMES},
        "image_outcomes": {name: int((per_image == name).sum()) for name in IMAGE_OUTCOMES},
    }
    for name in (outcome for outcome in IMAGE_OUTCOMES if outcome != "ok"):
        figures[f"{name}_share"] = round(float((per_image == name).mean()), 4) if len(per_image) else None
    for key in ("sim_ref", "sim_gt", "copy_paste", "id_conf"):
        figures[f"{key}_mean"] = _mean(scores[key])
    figures["id_conf_min"] = (
        round(float(pd.to_numeric(scores.id_conf).min()), 4) if scores.id_conf.notna().any() else None
    )
    return figures


def summarize(scores: pd.DataFrame, embedder: str, blend_measured: bool = True) -> dict:
    multi = scores[scores.persons_in_image > 1]
    margins = pd.to_numeric(multi.leak_margin, errors="coerce").dropna()
    per_image_min = scores.groupby("image").min_face_sim.first()
    return {
        "images": int(scores.image.nunique()),
        "persons": int(len(scores)),
        "detection_rate": round(float(scores.face_detected.mean()), 4),
        "face_sim_mean": _mean(scores.face_sim),
        "face_sim_min_per_image_mean": _mean(per_image_min),
        "multi_person_images": int(multi.image.nunique()),
        "leak_margin_mean": round(float(margins.mean()), 4) if len(margins) else None,
        "leak_positive_share": round(float((margins > 0).mean()), 4) if len(margins) else None,
        "prompt_agreement_mean": _mean(scores.prompt_agreement),
        "emotion_agreement": _mean(scores.emotion_match),
        "view_agreement": _mean(scores.view_match),
        "side_agreement": _mean(scores.side_match),
        "clip_t_mean": _mean(scores.clip_t) if "clip_t" in scores else None,
        "mirror_consistency": _mean(scores.mirror_consistent) if "mirror_consistent" in scores else None,
        **outcome_figures(scores),
        "embedding_model": embedder,
        "outcome_thresholds": "measured for this embedder" if blend_measured else "blend not measured for it",
    }


def format_summary(summary: dict, output: str) -> str:
    lines = [
        "",
        f"eval: {counted(summary['images'], 'image')}, {counted(summary['persons'], 'requested person')}, "
        f"detection rate {summary['detection_rate']:.0%}",
    ]
    for key in (
        "face_sim_mean",
        "face_sim_min_per_image_mean",
        "sim_ref_mean",
        "sim_gt_mean",
        "copy_paste_mean",
        "id_conf_mean",
        "leak_margin_mean",
        "leak_positive_share",
        "prompt_agreement_mean",
        "clip_t_mean",
        "mirror_consistency",
    ):
        if summary.get(key) is not None:
            lines.append(f"  {key:<28} {summary[key]:.4f}")
    shown = {name: count for name, count in summary["image_outcomes"].items() if count}
    lines.append("  image outcomes: " + ", ".join(f"{name} {count}" for name, count in shown.items()))
    lines.append(f"  embeddings: {summary['embedding_model']} (outcome thresholds {summary['outcome_thresholds']})")
    lines += [
        f"  report:  {os.path.join(output, 'report.html')}",
        f"  grid:    {os.path.join(output, 'report.png')}",
        f"  scores:  {os.path.join(output, 'scores.parquet')}",
    ]
    return "\n".join(lines)


REPORT_FILES = ("scores.parquet", "summary.json", "report.html", "report.png")


def _face_analysis(config: EvalConfig, items: list) -> FaceAnalysisConfig:
    """The face options given, else the analysis the images' sidecars record (the weights' own, which
    generation used), when they all record the same one; else the default."""
    if config.faces != FaceAnalysisConfig():
        return config.faces
    recorded = {json.dumps(item.face_analysis, sort_keys=True) for item in items if item.face_analysis}
    if len(recorded) != 1 or any(item.face_analysis is None for item in items):
        return config.faces
    chosen = config_of(json.loads(recorded.pop()), "the sidecars' face_analysis")
    logger.info(
        "analysing faces as the images' generation did (embedder %s), as their sidecars record", chosen.embedder
    )
    return chosen


def _items(config: EvalConfig) -> list:
    """Generated images of a dataset's held-out identities, or the images INPUT lists."""
    if heldout.is_dataset(config.input):
        return heldout.generate_held_out(config, lambda: _pipeline(config))
    # With OUTPUT equal to INPUT, eval's own report must never be read back as an image to score.
    return read_items(config.input, exclude=tuple(os.path.join(config.output, name) for name in REPORT_FILES))


def _pipeline(config: EvalConfig):
    from dynamicid.generation.loading import load_for_use

    return load_for_use(
        config.base_model, config.weights, config.clip_image_encoder, config.faces, config.device, config.dtype
    )


def run_eval(config: EvalConfig) -> EvalResult:
    items = _items(config)
    analyzer = FaceAnalyzer(_face_analysis(config, items))
    clip = None
    if config.clip_model:
        from dynamicid.evaluation.clip_score import ClipScorer

        clip = ClipScorer(config.clip_model)
    bank = ReferenceBank(analyzer)
    analyses = ImageAnalyses(analyzer)
    output = os.path.abspath(config.output)
    thumbs = os.path.join(output, "thumbs")
    os.makedirs(thumbs, exist_ok=True)

    rows, cards = [], []
    iterator = items
    if config.progress:
        from tqdm import tqdm

        iterator = tqdm(items, unit="img", desc="eval")
    for number, item in enumerate(iterator):
        scored = score_image(item, analyses, bank, mirror=config.mirror_check)
        clip_t = clip.score(scored.image.rgb, item.prompt) if clip and item.prompt else None
        for row in scored.rows:
            row["clip_t"] = clip_t
        rows.extend(scored.rows)
        cards.append(_card(number, item, scored, bank, thumbs, clip_t))

    scores = pd.DataFrame(rows)
    summary = summarize(scores, analyzer.embedder.model_id, measured_blend(analyzer.config.embedder))
    if heldout.is_dataset(config.input):
        summary |= {"dataset": os.path.abspath(config.input), "split": config.split, "weights": config.weights}
    scores.to_parquet(os.path.join(output, "scores.parquet"), index=False)
    with open(os.path.join(output, "summary.json"), "w") as handle:
        json.dump(summary, handle, indent=2)
    html_path, png_path = os.path.join(output, "report.html"), os.path.join(output, "report.png")
    report.write_html(html_path, scores, summary, cards)
    report.write_png(png_path, cards, thumbs, config.report_columns)
    return EvalResult(scores, summary, html_path, png_path)


def _card(number: int, item, scored, bank: ReferenceBank, thumbs: str, clip_t) -> dict:
    stem = f"{number:05d}"
    annotated = report.annotated_thumbnail(scored.image.rgb, scored.rows, scored.image.width)
    made_by = read_provenance(item.image)  # marked only when this toolkit generated the image scored
    if made_by:
        save_with_provenance(
            annotated, os.path.join(thumbs, f"{stem}.jpg"), made_by["model_version"], COMPOSITE, quality=90
        )
    else:
        annotated.save(os.path.join(thumbs, f"{stem}.jpg"), quality=90)
    persons = []
    for index, row in enumerate(scored.rows):
        entry = dict(row) | {"colour": report.COLOURS[index % len(report.COLOURS)]}
        reference = bank.thumbnail(item.persons[index].references[0])
        report.reference_thumbnail(reference).save(os.path.join(thumbs, f"{stem}_ref{index}.jpg"), quality=90)
        entry["reference_thumb"] = f"thumbs/{stem}_ref{index}.jpg"
        if row["face_index"] is not None:
            face = scored.faces[row["face_index"]]
            report.face_thumbnail(face.aligned).save(os.path.join(thumbs, f"{stem}_face{index}.jpg"), quality=90)
            entry["face_thumb"] = f"thumbs/{stem}_face{index}.jpg"
        persons.append(entry)
    return {
        "name": os.path.basename(item.image),
        "thumb": f"thumbs/{stem}.jpg",
        "prompt": item.prompt,
        "clip_t": clip_t,
        "persons": persons,
    }

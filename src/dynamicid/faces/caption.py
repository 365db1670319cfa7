"""Captions: the measured default, the guard every model-written caption passes, and batching.

A caption is a scene description followed by the face prompt. Expression and head orientation
always come from the face prompt (measured), never from a language model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np


class MeasuredCaptioner:
    """The default: it states only what was measured, never invented scene content."""

    name = "measured"
    model_id = "measured-v1"

    def __init__(self, model_path: str | None = None, **options):
        pass

    def caption(self, aligned_rgb: np.ndarray, facts: dict) -> str:
        return measured_caption(facts)


def measured_caption(facts: dict) -> str:
    subject = "a close-up photo of a person's face"
    if facts.get("grayscale"):
        subject = "a black-and-white close-up photo of a person's face"
    details = []
    if facts.get("eyes_closed", 0.0) >= 0.5:
        details.append("eyes closed")
    if facts.get("mouth_open", 0.0) >= 0.5:
        details.append("mouth open")
    return ", ".join([subject, facts["face_prompt"]] + details)


def caption_many(captioner, images: list[np.ndarray], facts: list[dict]) -> list[str]:
    """Captions for several faces: one batched call when the backend batches, else one at a time."""
    if hasattr(captioner, "caption_batch"):
        return list(captioner.caption_batch(images, facts))
    return [captioner.caption(image, fact) for image, fact in zip(images, facts)]


# -- the guard on model-written descriptions --------------------------------------------------------


@dataclass(frozen=True)
class CaptionGuard:
    max_words: int = 40
    min_words: int = 3
    repeated_ngram: int = 3  # a word sequence this long seen twice ends the text before its second use


# Capitalised words that are not names; any other capitalised word, a sentence's first included, is
# taken as a possible name and its sentence is dropped (captioners prefill "A photo of", so the first
# sentence starts safely). Conservative on purpose: a lost sentence
# costs little, a person's name in a training caption teaches the model that name.
NOT_NAMES = frozenset(
    """
I A An The This That These Those There It He She They His Her Their Its In On At With Without Of And Or
But By For From To Under Over Behind Near Beside Wearing Holding Standing Sitting Black White Red Blue Green
Yellow Orange Pink Purple Brown Gray Grey Golden Silver Photo Image Picture Portrait Close-up Closeup
""".split()
)
NAMING_PHRASES = re.compile(
    r"\b(named|called|known as|who is|looks like|resembles|identified as|celebrity|famous)\b", re.IGNORECASE
)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def _drop_repetition(words: list[str], n: int) -> list[str]:
    seen: set[tuple[str, ...]] = set()
    kept: list[str] = []
    for word in words:
        if kept and word.lower() == kept[-1].lower():
            continue  # "the the"
        kept.append(word)
        if len(kept) >= n:
            gram = tuple(w.lower().strip(",.;:") for w in kept[-n:])
            if gram in seen:
                return kept[:-n]
            seen.add(gram)
    return kept


def _has_name(sentence: str) -> bool:
    if NAMING_PHRASES.search(sentence):
        return True
    for word in sentence.split():
        bare = word.strip("\"'()[],.;:!?")
        if bare[:1].isupper() and bare not in NOT_NAMES and not bare.isupper():
            return True
    return False


def guard_description(text: str, guard: CaptionGuard = CaptionGuard()) -> str | None:
    """A model's scene description made safe for a training caption, or None if nothing usable is left.

    Length: at most `max_words`, cut back to the last complete clause. Repetition: repeated words and
    repeated word sequences are cut. Names: sentences that name or identify a person are dropped."""
    text = " ".join(text.replace("\n", " ").split()).strip(" \"'")
    sentences = [s for s in _SENTENCE_END.split(text) if s and not _has_name(s)]
    words = _drop_repetition(" ".join(sentences).split(), guard.repeated_ngram)
    if len(words) > guard.max_words:
        words = words[: guard.max_words]
        for end in range(len(words) - 1, guard.min_words - 1, -1):
            if words[end].endswith((",", ".", ";")):
                words = words[: end + 1]
                break
    description = " ".join(words).strip(" ,;:").rstrip(".")
    if len(description.split()) < guard.min_words:
        return None
    first = description.split()[0]
    if len(first) > 1 and first.isupper():  # an acronym stays as it is
        return description
    return description[0].lower() + description[1:]


def caption_from_description(description: str | None, facts: dict) -> str:
    """The scene description, then the measured face prompt; the measured caption when there is none."""
    if description is None:
        return measured_caption(facts)
    return f"{description}, {facts['face_prompt']}"

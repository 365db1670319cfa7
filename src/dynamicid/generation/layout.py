"""Where persons go: checking user boxes and placing persons automatically.

Boxes in the user API and in sidecars are [x0, y0, x1, y1], fractions of the image's width and
height (the same as `dynamicid eval` reads). SAA takes [y0, x0, y1, x1]; `to_saa` converts.

Automatic layout for N >= 2 persons without boxes (the authors used equal vertical strips):
  * columns c = the count (1..N) whose cells, (W/c) x (H/ceil(N/c)) in pixels, are closest to
    square (ties go to more columns); rows r = ceil(N/c); a last row that is not full is centred;
  * in each cell, a square head box (in pixels) of side 0.6 x the cell's shorter side, centred
    horizontally, its centre at 38% of the cell's height (heads sit above bodies).
For two persons on a square image this gives [.1, .23, .4, .53] and [.6, .23, .9, .53]; the
authors' hand-made pair was [.1, .1, .4, .5] and [.6, .1, .9, .5] (same columns, taller boxes).
"""

from __future__ import annotations

import math
from typing import Any

from dynamicid.errors import ConfigError


class LayoutError(ConfigError):
    pass


def check_boxes(boxes: list[Any] | None, persons: int) -> list[tuple[float, float, float, float]] | None:
    if boxes is None or len(boxes) == 0:
        return None
    if len(boxes) > persons:
        raise LayoutError(f"{len(boxes)} boxes for {persons} person(s): give at most one box per person")
    if len(boxes) < persons:
        raise LayoutError(f"{len(boxes)} boxes for {persons} persons: give a box for every person, or for none")
    checked = []
    for index, box in enumerate(boxes):
        try:
            x0, y0, x1, y1 = (float(v) for v in box)
        except (TypeError, ValueError):
            raise LayoutError(f"box {index} must be four numbers [x0, y0, x1, y1], got {box!r}") from None
        if not all(0.0 <= v <= 1.0 for v in (x0, y0, x1, y1)):
            raise LayoutError(f"box {index} {list(box)} lies outside [0, 1]: boxes are fractions of the image")
        if x1 <= x0 or y1 <= y0:
            raise LayoutError(f"box {index} {list(box)} has zero area: need x0 < x1 and y0 < y1")
        checked.append((x0, y0, x1, y1))
    return checked


def automatic_boxes(persons: int, width: int, height: int) -> list[tuple[float, float, float, float]]:
    if persons < 2:
        return []
    best = None
    for columns in range(1, persons + 1):
        rows = math.ceil(persons / columns)
        cell_w, cell_h = width / columns, height / rows
        squareness = abs(math.log(cell_w / cell_h))
        if best is None or squareness <= best[0] + 1e-9:  # ties go to more columns: side by side
            best = (squareness, columns, rows)
    assert best is not None  # count >= 1 gives at least one grid
    _, columns, rows = best
    cell_w, cell_h = width / columns, height / rows
    side = 0.6 * min(cell_w, cell_h)
    boxes = []
    for index in range(persons):
        row, column = divmod(index, columns)
        in_row = min(columns, persons - row * columns)
        offset = (columns - in_row) * cell_w / 2  # centre a short last row
        cx = offset + (column + 0.5) * cell_w
        cy = (row + 0.38) * cell_h
        boxes.append(
            ((cx - side / 2) / width, (cy - side / 2) / height, (cx + side / 2) / width, (cy + side / 2) / height)
        )
    return [(_unit(box[0]), _unit(box[1]), _unit(box[2]), _unit(box[3])) for box in boxes]


def _unit(value: float) -> float:
    return min(1.0, max(0.0, value))


def to_saa(boxes: list[tuple[float, float, float, float]]) -> list[list[float]]:
    """[x0, y0, x1, y1] -> SAA's [y0, x0, y1, x1]."""
    return [[y0, x0, y1, x1] for x0, y0, x1, y1 in boxes]

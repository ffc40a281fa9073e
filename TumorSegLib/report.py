"""Readable tables on stdout and CSV files, shared by measure, evaluate and segment."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, Sequence

from .files import write_text
from .hints import PathLike
from .measure import Readouts

LESION_COLUMNS = ("label", "voxels", "volume_ml", "area_mm2", "area_px", "recist_long_mm", "recist_short_mm",
                  "recist_long_px", "recist_short_px", "recist_slice", "max3d_mm", "suv_max", "suv_mean",
                  "suv_peak", "mtv_ml", "tlg", "hu_mean", "hu_max")
CASE_COLUMNS = ("case", "control", "dice", "iou", "sensitivity", "precision", "fp_volume_ml", "fn_volume_ml", "fp_area_mm2",
                "fn_area_mm2", "fp_area_px", "fn_area_px", "tp_lesions", "fn_lesions", "fp_lesions",
                "relative_volume_error", "recist_relative_error")


def write_csv(path: PathLike, rows: list) -> Path:
    """One row per dict; the columns are every key, in first-seen order; None is written empty (no rows: empty file)."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    if not columns:
        return write_text(path, "")
    stream = io.StringIO()
    writer = csv.DictWriter(stream, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return write_text(path, stream.getvalue())


def format_value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.4g}" if abs(value) < 1e-3 and value != 0 else f"{value:.3f}".rstrip("0").rstrip(".")
    return str(value)


def format_table(rows: list, columns: Sequence[str]) -> str:
    """An aligned text table of ``rows`` (dicts) with the ``columns`` that any row has."""
    columns = [c for c in columns if any(c in row for row in rows)]
    cells = [[format_value(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c)] + [len(line[i]) for line in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(cell.rjust(w) for cell, w in zip(line, widths)) for line in cells]
    return "\n".join(lines)


def format_pairs(title: str, values: dict) -> str:
    """``title`` then one "name: value" line per entry."""
    return "\n".join([title] + [f"  {key}: {format_value(value)}" for key, value in values.items()])


def readouts_text(readouts: Readouts) -> str:
    """Lesion table, totals and notes of a ``measure.Readouts``."""
    parts = []
    if readouts.lesions:
        parts.append(format_table(readouts.table_rows(), LESION_COLUMNS))
    else:
        parts.append("no lesions (empty mask)")
    parts.append(format_pairs("totals:", readouts.totals))
    parts += [f"note: {note}" for note in readouts.notes]
    return "\n".join(parts)


def evaluation_text(rows: list, summary: dict, notes: list = ()) -> str:
    """Per-case table, summary and notes of an evaluation."""
    parts = [format_table(rows, CASE_COLUMNS), format_pairs("summary:", summary)]
    parts += [f"note: {note}" for note in notes]
    return "\n".join(parts)

"""The readouts table node: one row per lesion from ``Readouts.table_rows()``, then a totals row.

Columns are the backend's own row keys (the same as ``tumorseg measure --csv``), so the panel,
the CSV export and the command line agree; numbers are stored as doubles, empty values as NaN.
"""

from __future__ import annotations

import csv
import math

import vtk

TOTAL_LABEL = "Total"


def _columns(rows, totals) -> list:
    names = []
    for row in rows:
        names += [key for key in row if key not in names]
    names += [key for key in totals if key not in names and _is_number(totals[key])]
    return names or ["label"]


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _string_columns(names, rows) -> set:
    strings = {"label"}
    for row in rows:
        strings |= {key for key, value in row.items() if value is not None and not _is_number(value)}
    return strings & set(names)


def update_table(tableNode, readouts) -> None:
    """Fill ``tableNode`` with the lesion rows and a final ``Total`` row."""
    rows = readouts.table_rows()
    totals = readouts.totals
    names = _columns(rows, totals)
    strings = _string_columns(names, rows)
    table = vtk.vtkTable()
    for name in names:
        column = vtk.vtkStringArray() if name in strings else vtk.vtkDoubleArray()
        column.SetName(name)
        table.AddColumn(column)
    table.SetNumberOfRows(len(rows) + 1)
    for index, row in enumerate(rows + [{"label": TOTAL_LABEL, **totals}]):
        for column_index, name in enumerate(names):
            value = row.get(name)
            if name in strings:
                table.GetColumn(column_index).SetValue(index, "" if value is None else str(value))
            else:
                table.GetColumn(column_index).SetValue(index, float(value) if _is_number(value) else math.nan)
    wasModifying = tableNode.StartModify()
    tableNode.SetAndObserveTable(table)
    tableNode.SetUseColumnTitleAsColumnHeader(True)
    tableNode.SetLocked(True)
    tableNode.EndModify(wasModifying)


def table_rows(tableNode) -> list:
    """The table as a list of {column: value} dicts (numbers as float, text as str)."""
    table = tableNode.GetTable()
    names = [table.GetColumnName(c) for c in range(table.GetNumberOfColumns())]
    rows = []
    for r in range(table.GetNumberOfRows()):
        row = {}
        for c, name in enumerate(names):
            column = table.GetColumn(c)
            row[name] = column.GetValue(r) if isinstance(column, vtk.vtkStringArray) else float(column.GetValue(r))
        rows.append(row)
    return rows


def write_csv(tableNode, path) -> None:
    """Write the table (lesion rows and totals) to a CSV file; NaN cells are left empty."""
    rows = table_rows(tableNode)
    if not rows:
        return
    with open(path, "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()})

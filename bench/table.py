"""The bench table: one row per measurement, with its baseline, ratio and target."""

from dataclasses import dataclass


@dataclass
class Row:
    name: str
    measured: str
    baseline: str
    ratio: str
    target: str
    met: bool | None          # None: no target for this row


def print_table(rows: list[Row]) -> None:
    header = Row("benchmark", "measured", "baseline", "ratio", "target", None)
    cells = [[r.name, r.measured, r.baseline, r.ratio, r.target,
              "" if r.met is None else ("met" if r.met else "MISSED")] for r in [header, *rows]]
    cells[0][-1] = "verdict"
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    for n, row in enumerate(cells):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))

"""The benchmark's output: a plain-text table per section, and the cell formats they share."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence


@dataclass
class Table:
    """A titled table of text cells: first column left-aligned, the others right-aligned, then
    free-text footnotes (how it was measured, targets)."""

    title: str
    columns: tuple[str, ...]
    rows: list[tuple[str, ...]]
    footnotes: list[str] = field(default_factory=list)

    def render(self) -> str:
        cells = [self.columns] + self.rows
        widths = [max(len(r[i]) for r in cells) for i in range(len(self.columns))]

        def line(row):
            first = row[0].ljust(widths[0])
            rest = (c.rjust(w) for c, w in zip(row[1:], widths[1:]))
            return "  ".join([first, *rest]).rstrip()

        out = [self.title, line(self.columns), line(tuple("-" * w for w in widths))]
        out += [line(r) for r in self.rows]
        return "\n".join(out + self.footnotes)


def num(value: float | None, fmt: str) -> str:
    """``value`` in format ``fmt``; "-" where there is none."""
    return "-" if value is None else format(value, fmt)


def label(sizes: Sequence[int]) -> str:
    """A network's layer sizes as the book writes them: ``[784,30,10]``."""
    return "[" + ",".join(str(s) for s in sizes) + "]"


def row_line(row: Sequence[str]) -> str:
    """A table row as a progress line, printed as soon as it is measured."""
    return "  " + "  ".join(row)

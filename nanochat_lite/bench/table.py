"""One table of the bench report: what `report.text` prints and `report.markdown` writes.
Its own module so that a section's renderer living beside its measurements
(documents_report.py) and report.py can both use it without importing each other."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Table:
    title: str
    note: str
    header: list[str]
    rows: list[list[str]] = field(default_factory=list)

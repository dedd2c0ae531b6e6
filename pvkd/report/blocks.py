"""The report's document model: the blocks a section holds, and the text of table cells."""

from __future__ import annotations

from dataclasses import dataclass, field

MISSING = "–"


@dataclass
class Figure:
    """One PNG: written as ``<name>.png`` beside report.md, embedded in report.html."""

    name: str
    png: bytes
    alt: str
    width_px: int  # CSS width in the HTML
    caption: str = ""


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    numeric: list[bool]  # right-aligned columns
    bold: set[tuple[int, int]] = field(default_factory=set)  # (row, column) cells to emphasise
    caption: str = ""  # above the table; `code` spans allowed


@dataclass
class Details:
    """A collapsible code block."""

    summary: str
    text: str
    lang: str = ""


@dataclass
class Columns:
    """Blocks side by side in the HTML (wrapping on narrow screens), one after the other in Markdown."""

    blocks: list


@dataclass
class Section:
    title: str
    anchor: str
    blocks: list = field(default_factory=list)  # str (a paragraph), Table, Figure, Columns, Details
    notes: list[str] = field(default_factory=list)  # what was left out, and why


# ---------------------------------------------------------------- cell text


def pct(value: float | None, digits: int = 1) -> str:
    return MISSING if value is None else f"{100 * value:.{digits}f}"


def fixed(value: float | None, digits: int) -> str:
    return MISSING if value is None else f"{value:.{digits}f}"


def with_ratio(text: str, ratio: float | None) -> str:
    return text if ratio is None else f"{text} ({ratio:.2f}×)"


def signed(value: float | None, digits: int = 1) -> str:
    return MISSING if value is None else f"{value:+.{digits}f}"


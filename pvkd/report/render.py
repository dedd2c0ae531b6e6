"""Rendering: the sections as one self-contained HTML page and as its Markdown twin."""

from __future__ import annotations

import base64
import html
import re

from pvkd.report.blocks import Columns, Details, Figure, Section, Table

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;max-width:1140px;
margin:2em auto;padding:0 1.2em;color:#222;line-height:1.45}
h1{font-size:1.7em;margin-bottom:.2em}
h2{font-size:1.3em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2.2em}
p.intro{color:#444}nav{font-size:.92em}nav a{color:#1f5fa8;text-decoration:none;margin-right:.9em}
.scroll{overflow-x:auto}
table{border-collapse:collapse;margin:1em 0;font-size:.9em}
th,td{padding:.32em .75em;border-bottom:1px solid #e4e4e4;text-align:left;vertical-align:top}
th{background:#f4f5f7;font-weight:600}
.num{text-align:right;font-variant-numeric:tabular-nums}td.num{white-space:nowrap}
figure{margin:1em 0}img{max-width:100%;height:auto}
.columns{display:flex;flex-wrap:wrap;gap:2.5em;align-items:flex-start}
ul.notes{color:#8a5300;font-size:.9em}
pre{background:#f6f8fa;padding:1em;overflow-x:auto;font-size:.82em;line-height:1.35}
details summary{cursor:pointer;color:#1f5fa8}
caption{caption-side:top;text-align:left;color:#555;padding-bottom:.3em}
"""


def _html_table(table: Table) -> str:
    # long dotted param names may break after their dots
    head = "".join(f'<th{" class=num" if n else ""}>{html.escape(h).replace(".", ".<wbr>")}</th>'
                   for h, n in zip(table.header, table.numeric))
    body = []
    for i, row in enumerate(table.rows):
        cells = []
        for j, (cell, num) in enumerate(zip(row, table.numeric)):
            text = html.escape(cell)
            if (i, j) in table.bold:
                text = f"<strong>{text}</strong>"
            cells.append(f'<td class="num">{text}</td>' if num else f"<td>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    caption = f"<caption>{_inline_code_html(table.caption)}</caption>\n" if table.caption else ""
    return (f'<div class="scroll"><table>\n{caption}<thead><tr>{head}</tr></thead>\n<tbody>\n' + "\n".join(body)
            + "\n</tbody>\n</table></div>")


def _html_img(fig: Figure) -> str:
    data = base64.b64encode(fig.png).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(fig.alt)}" '
            f'width="{fig.width_px}"></figure>')


def _inline_code_html(text: str) -> str:
    parts = re.split(r"`([^`]+)`", text)
    return "".join(f"<code>{html.escape(p)}</code>" if i % 2 else html.escape(p) for i, p in enumerate(parts))


def _html_block(block) -> str:
    if isinstance(block, str):
        return f"<p>{_inline_code_html(block)}</p>"
    if isinstance(block, Table):
        return _html_table(block)
    if isinstance(block, Figure):
        return _html_img(block)
    if isinstance(block, Columns):
        return '<div class="columns">' + "".join(f"<div>{_html_block(b)}</div>" for b in block.blocks) + "</div>"
    if isinstance(block, Details):
        return (f"<details><summary>{html.escape(block.summary)}</summary>"
                f"<pre><code>{html.escape(block.text)}</code></pre></details>")
    raise TypeError(f"unknown report block {type(block).__name__}")


def render_html(title: str, intro: str, sections: list[Section]) -> str:
    """The whole report as one HTML page: inline CSS, figures as data: URIs, no script."""
    out = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           f"<title>{html.escape(title)}</title>", f"<style>{CSS}</style>", "</head>", "<body>",
           f"<h1>{html.escape(title)}</h1>", f'<p class="intro">{_inline_code_html(intro)}</p>',
           "<nav>" + "".join(f'<a href="#{s.anchor}">{html.escape(s.title)}</a>' for s in sections) + "</nav>"]
    for s in sections:
        out.append(f'<section id="{s.anchor}">')
        out.append(f"<h2>{html.escape(s.title)}</h2>")
        out += [_html_block(b) for b in s.blocks]
        if s.notes:
            out.append('<ul class="notes">' + "".join(f"<li>{_inline_code_html(n)}</li>" for n in s.notes) + "</ul>")
        out.append("</section>")
    out += ["</body>", "</html>", ""]
    return "\n".join(out)


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _md_table(table: Table) -> str:
    lines = [table.caption, ""] if table.caption else []
    lines += ["| " + " | ".join(_md_cell(h) for h in table.header) + " |",
             "| " + " | ".join("---:" if n else "---" for n in table.numeric) + " |"]
    for i, row in enumerate(table.rows):
        cells = [f"**{_md_cell(c)}**" if (i, j) in table.bold else _md_cell(c) for j, c in enumerate(row)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _md_block(block) -> list[str]:
    if isinstance(block, str):
        return [block, ""]
    if isinstance(block, Table):
        return [_md_table(block), ""]
    if isinstance(block, Figure):
        return [f"![{block.alt}]({block.name}.png)", ""]
    if isinstance(block, Columns):
        return [line for b in block.blocks for line in _md_block(b)]
    if isinstance(block, Details):
        return ["<details>", f"<summary>{html.escape(block.summary)}</summary>", "", f"```{block.lang}",
                block.text.rstrip("\n"), "```", "", "</details>", ""]
    raise TypeError(f"unknown report block {type(block).__name__}")


def render_markdown(title: str, intro: str, sections: list[Section]) -> str:
    """The Markdown twin: the same text and tables, figures as relative links to the PNG files beside it."""
    out = [f"# {title}", "", intro, ""]
    for s in sections:
        out += [f"## {s.title}", ""]
        for block in s.blocks:
            out += _md_block(block)
        if s.notes:
            out += ["Left out:", ""] + [f"- {n}" for n in s.notes] + [""]
    return "\n".join(out).rstrip("\n") + "\n"


def figures_of(sections: list[Section]) -> list[Figure]:
    figs = []
    for s in sections:
        for block in s.blocks:
            if isinstance(block, Figure):
                figs.append(block)
            elif isinstance(block, Columns):
                figs += [b for b in block.blocks if isinstance(b, Figure)]
    return figs



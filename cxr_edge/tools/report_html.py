"""Report pages as Markdown and HTML from one list of blocks, written atomically.

A :class:`Page` collects headings, paragraphs, alerts, bullet lists, tables
and images; :meth:`Page.write` renders both ``report.md`` and ``index.html``
into a folder (images are referenced by file name, so the folder can be moved
or zipped as a whole). Text is plain: it is escaped for HTML and for Markdown
tables. Standard library only.
"""

from __future__ import annotations

import html
from pathlib import Path

from ..runtime.atomic import write_atomic

__all__ = ["Page"]

_STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222;padding:0 1em}
table{border-collapse:collapse;margin:1em 0;font-size:90%}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
td:first-child,th:first-child{text-align:left}img{max-width:100%;border:1px solid #eee;margin:0.5em 0}
.alert{background:#fde8e8;border:2px solid #c0392b;color:#7b1d1d;padding:0.6em 1em;font-weight:600;margin:1em 0}
.muted{color:#666;font-size:90%}"""


def _md_text(value) -> str:
    """Plain text for Markdown: angle brackets escaped, so that a file name such as ``<img onerror=...>``
    stays text in a viewer that renders HTML inside Markdown."""
    return str(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _md_cell(value) -> str:
    return _md_text(value).replace("|", "\\|").replace("\n", " ")


class Page:
    """A report page; add blocks in reading order, then :meth:`write`."""

    def __init__(self, title: str):
        self.title = title
        self.blocks: list[tuple] = []

    def heading(self, text: str, level: int = 2) -> "Page":
        self.blocks.append(("heading", text, level))
        return self

    def text(self, text: str, muted: bool = False) -> "Page":
        self.blocks.append(("text", text, muted))
        return self

    def alert(self, text: str) -> "Page":
        """A warning the reader cannot miss (red box in HTML, bold quote in Markdown)."""
        self.blocks.append(("alert", text))
        return self

    def bullets(self, items) -> "Page":
        items = [str(i) for i in items]
        if items:
            self.blocks.append(("bullets", items))
        return self

    def table(self, head, rows) -> "Page":
        rows = [[str(c) for c in r] for r in rows]
        if rows:
            self.blocks.append(("table", [str(h) for h in head], rows))
        return self

    def image(self, file: str, title: str) -> "Page":
        self.blocks.append(("image", file, title))
        return self

    def markdown(self) -> str:
        out = [f"# {self.title}", ""]
        for kind, *args in self.blocks:
            if kind == "heading":
                out += ["#" * args[1] + " " + args[0], ""]
            elif kind == "text":
                out += [f"*{_md_text(args[0])}*" if args[1] else _md_text(args[0]), ""]
            elif kind == "alert":
                out += [f"> **⚠ {_md_text(args[0])}**", ""]
            elif kind == "bullets":
                out += [f"- {_md_text(i)}" for i in args[0]] + [""]
            elif kind == "table":
                head, rows = args
                out += ["| " + " | ".join(map(_md_cell, head)) + " |", "|" + "---|" * len(head)]
                out += ["| " + " | ".join(map(_md_cell, r)) + " |" for r in rows] + [""]
            elif kind == "image":
                out += [f"![{args[1]}]({args[0]})", ""]
        return "\n".join(out)

    def html(self) -> str:
        e = html.escape
        body = [f"<h1>{e(self.title)}</h1>"]
        for kind, *args in self.blocks:
            if kind == "heading":
                body.append(f"<h{args[1]}>{e(args[0])}</h{args[1]}>")
            elif kind == "text":
                body.append(f'<p{" class=muted" if args[1] else ""}>{e(args[0])}</p>')
            elif kind == "alert":
                body.append(f'<div class="alert">⚠ {e(args[0])}</div>')
            elif kind == "bullets":
                body.append("<ul>" + "".join(f"<li>{e(i)}</li>" for i in args[0]) + "</ul>")
            elif kind == "table":
                head, rows = args
                body.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr>" + "".join(
                    "<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows) + "</table>")
            elif kind == "image":
                body.append(f'<img src="{e(args[0])}" alt="{e(args[1])}">')
        return (f'<!doctype html><html><head><meta charset="utf-8"><title>{e(self.title)}</title>'
                f"<style>{_STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")

    def write(self, folder, *, html_name: str = "index.html", md_name: str = "report.md") -> Path:
        """Write both renderings into ``folder`` (created if needed); returns the folder."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        write_atomic(folder / md_name, self.markdown())
        write_atomic(folder / html_name, self.html())
        return folder

"""A tiny document model of the report rendered to both Markdown and HTML (all user text
escaped in both)."""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence


@dataclass
class Doc:
    blocks: list = field(default_factory=list)

    def h(self, level: int, text: str):
        self.blocks.append(("h", level, text))

    def p(self, text: str, cls: str = ""):
        self.blocks.append(("p", text, cls))

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[Any]], caption: str = "",
              header_groups: Optional[Sequence[tuple[str, int]]] = None):
        self.blocks.append(("table", list(headers), [list(r) for r in rows], caption, header_groups))

    def img(self, path: str, alt: str):
        self.blocks.append(("img", path, alt))

    def pre(self, text: str):
        self.blocks.append(("pre", text))

    def bullets(self, items: Sequence[str]):
        self.blocks.append(("ul", list(items)))


_MD_SPECIAL = re.compile(r"([\\`*_\[\]#|<>~])")


def md_text(s: Any) -> str:
    """User text made inert in Markdown: specials backslash-escaped, newlines -> <br>."""
    s = "" if s is None else str(s)
    s = _MD_SPECIAL.sub(r"\\\1", s)
    return s.replace("\r", "").replace("\n", "<br>")


def render_markdown(doc: Doc) -> str:
    out: list[str] = []
    for b in doc.blocks:
        kind = b[0]
        if kind == "h":
            out.append("#" * b[1] + " " + md_text(b[2]))
        elif kind == "p":
            out.append(md_text(b[1]))
        elif kind == "ul":
            out.append("\n".join(f"- {md_text(x)}" for x in b[1]))
        elif kind == "table":
            _, headers, rows, caption, groups = b
            lines = []
            if groups:
                lines.append("| " + " | ".join(md_text(g) + (" |" * (n - 1)) for g, n in groups) + " |")
                lines.append("|" + "---|" * len(headers))
            lines.append("| " + " | ".join(md_text(h) for h in headers) + " |")
            if not groups:
                lines.append("|" + "---|" * len(headers))
            for r in rows:
                lines.append("| " + " | ".join(md_text(c) for c in r) + " |")
            if caption:
                lines.append("")
                lines.append("*" + md_text(caption) + "*")
            out.append("\n".join(lines))
        elif kind == "img":
            out.append(f"![{md_text(b[2])}]({b[1]})")
        elif kind == "pre":
            text = b[1].replace("```", "ˋˋˋ")
            out.append("```\n" + text + "\n```")
    return "\n\n".join(out) + "\n"


CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#1b1f24;line-height:1.45}
h1{border-bottom:2px solid #d0d7de;padding-bottom:.3em}h2{border-bottom:1px solid #d0d7de;margin-top:2em}
table{border-collapse:collapse;margin:.8em 0;font-size:.92em}
th,td{border:1px solid #d0d7de;padding:4px 9px;vertical-align:top;text-align:left}
th{background:#f3f5f7}td.num{text-align:right;font-variant-numeric:tabular-nums}
caption{caption-side:bottom;font-style:italic;color:#57606a;padding-top:.3em;text-align:left}
tr:nth-child(even) td{background:#fafbfc}
.better{color:#116329;font-weight:600}.worse{color:#a40e26;font-weight:600}.nsd{color:#57606a}
pre{background:#f6f8fa;padding:1em;overflow:auto;font-size:.85em}
img{max-width:100%;border:1px solid #d0d7de;margin:.5em 0}
p.headline{font-size:1.15em;background:#eef6ff;border-left:4px solid #0969da;padding:.6em 1em}
"""

_NUM = re.compile(r"^[+\-−]?\d[\d,]*(\.\d+)?%?$")


def _cell_html(c: Any, header: bool = False) -> str:
    s = "" if c is None else str(c)
    esc = html.escape(s).replace("\n", "<br>")
    tag = "th" if header else "td"
    cls = ""
    if not header:
        if _NUM.match(s.strip()):
            cls = "num"
        elif s == "better":
            cls = "better"
        elif s == "worse":
            cls = "worse"
        elif s == "no significant difference":
            cls = "nsd"
    return f"<{tag}{f' class={chr(34)}{cls}{chr(34)}' if cls else ''}>{esc}</{tag}>"


def render_html(doc: Doc, title: str) -> str:
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>"]
    for b in doc.blocks:
        kind = b[0]
        if kind == "h":
            parts.append(f"<h{b[1]}>{html.escape(b[2])}</h{b[1]}>")
        elif kind == "p":
            cls = f' class="{html.escape(b[2])}"' if b[2] else ""
            parts.append(f"<p{cls}>{html.escape(b[1]).replace(chr(10), '<br>')}</p>")
        elif kind == "ul":
            parts.append("<ul>" + "".join(f"<li>{html.escape(x)}</li>" for x in b[1]) + "</ul>")
        elif kind == "table":
            _, headers, rows, caption, groups = b
            t = ["<table>"]
            if caption:
                t.append(f"<caption>{html.escape(caption)}</caption>")
            t.append("<thead>")
            if groups:
                t.append("<tr>" + "".join(f'<th colspan="{n}">{html.escape(g)}</th>' for g, n in groups) + "</tr>")
            t.append("<tr>" + "".join(_cell_html(h, True) for h in headers) + "</tr></thead><tbody>")
            for r in rows:
                t.append("<tr>" + "".join(_cell_html(c) for c in r) + "</tr>")
            t.append("</tbody></table>")
            parts.append("".join(t))
        elif kind == "img":
            parts.append(f'<img src="{html.escape(b[1], quote=True)}" alt="{html.escape(b[2], quote=True)}">')
        elif kind == "pre":
            parts.append(f"<pre>{html.escape(b[1])}</pre>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"

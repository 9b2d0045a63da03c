"""Self-contained HTML pages: inline CSS, inline images (base64 PNG), sortable and filterable tables.

A page needs no server and no network: a user can mail it or open it from a cluster's scratch
folder. The data the page was made from is embedded as JSON (``<script id="report-data">``)
and written beside it by :func:`write_report`.

The building blocks return HTML fragments (``str``); :func:`page` wraps sections into a document.
"""

from __future__ import annotations

import base64
import html
import itertools
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryostack.io.atomic import atomic_output, jsonable

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
header{background:#1f3a5f;color:#fff;padding:14px 28px}
header h1{margin:0;font-size:1.35em}
header p{margin:4px 0 0;opacity:.85;font-size:.9em}
nav{padding:6px 28px;background:#e8edf4;font-size:.9em}
nav a{margin-right:14px;color:#1f3a5f}
main{padding:8px 28px 40px;max-width:1200px}
section{background:#fff;border:1px solid #dde2ea;border-radius:6px;padding:10px 18px;margin:16px 0}
h2{font-size:1.15em;margin:6px 0 10px;color:#1f3a5f}
h3{font-size:1em;margin:14px 0 6px}
table{border-collapse:collapse;font-size:.86em;margin:6px 0}
th,td{border-bottom:1px solid #e3e7ee;padding:3px 10px;text-align:left;vertical-align:top}
th{background:#f0f3f7}
table.sortable th{cursor:pointer;user-select:none}
table.sortable th:after{content:" \\2195";color:#9aa5b5;font-size:.8em}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.kv td:first-child{color:#4a5568;padding-right:24px}
.kv tr.head td{font-weight:600;color:#1f3a5f;padding-top:8px}
figure{display:inline-block;margin:6px 12px 6px 0;vertical-align:top}
figure img{max-width:100%;border:1px solid #e3e7ee}
figcaption{font-size:.82em;color:#4a5568;max-width:640px}
.filter{margin:4px 0;padding:3px 6px;font-size:.86em;width:260px}
.scroll{max-height:420px;overflow:auto;display:inline-block}
.note{color:#7a4b00;background:#fff6e0;border-left:3px solid #e0a800;padding:4px 10px;margin:4px 0;font-size:.88em}
.fail{color:#8a1020;background:#fde8ea;border-left:3px solid #c0283a;padding:6px 10px;margin:6px 0}
.ok{color:#17603a}
pre{background:#f3f5f8;padding:8px;overflow:auto;font-size:.82em}
"""

# Sorting (numbers as numbers, blanks last) and filtering of any table with class "sortable" /
# an input with data-filter="<table id>". No library: the page must work offline.
_JS = """
(function(){
function key(td){var t=td?td.textContent.trim():"";var n=parseFloat(t.replace(/[^0-9eE+.\\-]/g,""));
 return (t!==""&&!isNaN(n)&&/^[\\s(]*[-+]?[0-9.]/.test(t))?[0,n]:[t===""||t==="\\u2014"?2:1,t.toLowerCase()];}
function cmp(a,b){if(a[0]!==b[0])return a[0]-b[0];return a[1]<b[1]?-1:a[1]>b[1]?1:0;}
document.querySelectorAll("table.sortable").forEach(function(tb){
 tb.querySelectorAll("th").forEach(function(th,i){th.addEventListener("click",function(){
  var body=tb.tBodies[0],rows=Array.prototype.slice.call(body.rows),dir=th.dataset.dir==="asc"?-1:1;
  rows.sort(function(r1,r2){return dir*cmp(key(r1.cells[i]),key(r2.cells[i]));});
  rows.forEach(function(r){body.appendChild(r);});th.dataset.dir=dir===1?"asc":"desc";});});});
document.querySelectorAll("input[data-filter]").forEach(function(inp){
 inp.addEventListener("input",function(){var q=inp.value.toLowerCase(),tb=document.getElementById(inp.dataset.filter);
  Array.prototype.forEach.call(tb.tBodies[0].rows,function(r){
   r.style.display=r.textContent.toLowerCase().indexOf(q)>=0?"":"none";});});});
document.body.dataset.ready="1";
})();
"""


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: object, spec: str = "{:.3f}") -> str:
    """A number formatted by ``spec``; ``None`` and NaN as an em dash; anything else as text."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float):
        if value != value:  # NaN
            return "—"
        try:
            return spec.format(value)
        except (ValueError, TypeError):
            return str(value)
    return str(value)


def png_bytes_img(data: bytes, caption: str = "", alt: str = "") -> str:
    """An inline PNG (``data:`` URI) in a figure with an optional caption."""
    uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="{uri}" alt="{esc(alt or caption)}">{cap}</figure>'


def png_file_img(path: str | Path, caption: str = "") -> str:
    """An existing PNG file inlined; a missing file leaves a note instead of a broken image."""
    path = Path(path)
    if not path.is_file():
        return note(f"plot {path.name} was not produced")
    return png_bytes_img(path.read_bytes(), caption, alt=path.stem)


def figure_img(fig, caption: str = "", dpi: int = 100) -> str:
    """A matplotlib figure inlined as PNG (the figure is closed)."""
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return png_bytes_img(buf.getvalue(), caption)


def note(text: str, kind: str = "note") -> str:
    return f'<div class="{kind}">{esc(text)}</div>'


def key_values(rows: Iterable[tuple[str, str]]) -> str:
    """A two-column table; a row whose value is ``""`` is a sub-heading."""
    out = []
    for k, v in rows:
        if v == "":
            out.append(f'<tr class="head"><td colspan="2">{esc(k)}</td></tr>')
        else:
            out.append(f"<tr><td>{esc(k.strip())}</td><td>{esc(v)}</td></tr>")
    return '<table class="kv"><tbody>' + "".join(out) + "</tbody></table>"


_table_ids = itertools.count(1)


def table(
    headers: Sequence[str],
    rows: Iterable[Sequence[object]],
    *,
    sortable: bool = True,
    filterable: bool = False,
    table_id: str | None = None,
    empty: str = "none",
    scroll: bool = False,
) -> str:
    """A data table; numeric cells right-aligned. ``filterable`` adds a text filter above it."""
    rows = list(rows)
    if not rows:
        return f"<p><em>{esc(empty)}</em></p>"
    if table_id is None:
        table_id = f"t{next(_table_ids)}"
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = []
        for v in row:
            num = isinstance(v, int | float) and not isinstance(v, bool)
            text = fmt(v, "{:.4g}") if isinstance(v, float) else str(v) if isinstance(v, int) else fmt(v)
            cells.append(f'<td class="num">{esc(text)}</td>' if num else f"<td>{esc(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    cls = ' class="sortable"' if sortable else ""
    tbl = f'<table id="{esc(table_id)}"{cls}><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'
    if scroll:
        tbl = f'<div class="scroll">{tbl}</div>'
    if filterable:
        tbl = (
            f'<div><input class="filter" type="search" placeholder="filter rows ({len(rows)})" '
            f'data-filter="{esc(table_id)}" aria-label="filter"></div>' + tbl
        )
    return tbl


@dataclass
class Section:
    """One titled part of a report; ``anchor`` is its id in the page."""

    title: str
    anchor: str
    parts: list[str] = field(default_factory=list)

    def add(self, *fragments: str) -> Section:
        self.parts.extend(fragments)
        return self

    def html(self) -> str:
        return f'<section id="{esc(self.anchor)}"><h2>{esc(self.title)}</h2>{"".join(self.parts)}</section>'


def page(title: str, subtitle: str, sections: Sequence[Section], data: dict | None = None) -> str:
    """A whole HTML document: header, a link bar to the sections, the sections, the data as JSON."""
    nav = "".join(f'<a href="#{esc(s.anchor)}">{esc(s.title)}</a>' for s in sections)
    # "</" inside the JSON would end the script element early.
    blob = json.dumps(jsonable(data or {}), separators=(",", ":")).replace("</", "<\\/")
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>"
        f"<header><h1>{esc(title)}</h1><p>{esc(subtitle)}</p></header><nav>{nav}</nav><main>"
        + "".join(s.html() for s in sections)
        + f'</main><script type="application/json" id="report-data">{blob}</script>'
        f"<script>{_JS}</script></body></html>"
    )


def write_report(path: str | Path, document: str, data: dict | None = None, protect: Sequence[Path] = ()) -> Path:
    """Write the page (and ``data`` as ``<path>.json`` beside it, when given), each atomically."""
    path = Path(path)
    with atomic_output(path, protect=tuple(protect)) as tmp:
        tmp.write_text(document, encoding="utf-8")
    if data is not None:
        with atomic_output(path.with_suffix(".json"), protect=tuple(protect)) as tmp:
            tmp.write_text(json.dumps(jsonable(data), indent=1))
    return path

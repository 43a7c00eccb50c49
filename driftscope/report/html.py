"""HTML building blocks: escaping, tables, embedded charts, the page shell.

Every string that came from a run (prompts, answers, generations, token texts,
suite and model names) goes through `esc` when it lands in markup, or through
`script_json` when it lands inside a <script> element. Nothing from a run is
ever placed in markup unescaped, and the page's own JavaScript writes data with
textContent, never innerHTML.
"""

from __future__ import annotations

import base64
import functools
import gzip
import html
import json
import math
from dataclasses import dataclass, field

import plotly.io as pio
from plotly.offline import get_plotlyjs

from driftscope.report.assets import BODY_JS, CSS, HEAD_JS

# No request leaves the page: scripts and styles are inline, images only data:.
# 'unsafe-eval' because parts of plotly.js build functions at run time.
CSP = ("default-src 'none'; script-src 'unsafe-inline' 'unsafe-eval'; style-src 'unsafe-inline'; "
       "img-src data: blob:; font-src data:; connect-src 'none'; form-action 'none'; base-uri 'none'")

TEMPLATE = "plotly_white"


def esc(value) -> str:
    """Text -> safe HTML text (quotes too, so it is safe inside attributes)."""
    return html.escape("" if value is None else str(value), quote=True)


def script_json(obj) -> str:
    """JSON that is safe inside <script>: no '<', '>' or '&' can close the element."""
    text = obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False, allow_nan=False, default=_default)
    return _escape_json_text(text)


def _escape_json_text(text: str) -> str:
    # These characters only ever occur inside JSON strings, where \uXXXX means the same.
    return (text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def _default(o):
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def finite(x) -> float | None:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def fmt(x, digits: int = 3, pct: bool = False, signed: bool = False) -> str:
    """A number for people: '—' when missing, 3 significant digits, optional %."""
    v = finite(x)
    if v is None:
        return "—"
    if pct:
        return f"{v * 100:+.1f} pt" if signed else f"{v * 100:.1f}%"
    if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5):
        return f"{v:+.{digits - 1}e}" if signed else f"{v:.{digits - 1}e}"
    return f"{v:+.{digits}g}" if signed else f"{v:.{digits}g}"


def visible(text) -> str:
    """Token text with its whitespace made visible: ' 42' -> '␣42', newline -> '\\n'."""
    if text is None:
        return "∅"
    if text == "":
        return "∅ (empty)"
    out = []
    for ch in str(text):
        if ch == " ":
            out.append("␣")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif ord(ch) < 32 or 0x7F <= ord(ch) < 0xA0:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return "".join(out)


@dataclass(frozen=True)
class Cell:
    """A table cell: the text shown and, for sorting, a number (None: sort as text)."""

    text: str
    sort: float | None = None
    cls: str = ""
    href: str = ""  # a relative link around the text


def num(x, **kw) -> Cell:
    return Cell(fmt(x, **kw), finite(x), "num")


def table(headers: list[str], rows: list[list], cls: str = "sortable", caption: str = "") -> str:
    """A table; cells are Cell or plain values (escaped here). Click a header to sort."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = []
    for row in rows:
        tds = []
        for c in row:
            c = c if isinstance(c, Cell) else Cell(str(c) if c is not None else "—")
            attrs = f' class="{esc(c.cls)}"' if c.cls else ""
            if c.sort is not None:
                attrs += f' data-v="{c.sort!r}"'
            inner = f'<a href="{esc(c.href)}">{esc(c.text)}</a>' if c.href else esc(c.text)
            tds.append(f"<td{attrs}>{inner}</td>")
        body.append("<tr>" + "".join(tds) + "</tr>")
    cap = f"<caption>{esc(caption)}</caption>" if caption else ""
    return (f'<div class="wide"><table class="{esc(cls)}">{cap}<thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


def section(anchor: str, title: str, body: str, lead: str = "") -> str:
    intro = f'<p class="lead">{esc(lead)}</p>' if lead else ""
    return f'<section id="{esc(anchor)}"><h2>{esc(title)}</h2>{intro}{body}</section>'


@dataclass
class Charts:
    """Collects figures; each becomes a div plus its JSON, drawn once plotly.js is loaded."""

    figures: list[tuple[str, str]] = field(default_factory=list)  # (div id, JSON text)

    def add(self, name: str, fig, height: int | None = None) -> str:
        if fig is None:
            return ""
        spec = json.loads(pio.to_json(fig, validate=False))
        spec.get("layout", {}).pop("template", None)  # one shared template per page
        if height:
            spec["layout"]["height"] = height
        div = f"chart-{name}"
        self.figures.append((div, json.dumps(spec, ensure_ascii=False, separators=(",", ":"))))
        return f'<div class="ds-chart" id="{esc(div)}" data-chart="{esc(name)}"></div>'

    def scripts(self) -> str:
        return "".join(f'<script type="application/json" id="{esc(d)}-data">{_escape_json_text(j)}</script>'
                       for d, j in self.figures)


@functools.lru_cache(maxsize=2)
def _plotly_payload(compress: bool) -> str:
    js = get_plotlyjs()
    if not compress:
        return f'<script id="ds-plotly">{js}</script>'
    data = base64.b64encode(gzip.compress(js.encode("utf-8"), compresslevel=9, mtime=0)).decode("ascii")
    return f'<script type="application/octet-stream" id="ds-plotly-gz">{data}</script>'


def template_json() -> str:
    layout = pio.templates[TEMPLATE].to_plotly_json()["layout"]
    return script_json({"layout": layout})


def page(title: str, header: str, nav: list[tuple[str, str]], body: str, charts: Charts | None = None,
         data: dict | None = None, compress_js: bool = True) -> str:
    """The whole document. `data` becomes JSON blocks (id -> object) for the page's script."""
    links = "".join(f'<a href="#{esc(a)}">{esc(t)}</a>' for a, t in nav)
    blocks = "".join(f'<script type="application/json" id="{esc(k)}">{script_json(v)}</script>'
                     for k, v in (data or {}).items())
    plot = ""
    if charts is not None and charts.figures:
        plot = (f'<script type="application/json" id="ds-template">{template_json()}</script>'
                + charts.scripts() + _plotly_payload(compress_js))
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="referrer" content="no-referrer">'
        f"<title>{esc(title)}</title><style>{CSS}</style><script>{HEAD_JS}</script></head><body>"
        f"<header>{header}</header>"
        f'<div id="ds-errors" class="errors" hidden></div>'
        + (f"<nav>{links}</nav>" if links else "")
        + f"<main>{body}</main>{blocks}{plot}<script>{BODY_JS}</script></body></html>\n"
    )

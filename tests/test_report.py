"""The HTML report and the runs index: sections, escaping, size, and a real browser."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from driftscope.errors import DriftscopeError
from driftscope.report import render_report, write_index, write_report
from driftscope.report.html import esc, page, script_json, visible
from driftscope.report.items import explorer_data
from driftscope.result import DriftResult

HOSTILE = "<script>alert(1)</script>"
CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOT_COPY = Path("/tmp/report-screenshot.png")


# -- a synthetic run ---------------------------------------------------------------

def _stats(rng, scale: float) -> dict:
    mean = float(scale * rng.uniform(0.5, 1.5))
    return {"n": 500, "mean": mean, "se": mean / 20, "median": mean / 2, "p90": mean * 2, "p95": mean * 3,
            "p99": mean * 5, "p99_9": mean * 7, "max": mean * 9}


def _figures(rng, scale: float, suites: list[str] | None, accuracy: bool) -> dict:
    classes = {}
    for name in ("numeric", "punctuation", "whitespace"):
        base = float(rng.uniform(0.05, 0.3))
        tuned = base + (0.3 * scale if name == "numeric" else -0.02)
        classes[name] = {"base": base, "tuned": tuned, "shift": tuned - base, "shift_se": 0.01, "log_odds_shift": 0.5}
    f = {"n_probes": 100, "n_positions": 500, "kl": _stats(rng, scale), "kl_reverse": _stats(rng, scale),
         "js": _stats(rng, scale / 10), "top1_agreement": 1 - scale / 2, "top1_agreement_se": 0.02,
         "classes": classes, "kl_split": {"between": scale / 3, "within": scale / 2, "between_share": 0.4}}
    if accuracy:
        change = -0.2 * scale
        f.update({"accuracy_base": 0.7, "accuracy_tuned": 0.7 + change, "accuracy_change": change,
                  "accuracy_change_ci": {"lo": change - 0.05, "hi": change + 0.05}, "mcnemar_p": 0.003,
                  "recovered": 0.8, "verdict": "output-bias",
                  "verdict_sentence": f"Accuracy fell {-change:.0%} and 80% of it comes back <img src=x onerror=alert(2)>."})
    if suites is not None:
        f["suites"] = {s: _figures(rng, scale * (i + 1) / len(suites), None, accuracy) for i, s in enumerate(suites)}
    return f


def synthetic(n_probes: int = 40, positions: int = 5, labels=("step-100", "step-200"), accuracy: bool = True,
              extras: bool = True, name: str = "synthetic", seed: int = 0) -> DriftResult:
    """A DriftResult with the columns compare() writes, plus accuracy, layers, components and weights.

    The first probe's prompt, a suite name, a token and a model answer carry markup that must show as text.
    """
    rng = np.random.default_rng(seed)
    suites = ["arithmetic", "trivia <b>x</b>"]
    prompts = [HOSTILE if i == 0 else f"Q{i}: what is {i} plus {i}?\n A:" for i in range(n_probes)]
    suite_of = [suites[i % 2] for i in range(n_probes)]
    pos, items, classes, tokens, layers, comps = [], [], [], [], [], []
    for k, lb in enumerate(labels):
        scale = (k + 1) / len(labels)
        n = n_probes * positions
        probe = np.repeat(np.arange(n_probes), positions)
        kl = rng.lognormal(np.log(scale), 1.5, n)
        pos.append(pl.DataFrame({
            "checkpoint": [lb] * n, "suite": [suite_of[i] for i in probe], "probe_id": [f"p{i}" for i in probe],
            "probe_index": probe, "kind": np.where(np.arange(n) % positions == 0, "next", "answer"),
            "offset": np.arange(n) % positions, "gold": rng.integers(0, 400, n), "kl": kl, "js": kl / 10,
            "top1_agree": rng.random(n) > scale / 2, "p_numeric": rng.random(n) * 0.2,
            "q_numeric": rng.random(n) * 0.2 + 0.3 * scale,
        }))
        correct_base = rng.random(n_probes) > 0.3
        items.append(pl.DataFrame({
            "checkpoint": [lb] * n_probes, "probe_index": np.arange(n_probes), "suite": suite_of,
            "probe_id": [f"p{i}" for i in range(n_probes)], "n_positions": [positions] * n_probes,
            "kl_next": kl[::positions], "kl_mean": kl.reshape(n_probes, positions).mean(1),
            "top1_agree_next": rng.random(n_probes) > 0.5, "numeric_shift_next": rng.random(n_probes) * scale,
            "logp_answer": -rng.random(n_probes) * 5, "logq_answer": -rng.random(n_probes) * 8,
            "prompt": prompts, "answer": ["</script><b>gold</b>" if i == 0 else str(2 * i) for i in range(n_probes)],
            "n_prompt_tokens": [12] * n_probes, "truncated_tokens": [0] * n_probes,
            "correct_base": correct_base, "correct_tuned": correct_base & (rng.random(n_probes) > scale / 2),
            "pred_tuned": [HOSTILE if i == 0 else str(i * 3) for i in range(n_probes)],
        }))
        for scope in ["all", *suites]:
            for cls in ("numeric", "punctuation", "whitespace"):
                b = float(rng.uniform(0.05, 0.3))
                classes.append({"checkpoint": lb, "scope": scope, "class": cls, "in_partition": True, "base": b,
                                "tuned": b + 0.2 * scale, "shift": 0.2 * scale, "shift_se": 0.01, "log_odds_shift": 0.4})
        for direction, sign in (("gain", 1), ("loss", -1)):
            for r, text in enumerate([" 42", "\n", "</script>", "\t7", "", "é"], start=1):
                p = float(rng.uniform(0.01, 0.05))
                tokens.append({"checkpoint": lb, "direction": direction, "rank": r, "token_id": 10 * r + (sign > 0),
                               "text": text, "p_mean": p, "q_mean": p + sign * 0.01 / r, "delta": sign * 0.01 / r})
        for layer in range(6):
            layers.append({"checkpoint": lb, "layer": layer, "rel_l2": scale * layer / 5, "cosine": 1 - scale * layer / 20,
                           "cka": 1 - scale * layer / 30, "lens_kl": scale * layer, "lens_numeric_base": 0.1,
                           "lens_numeric_tuned": 0.1 + scale * layer / 10})
            for comp in ("attn", "mlp"):
                comps.append({"checkpoint": lb, "layer": layer, "component": comp, "change": scale * (layer + 1) / (2 if comp == "attn" else 1)})
    tables = {"positions": pl.concat(pos), "items": pl.concat(items), "classes": pl.DataFrame(classes), "tokens": pl.DataFrame(tokens)}
    if extras:
        weights = [{"tensor": f"model.layers.{lyr}.{m}.weight", "layer": lyr, "module_type": m, "base_norm": 1.0,
                    "delta_norm": 0.01 * (lyr + 1), "rel_change": 0.01 * (lyr + 1)} for lyr in range(6) for m in ("q", "v", "gate", "down")]
        weights.append({"tensor": "model.embed_tokens.weight", "layer": None, "module_type": "embedding", "base_norm": 2.0,
                        "delta_norm": 0.001, "rel_change": 0.0005})
        tables.update({"layers": pl.DataFrame(layers), "components": pl.DataFrame(comps), "weights": pl.DataFrame(weights)})
    summary = {
        "schema_version": 1, "driftscope_version": "0.1.0",
        "models": {"base": {"label": "base", "path": "models/base", "kind": "model", "fingerprint": "abc"},
                   "tuned": [{"label": lb, "path": f"models/{lb}", "kind": "model"} for lb in labels]},
        "suites": [{"name": s, "version": "1", "hash": "f" * 64, "n_probes": n_probes // 2, "n_with_answer": n_probes // 2} for s in suites],
        "settings": {"device": "cpu", "seed": 0},
        "checkpoints": [{"label": lb, "path": f"models/{lb}", "kind": "model",
                         "figures": _figures(rng, (k + 1) / len(labels), suites, accuracy)} for k, lb in enumerate(labels)],
    }
    return DriftResult(summary, tables, {"created": "2026-11-20T09:00:00+0000", "seconds": 12.5, "name": name})


class Tags(HTMLParser):
    """Every start tag with its attributes, and the text of each <script> by type."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.scripts: list[tuple[str | None, str, str | None]] = []  # (type, text, id)
        self._script = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append((tag, a))
        if tag == "script":
            self._script = (a.get("type"), [], a.get("id"))

    def handle_data(self, data):
        if self._script is not None:
            self._script[1].append(data)

    def handle_endtag(self, tag):
        if tag == "script" and self._script is not None:
            self.scripts.append((self._script[0], "".join(self._script[1]), self._script[2]))
            self._script = None


def parse(text: str) -> Tags:
    p = Tags()
    p.feed(text)
    return p


def external_refs(tags: Tags) -> list[str]:
    return [v for _, a in tags.tags for k, v in a.items() if k in ("src", "href", "action", "data") and v and re.match(r"\s*(https?:)?//", v)]


# -- the report ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "synthetic"
    synthetic().to_dir(run)
    write_report(run)
    return run


def test_report_has_every_section_from_a_saved_run(full_run):
    text = (full_run / "report.html").read_text(encoding="utf-8")
    for anchor in ("headline", "suites", "drift", "classes", "movers", "items", "layers", "checkpoints"):
        assert f'<section id="{anchor}">' in text, anchor
    for chart in ("kl-hist", "top1", "class-mass", "kl-split", "layers", "components", "weights", "trend", "drift-acc"):
        assert f'id="chart-{chart}"' in text, chart
    assert "McNemar p" in text and "output-bias" in text and "Correlation between drift and accuracy" in text
    assert "␣42" in text and "\\n" in text  # token movers show whitespace


def test_report_is_self_contained_and_escapes_run_text(full_run):
    text = (full_run / "report.html").read_text(encoding="utf-8")
    tags = parse(text)
    assert external_refs(tags) == []
    assert not any(t == "link" or (t == "script" and "src" in a) for t, a in tags.tags)
    assert 'http-equiv="Content-Security-Policy"' in text
    # exactly two executable scripts (ours); everything else is inert data
    kinds = [t for t, _, _ in tags.scripts]
    assert kinds.count(None) == 2, kinds
    assert set(kinds) <= {None, "application/json", "application/octet-stream"}
    assert HOSTILE not in text and "<img src=x" not in text and "<b>gold</b>" not in text and "<b>x</b>" not in text
    assert esc("<img src=x onerror=alert(2)>") in text  # the verdict sentence, as text
    assert "trivia &lt;b&gt;x&lt;/b&gt;" in text
    # the data blocks still carry the exact strings once parsed
    blocks = {i: t for k, t, i in tags.scripts if k == "application/json"}
    items = json.loads(blocks["ds-items"])
    cells = [c for row in items["rows"] for c in row]
    assert HOSTILE in cells and "</script><b>gold</b>" in cells
    for t in blocks.values():
        assert "<" not in t and ">" not in t
        json.loads(t)


def test_report_rebuilds_identically_without_models(full_run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(full_run, copy)
    again = write_report(copy)
    assert again == copy / "report.html"
    assert again.read_text(encoding="utf-8") == (full_run / "report.html").read_text(encoding="utf-8")
    in_memory = write_report(DriftResult.from_dir(copy), out=tmp_path / "r.html")  # a result in hand works too
    assert in_memory.read_text(encoding="utf-8") == again.read_text(encoding="utf-8")


def test_sections_appear_only_when_their_data_exists(tmp_path):
    result = synthetic(n_probes=6, labels=("tuned",), accuracy=False, extras=False)
    del result.tables["tokens"], result.tables["items"]
    text = render_report(result)
    for anchor in ("headline", "suites", "drift", "classes"):
        assert f'<section id="{anchor}">' in text
    for anchor in ("movers", "items", "layers", "checkpoints"):
        assert f'<section id="{anchor}">' not in text and f'href="#{anchor}"' not in text
    assert "acc. base" not in text and "McNemar" not in text and 'class="verdict' not in text
    assert "accuracy change" not in text


def test_a_summary_without_tables_still_renders():
    result = synthetic(n_probes=4, labels=("tuned",), extras=False)
    result.tables = {}
    text = render_report(result)
    assert '<section id="headline">' in text and 'id="ds-plotly-gz"' in text  # summary-only charts still drawn
    assert '<section id="items">' not in text


def test_size_of_a_1000_probe_run_and_the_items_cap(tmp_path):
    result = synthetic(n_probes=1000, positions=5, labels=("tuned", "lora"))
    run = result.to_dir(tmp_path / "big")
    size = write_report(run).stat().st_size
    print(f"report for 1,000 probes x 5 positions x 2 checkpoints: {size / 1e6:.2f} MB")
    assert size < 5_000_000
    data = explorer_data(result.tables["items"], ["tuned", "lora"], max_rows=50)
    assert data["shown"] == 50 and data["total"] == 2000
    assert data["rows"][0][[c["key"] for c in data["columns"]].index("correct_change")] == -1  # lost items first
    assert "Only the worst 2,000 are embedded" not in render_report(result)  # 2,000 rows: all of them fit
    more = synthetic(n_probes=1100, positions=1, labels=("tuned", "lora"), extras=False)
    assert "Only the worst 2,000 are embedded" in render_report(more)


def test_items_explorer_columns_follow_the_table():
    result = synthetic(n_probes=4, labels=("tuned",))
    data = explorer_data(result.tables["items"], ["tuned"])
    keys = [c["key"] for c in data["columns"]]
    assert keys[:4] == ["suite", "probe_id", "prompt", "answer"]  # one checkpoint: no checkpoint column
    assert {"pred_tuned", "correct_base", "correct_tuned", "correct_change", "kl_next", "dlogp_answer"} <= set(keys)
    bare = result.tables["items"].drop("correct_base", "correct_tuned", "pred_tuned")
    keys = [c["key"] for c in explorer_data(bare, ["tuned"])["columns"]]
    assert "correct_change" not in keys and "pred_tuned" not in keys


def test_escaping_helpers():
    assert script_json({"a": "</script><!--&"}) == '{"a": "\\u003c/script\\u003e\\u003c!--\\u0026"}'
    assert json.loads(script_json({"a": "</script>\u2028"})) == {"a": "</script>\u2028"}
    assert visible(" 42") == "␣42" and visible("\n") == "\\n" and visible("\x00") == "\\x00" and visible("") == "∅ (empty)"


def test_not_a_run_is_a_domain_error(tmp_path):
    with pytest.raises(DriftscopeError):
        write_report(tmp_path)


def test_report_from_a_real_compare(family, tmp_path):
    from driftscope import compare

    compare(family["base"], [family["tuned"], family["lora"]], out=tmp_path, name="real")
    text = write_report(tmp_path / "real").read_text(encoding="utf-8")
    for anchor in ("headline", "suites", "drift", "classes", "movers", "items", "layers", "checkpoints"):
        assert f'<section id="{anchor}">' in text, anchor
    items = json.loads({i: t for k, t, i in parse(text).scripts if k == "application/json"}["ds-items"])
    assert items["shown"] == items["total"] > 0


# -- the index ---------------------------------------------------------------------

def test_index_lists_runs_newest_first(tmp_path):
    runs = tmp_path / "reports"
    for name, created in (("old run", "2026-01-01T10:00:00+0000"), ("new", "2026-03-01T10:00:00+0000"),
                          ("mid<i>", "2026-02-01T10:00:00+0100")):
        r = synthetic(n_probes=4, labels=("tuned",), extras=False, name=name)
        r.meta["created"] = created
        r.to_dir(runs / name)
    write_report(runs / "new")
    (runs / "broken").mkdir()
    (runs / "broken" / "summary.json").write_text("{not json", encoding="utf-8")
    (runs / "not-a-run").mkdir()
    text = write_index(runs).read_text(encoding="utf-8")
    order = [text.index(s) for s in ('href="new/report.html"', "mid&lt;i&gt;", 'href="old%20run/summary.json"')]
    assert order == sorted(order)
    assert "<i>" not in text and "not-a-run" not in text
    assert "Folders not listed" in text and "broken" in text
    assert "output-bias" in text and "trivia &lt;b&gt;x&lt;/b&gt;" in text
    assert external_refs(parse(text)) == [] and 'id="ds-plotly' not in text


def test_index_of_a_missing_folder_is_a_domain_error(tmp_path):
    with pytest.raises(DriftscopeError):
        write_index(tmp_path / "nope")


# -- a real browser ----------------------------------------------------------------

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-default-apps", "--enable-logging=stderr", "--v=0", "--log-level=0",
                  "--virtual-time-budget=15000"]


def chromium(page_file: Path, tmp: Path, *extra: str) -> subprocess.CompletedProcess:
    profile = tmp / f"profile-{len(list(tmp.glob('profile-*')))}"
    cmd = [str(CHROMIUM), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *extra, page_file.as_uri()]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


def net_attempts(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if re.search(r"net::ERR_|Refused to (load|connect)|https?://(?!www\.w3\.org)", ln)]


def console_lines(stderr: str) -> list[str]:
    """What the page wrote to the console (chromium logs it with --log-level=0); a clean report writes nothing."""
    return [ln for ln in stderr.splitlines() if ":CONSOLE" in ln]


def rendered_charts(dom: str) -> dict[str, int]:
    """chart div id -> number of plotly SVG layers inside it, from the dumped DOM."""
    counts: dict[str, int] = {}
    for m in re.finditer(r'<div class="ds-chart[^"]*" id="([^"]+)"', dom):
        end = dom.find('class="ds-chart', m.end())
        counts[m.group(1)] = dom[m.end(): end if end > 0 else len(dom)].count('class="main-svg"')
    return counts


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)")
def test_report_in_headless_chromium(full_run, tmp_path):
    report = full_run / "report.html"
    expected = set(re.findall(r'<div class="ds-chart" id="([^"]+)"', report.read_text(encoding="utf-8")))
    assert len(expected) >= 9

    done = chromium(report, tmp_path, "--dump-dom")
    dom = done.stdout
    root = re.search(r"<html[^>]*>", dom).group(0)
    assert 'data-ready="1"' in root, done.stderr[-3000:]
    errors = re.search(r'<div id="ds-errors"[^>]*>(.*?)</div>', dom, re.S).group(1)
    assert "data-errors" not in root and errors == "", errors
    assert 'data-resources="[]"' in root
    charts = rendered_charts(dom)
    assert set(charts) == expected and all(n >= 1 for n in charts.values()), charts
    assert net_attempts(done.stderr) == [] and console_lines(done.stderr) == []
    assert external_refs(parse(dom[: dom.find('<script type="application/json"')])) == []
    # the hostile prompt became a table cell's text, and no script ran it
    assert "<td class=\"text\"><div>&lt;script&gt;alert(1)&lt;/script&gt;</div></td>" in dom
    assert "alert() was called: 1" not in dom and "alert() was called: 2" not in dom

    shot = tmp_path / "report.png"
    chromium(report, tmp_path, "--hide-scrollbars", "--window-size=1400,2000", f"--screenshot={shot}")
    assert shot.stat().st_size > 20_000
    shutil.copy(shot, SCREENSHOT_COPY)


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)")
def test_browser_check_catches_requests_and_plain_plotly_works(tmp_path):
    """The detector itself: a page that tries to fetch is flagged; plotly.js inline (uncompressed) renders."""
    result = synthetic(n_probes=4, labels=("tuned",), extras=False)
    text = render_report(result, compress_js=False)
    text = text.replace("<main>", '<main><img src="https://example.invalid/x.png">', 1)
    page_file = tmp_path / "bad.html"
    page_file.write_text(text, encoding="utf-8")
    done = chromium(page_file, tmp_path, "--dump-dom")
    dom = done.stdout
    root = re.search(r"<html[^>]*>", dom).group(0)
    assert 'data-ready="1"' in root
    assert "data-errors" in root and "example.invalid" in root  # blocked by the page's policy, and reported
    assert any("example.invalid" in ln for ln in net_attempts(done.stderr))
    charts = rendered_charts(dom)
    assert charts and all(n >= 1 for n in charts.values()), charts


def test_page_shell_without_charts_has_no_plotly():
    text = page("t", "<h1>t</h1>", [], "<p>x</p>")
    assert 'id="ds-plotly' not in text and "Content-Security-Policy" in text

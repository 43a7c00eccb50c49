"""The HTML report and the runs index, drawn from what a real compare writes
(the session fixture `report_run` in conftest.py: the tiny base against step-100
and step-200 on three small suites), and checked in a real browser.

Every chart's traces carry `meta` naming the column or summary figure they plot;
the tests read the plotly JSON embedded in the page and check each trace
against the run's tables, so a chart of a wrong column fails here.
"""

from __future__ import annotations

import base64
import copy
import html as htmllib
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
from driftscope.report import figures as F
from driftscope.report import render_report, where as W, write_index, write_report
from driftscope.report.html import esc, page, script_json, visible
from driftscope.report.items import explorer_data, items_section
from driftscope.report.sections import shared_prompts
from driftscope.result import DriftResult

HOSTILE = "<script>alert(1)</script>"
CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOT_COPY = Path("/tmp/report-screenshot.png")
CHARTS = ("kl-ecdf", "top1", "class-mass", "kl-split", "layers", "components", "weights", "trend", "drift-acc")
SECTIONS = ("headline", "suites", "drift", "classes", "movers", "items", "layers", "checkpoints")


# -- reading a page -----------------------------------------------------------------

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


def json_blocks(text: str) -> dict[str, str]:
    return {i: t for k, t, i in parse(text).scripts if k == "application/json"}


def charts_of(text: str) -> dict[str, dict]:
    """chart name -> its plotly spec, as embedded in the page."""
    return {i[len("chart-"):-len("-data")]: json.loads(t) for i, t in json_blocks(text).items() if i.startswith("chart-")}


def arr(v) -> np.ndarray:
    """A plotly array as JSON carries it: a list, or {"dtype", "bdata", "shape"}."""
    if isinstance(v, dict) and "bdata" in v:
        out = np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"]))
        return out.reshape([int(s) for s in str(v["shape"]).split(",")]) if "shape" in v else out
    return np.asarray(v, dtype=object if v and isinstance(np.ravel(v)[0], str) else float)


def traces(spec: dict, **meta) -> list[dict]:
    return [t for t in spec["data"] if all((t.get("meta") or {}).get(k) == v for k, v in meta.items())]


def column(df: pl.DataFrame, name: str, label: str) -> np.ndarray:
    return df.filter(pl.col("checkpoint") == label)[name].to_numpy().astype(float)


# -- the fixture ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def run(report_run) -> DriftResult:
    return DriftResult.from_dir(report_run["path"])


@pytest.fixture(scope="module")
def text(report_run) -> str:
    return (report_run["path"] / "report.html").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def charts(text) -> dict[str, dict]:
    return charts_of(text)


def test_the_fixture_is_a_real_compare_run(report_run, run):
    """Its size, printed for the record (pytest -s)."""
    t = run.tables
    rows = ", ".join(f"{k} {v.height}" for k, v in sorted(t.items()))
    print(f"\nreport fixture: {t['items'].select('suite', 'probe_id').n_unique()} probes in {len(run.summary['suites'])} suites x "
          f"{len(run.checkpoints)} checkpoints; rows: {rows}; compare took {report_run['seconds']:.1f} s")
    assert [c["label"] for c in run.checkpoints] == report_run["labels"]
    assert [s["name"] for s in run.summary["suites"]] == report_run["suites"]
    assert {"positions", "items", "classes", "tokens", "layers", "components", "weights"} <= set(t)
    assert t["items"].height == 24 * 2


def test_report_has_every_section_and_chart(text, charts):
    for anchor in SECTIONS:
        assert f'<section id="{anchor}">' in text, anchor
    assert set(charts) == set(CHARTS)
    assert "McNemar p" in text and "inconclusive" in text and "Correlation between drift and accuracy" in text
    assert "␣" in text  # token movers show whitespace


def test_no_legend_sits_over_a_title(charts):
    for name, spec in charts.items():
        legend = spec["layout"].get("legend", {})
        assert legend.get("x", 0) >= 1 and legend.get("xanchor") == "left", name  # right of every plot and title


# -- what each chart plots ----------------------------------------------------------------

def test_component_heatmap_plots_the_logit_change(run, charts):
    comps = run.tables["components"]
    spec = charts["components"]
    assert "logit_change_rms" in spec["layout"]["title"]["text"]
    for label in ("step-100", "step-200"):
        (tr,) = traces(spec, checkpoint=label, column="logit_change_rms")
        (own,) = traces(spec, checkpoint=label, column="own_logit_change_rms")  # beside it: the own change (issue 16)
        assert own["y"] == tr["y"] and own["x"] == tr["x"]
        mine = comps.filter(pl.col("checkpoint") == label)
        want = np.array([[mine.filter((pl.col("layer") == int(x)) & (pl.col("component") == y))["logit_change_rms"][0]
                          for x in tr["x"]] for y in tr["y"]])
        z = arr(tr["z"])
        np.testing.assert_allclose(z, want)
        assert np.ptp(z) > 0 and not np.isin(z, mine["n_positions"].to_numpy()).any()


def test_layer_chart_plots_only_what_a_reader_reasons_with(run, charts):
    layers = run.tables["layers"]
    spec = charts["layers"]
    plotted = {(t["meta"]["column"], t["meta"]["checkpoint"]) for t in spec["data"] if "column" in t["meta"]}
    assert {c for c, _ in plotted} == {"rel_l2", "cosine", "cka", "lens_kl", "lens_numeric_base", "lens_numeric_tuned"}
    assert ("lens_numeric_base", "step-200") not in plotted  # the base is drawn once
    for t in spec["data"]:
        if "column" in t["meta"]:
            np.testing.assert_allclose(arr(t["y"]), column(layers, t["meta"]["column"], t["meta"]["checkpoint"]))
    (band,) = traces(spec, band="rel_l2 ± 1.96 rel_l2_se", checkpoint="step-100")
    y, se = column(layers, "rel_l2", "step-100"), column(layers, "rel_l2_se", "step-100")
    np.testing.assert_allclose(arr(band["y"]), np.concatenate([y + 1.96 * se, (y - 1.96 * se)[::-1]]))
    titles = [a["text"] for a in spec["layout"]["annotations"]]
    assert not any(w in " ".join(titles) for w in ("n_positions", "n_next", "cka_dims", "rel_l2_se"))


def test_layer_chart_drops_all_zero_and_unlensed_series(run):
    zero = run.tables["layers"].with_columns(pl.lit(0.0).alias("lens_numeric_base"), pl.lit(0.0).alias("lens_numeric_tuned"))
    fig = W.layer_lines(zero, ["step-100", "step-200"])
    assert not any((t.meta or {}).get("column", "").startswith("lens_numeric") for t in fig.data)
    unlensed = run.tables["layers"].with_columns(pl.when(pl.col("layer") == 0).then(None).otherwise(pl.col("lens_kl")).alias("lens_kl"))
    (kl,) = [t for t in W.layer_lines(unlensed, ["step-100"]).data if t.meta.get("column") == "lens_kl" and t.meta["checkpoint"] == "step-100"]
    assert list(kl.x) == [1]  # a layer the lens skipped is left out, not drawn at zero


def test_weight_heatmap_is_scaled_per_checkpoint(run, charts):
    spec = charts["weights"]
    assert "scaled per checkpoint" in spec["layout"]["title"]["text"]
    cells = W.weight_cells(run.tables["weights"])
    axes = []
    for label in ("step-100", "step-200"):
        (tr,) = traces(spec, checkpoint=label, column="rel_change")
        z = arr(tr["z"])
        mine = cells.filter(pl.col("checkpoint") == label)
        assert np.nanmax(z) == pytest.approx(mine["rel_change"].max())
        axis = spec["layout"][tr["coloraxis"]]
        assert axis["cmax"] == pytest.approx(np.nanmax(z)) and axis["cmin"] == 0
        axes.append(tr["coloraxis"])
    assert len(set(axes)) == 2
    # the LoRA's one large edit does not set the full fine-tune's scale
    maxima = cells.group_by("checkpoint").agg(pl.col("rel_change").max())
    assert maxima["rel_change"].max() > 2 * maxima["rel_change"].min()
    w = run.tables["weights"].filter((pl.col("checkpoint") == "step-100") & (pl.col("layer") == 1) & (pl.col("module_type") == "v"))
    v = cells.filter((pl.col("checkpoint") == "step-100") & (pl.col("where") == "1") & (pl.col("module_type") == "v"))
    assert v["rel_change"][0] == pytest.approx(w["delta_norm"][0] / w["base_norm"][0])
    assert set(cells.filter(pl.col("layer").is_null())["where"]) == {"outside"}


def test_kl_is_an_ecdf_per_checkpoint_with_real_tick_labels(run, charts):
    spec = charts["kl-ecdf"]
    positions = run.tables["positions"]
    for label in ("step-100", "step-200"):
        (tr,) = traces(spec, checkpoint=label, column="kl")
        want = np.sort(np.clip(column(positions, "kl", label), F.KL_FLOOR, None))
        np.testing.assert_allclose(arr(tr["x"]), want)
        y = arr(tr["y"])
        assert y[-1] == pytest.approx(1) and np.all(np.diff(y) > 0)
    axis = spec["layout"]["xaxis"]
    assert axis["type"] == "log" and axis["ticktext"] == [f"{v:g}" for v in axis["tickvals"]]
    assert len(axis["tickvals"]) >= 3


def test_log_ticks_and_ecdf_helpers():
    vals, labels = F.log_ticks(0.3, 3)
    assert labels == ["0.3", "0.4", "0.5", "0.6", "0.7", "0.8", "0.9", "1", "2", "3"]
    vals, labels = F.log_ticks(0.04, 11)
    assert labels == ["0.05", "0.1", "0.2", "0.5", "1", "2", "5", "10"]
    assert F.log_ticks(1e-6, 100)[1] == ["1e-06", "1e-05", "0.0001", "0.001", "0.01", "0.1", "1", "10", "100"]
    assert len(F.log_ticks(2.1, 2.4)[0]) == 2
    x, y = F.ecdf(np.arange(10_000, 0, -1.0))
    assert len(x) == F.ECDF_POINTS and np.all(np.diff(x) >= 0) and y[-1] == 1 and x[-1] == 10_000


def test_class_mass_top1_and_kl_split_plot_what_they_name(run, charts):
    classes = run.tables["classes"]
    for tr in charts["class-mass"]["data"]:
        col, label = tr["meta"]["column"], tr["meta"]["checkpoint"]
        mine = classes.filter(pl.col("checkpoint") == label)
        lookup = {(("all suites" if s == "all" else esc(s).replace("&#x27;", "'").replace("&quot;", '"')), c): v
                  for s, c, v in mine.select("scope", "class", col).iter_rows()}
        for scope, cls, v in zip(tr["x"][0], tr["x"][1], arr(tr["y"])):
            assert v == pytest.approx(lookup[(scope, cls)])
    for tr in charts["top1"]["data"]:
        suites = run.figures(tr["meta"]["checkpoint"])["suites"]
        assert list(arr(tr["y"])) == pytest.approx([s["top1_agreement"] for s in suites.values()])
    between = traces(charts["kl-split"], figure="kl_split.between")[0]
    assert arr(between["y"])[0] == pytest.approx(run.figures("step-100")["kl_split"]["between"])


def test_trend_joins_only_training_steps_and_says_so(run, charts, text):
    spec = charts["trend"]
    (kl,) = traces(spec, figure="kl.mean")
    assert kl["mode"] == "lines+markers" and list(arr(kl["x"])) == [100, 200]
    assert list(arr(kl["y"])) == pytest.approx([run.figures(lb)["kl"]["mean"] for lb in ("step-100", "step-200")])
    assert "ordered by the training step in each name (100 to 200)" in text
    (acc,) = traces(spec, figure="accuracy_tuned")
    (base,) = traces(spec, figure="accuracy_base")
    assert list(arr(base["y"])) == pytest.approx([run.figures("step-100")["accuracy_base"]] * 2)
    # the same run with names that are not steps: points in the order given, and the page says so
    other = copy.deepcopy(run.summary)
    for c, name in zip(other["checkpoints"], ("lora", "full")):
        c["label"] = name
    (kl,) = traces(json.loads(F.checkpoint_trend(other).to_json()), figure="kl.mean")
    assert kl["mode"] == "markers" and kl["x"] == ["lora", "full"]
    page_text = render_report(DriftResult(other, {}, run.meta))
    assert "in the order given, as separate points" in page_text


def test_checkpoint_order():
    assert F.checkpoint_order(["step-200", "step-100"])[:2] == (["step-100", "step-200"], [100, 200])
    assert F.checkpoint_order(["checkpoint-1000", "checkpoint-500"])[1] == [500, 1000]  # by number, not text
    assert F.checkpoint_order(["run/global_step_30", "run/global_step_4"])[1] == [4, 30]
    for names in (["tuned", "lora"], ["a/checkpoint-5", "b/checkpoint-5"], ["step-1", "mlp-only"], ["step-3"]):
        order, steps, how = F.checkpoint_order(names)
        assert order == names and steps is None and "order given" in how


def test_drift_vs_accuracy_labels_on_hover_only(run, charts):
    for tr in charts["drift-acc"]["data"]:
        assert tr["mode"] == "markers" and "text" not in tr
        # qa and qa_mc share prompts but not their metric (qa_mc is scored by choice
        # log-likelihood, qa by generation): one point each, labelled on hover
        assert [t.split(" ")[0] for t in tr["hovertext"]] == ["qa", "qa_mc", "counting"]


# -- the per-suite table and the header -------------------------------------------------

def test_suites_that_share_prompts_are_paired(run, text):
    assert shared_prompts(run.tables["items"]) == [(["qa", "qa_mc"], 8)]
    assert "<th>same prompts as</th>" in text
    assert "qa and qa_mc ask the same 8 prompts" in text
    suites = text[text.index('<section id="suites">'):text.index('<section id="drift">')]
    rows = re.findall(r"<tr>(.*?)</tr>", suites, re.S)[1:]
    cells = [re.findall(r"<td[^>]*>(.*?)</td>", r, re.S) for r in rows]
    assert [c[3] for c in cells if c[1] == "qa"] == ["qa_mc", "qa_mc"]
    assert [c[3] for c in cells if c[1] == "qa_mc"] == ["qa", "qa"]
    assert all(c[3] == "—" for c in cells if c[1].startswith("counting"))
    assert 'class="sortable suites"' in suites


def test_header_shows_labels_and_keeps_paths_for_hover_and_provenance(run, text):
    header = text[text.index("<header>"):text.index("</header>")]
    base = run.summary["models"]["base"]["path"]
    shown = re.sub(r'title="[^"]*"', "", header)
    assert base not in shown and "/ckpt/" not in shown
    assert ">step-100</b>" in header and f'title="{esc(base)}"' in header
    provenance = text[text.index('<dl class="meta">'):]
    assert base in provenance and run.checkpoints[0]["path"] in provenance


# -- safety and rebuilding --------------------------------------------------------------

def test_report_is_self_contained_and_escapes_run_text(text):
    tags = parse(text)
    assert external_refs(tags) == []
    assert not any(t == "link" or (t == "script" and "src" in a) for t, a in tags.tags)
    assert 'http-equiv="Content-Security-Policy"' in text
    kinds = [t for t, _, _ in tags.scripts]
    assert kinds.count(None) == 2, kinds  # ours; everything else is inert data
    assert set(kinds) <= {None, "application/json", "application/octet-stream"}
    assert HOSTILE not in text and "<b>2</b>" not in text and "<b>&</b>" not in text
    assert "counting &lt;b&gt;&amp;&lt;/b&gt;" in text
    blocks = json_blocks(text)
    cells = [c for row in json.loads(blocks["ds-items"])["rows"] for c in row]
    assert any(HOSTILE in str(c) for c in cells) and "</script><b>2</b>" in cells
    for t in blocks.values():
        assert "<" not in t and ">" not in t
        json.loads(t)


def test_report_rebuilds_identically_without_models(report_run, text, tmp_path):
    again = tmp_path / "copy"
    shutil.copytree(report_run["path"], again)
    (again / "report.html").unlink()
    assert write_report(again) == again / "report.html"
    assert (again / "report.html").read_text(encoding="utf-8") == text
    in_memory = write_report(DriftResult.from_dir(again), out=tmp_path / "r.html")  # a result in hand works too
    assert in_memory.read_text(encoding="utf-8") == text


def _one_checkpoint(run: DriftResult, label: str) -> DriftResult:
    summary = copy.deepcopy(run.summary)
    summary["checkpoints"] = [c for c in summary["checkpoints"] if c["label"] == label]
    summary["models"]["tuned"] = [t for t in summary["models"]["tuned"] if t["label"] == label]
    tables = {k: v.filter(pl.col("checkpoint") == label) if "checkpoint" in v.columns else v for k, v in run.tables.items()}
    return DriftResult(summary, tables, dict(run.meta))


def test_sections_appear_only_when_their_data_exists(run):
    one = _one_checkpoint(run, "step-200")
    for key in ("tokens", "items", "layers", "components", "weights"):
        del one.tables[key]
    for figs in [one.checkpoints[0]["figures"], *one.checkpoints[0]["figures"]["suites"].values()]:
        for key in [k for k in figs if k.startswith("accuracy") or k in ("mcnemar_p", "recovered", "verdict", "verdict_sentence")]:
            del figs[key]
    text = render_report(one)
    for anchor in ("headline", "suites", "drift", "classes"):
        assert f'<section id="{anchor}">' in text
    for anchor in ("movers", "items", "layers", "checkpoints"):
        assert f'<section id="{anchor}">' not in text and f'href="#{anchor}"' not in text
    assert "acc. base" not in text and "McNemar" not in text and 'class="verdict' not in text
    assert "same prompts as" not in text  # no items table: nothing to pair by
    one.tables = {}
    text = render_report(one)
    assert '<section id="headline">' in text and 'id="ds-plotly-gz"' in text  # summary-only charts still drawn


def test_one_checkpoint_has_no_trend(run):
    text = render_report(_one_checkpoint(run, "step-100"))
    assert '<section id="checkpoints">' not in text and 'id="chart-trend"' not in text
    assert '<section id="layers">' in text


def test_size_of_a_big_run_and_the_items_cap(run, tmp_path):
    """The real tables tiled to 2,112 items and 6,000+ positions: the page stays small and the explorer capped."""
    copies = 44
    tiled = {k: v for k, v in run.tables.items()}
    for name in ("items", "positions"):
        df = run.tables[name]
        tiled[name] = pl.concat([df.with_columns(pl.col("probe_id") + f"-{i}") for i in range(copies)])
    big = DriftResult(run.summary, tiled, run.meta).to_dir(tmp_path / "big")
    size = write_report(big).stat().st_size
    print(f"\nreport for {tiled['items'].height:,} item rows x {tiled['positions'].height:,} positions: {size / 1e6:.2f} MB")
    assert size < 5_000_000
    assert "Only the worst 2,000 are embedded" in (big / "report.html").read_text(encoding="utf-8")
    data = explorer_data(run.tables["items"], ["step-100", "step-200"], max_rows=5)
    assert data["shown"] == 5 and data["total"] == 48
    keys = [c["key"] for c in data["columns"]]
    assert data["rows"][0][keys.index("correct_change")] == -1  # lost items first
    lost = data["rows"][0]  # "correctness" is the primary metric's, as the verdict's
    assert (lost[keys.index("base_primary_correct")], lost[keys.index("tuned_primary_correct")]) == (True, False)
    assert "Only the worst 5 are embedded" in items_section(data)


def test_items_explorer_columns_follow_the_table(run):
    items = run.tables["items"]
    keys = [c["key"] for c in explorer_data(items, ["step-100", "step-200"])["columns"]]
    assert keys[:6] == ["checkpoint", "suite", "probe_id", "prompt", "answer", "base_answer"]
    assert {"tuned_answer", "tuned_choice", "base_primary_correct", "tuned_primary_correct", "base_correct", "tuned_correct",
            "correct_change", "kl_next", "dlogp_answer"} <= set(keys)
    assert not {"n_positions", "n_prompt_tokens", "logp_answer", "probe_index"} & set(keys)
    bare = items.drop([c for c in items.columns if c.startswith(("base_", "tuned_", "corrected_"))])
    keys = [c["key"] for c in explorer_data(bare, ["step-100"])["columns"]]
    assert "correct_change" not in keys and "tuned_answer" not in keys


def test_escaping_helpers():
    assert script_json({"a": "</script><!--&"}) == '{"a": "\\u003c/script\\u003e\\u003c!--\\u0026"}'
    assert json.loads(script_json({"a": "</script>\u2028"})) == {"a": "</script>\u2028"}
    assert visible(" 42") == "␣42" and visible("\n") == "\\n" and visible("\x00") == "\\x00" and visible("") == "∅ (empty)"


def test_not_a_run_is_a_domain_error(tmp_path):
    with pytest.raises(DriftscopeError):
        write_report(tmp_path)


def test_page_shell_without_charts_has_no_plotly():
    text = page("t", "<h1>t</h1>", [], "<p>x</p>")
    assert 'id="ds-plotly' not in text and "Content-Security-Policy" in text


# -- the index ---------------------------------------------------------------------

def test_index_lists_runs_newest_first(report_run, tmp_path):
    runs = tmp_path / "reports"
    for name, created in (("old run", "2026-01-01T10:00:00+0000"), ("new", "2026-03-01T10:00:00+0000"),
                          ("mid<i>", "2026-02-01T10:00:00+0100")):
        folder = runs / name
        shutil.copytree(report_run["path"], folder)
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        (folder / "meta.json").write_text(json.dumps(dict(meta, name=name, created=created)), encoding="utf-8")
        if name != "new":
            (folder / "report.html").unlink()
    (runs / "broken").mkdir()
    (runs / "broken" / "summary.json").write_text("{not json", encoding="utf-8")
    (runs / "not-a-run").mkdir()
    text = write_index(runs).read_text(encoding="utf-8")
    order = [text.index(s) for s in ('href="new/report.html"', "mid&lt;i&gt;", 'href="old%20run/summary.json"')]
    assert order == sorted(order)
    assert "<i>" not in text and "not-a-run" not in text
    assert "Folders not listed" in text and "broken" in text
    assert "inconclusive" in text and "counting &lt;b&gt;&amp;&lt;/b&gt;" in text
    assert external_refs(parse(text)) == [] and 'id="ds-plotly' not in text


def test_index_of_a_missing_folder_is_a_domain_error(tmp_path):
    with pytest.raises(DriftscopeError):
        write_index(tmp_path / "nope")


# -- a real browser ----------------------------------------------------------------

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-default-apps", "--enable-logging=stderr", "--v=0", "--log-level=0",
                  "--virtual-time-budget=15000"]

# Injected by the test only: once the page has drawn, write what each chart plots
# (plotly's own data after rendering) and the per-suite table's widths into <pre id="ds-probe">.
PROBE = r"""<script>(function(){
  function flat(v){ if (v == null) return []; if (ArrayBuffer.isView(v)) return Array.from(v);
    if (Array.isArray(v)) return v.reduce(function(a, x){ return a.concat(flat(x)); }, []); return [v]; }
  function probe(){
    if (document.documentElement.getAttribute('data-ready') !== '1') { setTimeout(probe, 50); return; }
    var out = {charts: {}};
    document.querySelectorAll('.ds-chart').forEach(function(div){
      out.charts[div.getAttribute('data-chart')] = {
        marks: div.querySelectorAll('.cartesianlayer .trace, .cartesianlayer .hm image').length,
        traces: (div._fullData || []).map(function(t){
          return {type: t.type, meta: t.meta || {}, x: flat(t.x), y: flat(t.y), z: flat(t.z)}; })};
    });
    var wide = document.querySelector('#suites .wide');
    out.suites = {scroll: wide.scrollWidth, client: wide.clientWidth, right: wide.getBoundingClientRect().right, window: window.innerWidth};
    var pre = document.createElement('pre'); pre.id = 'ds-probe'; pre.textContent = JSON.stringify(out);
    document.body.appendChild(pre);
  }
  probe();
})();</script>"""


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


def data_series(run: DriftResult, chart: str, meta: dict) -> np.ndarray | None:
    """The values in the run's tables that a trace with this meta plots (None: a summary figure)."""
    col, label = meta.get("column"), meta.get("checkpoint")
    table = {"kl-ecdf": run.tables["positions"], "class-mass": run.tables["classes"], "layers": run.tables["layers"],
             "components": run.tables["components"], "weights": W.weight_cells(run.tables["weights"])}.get(chart)
    if table is None or col is None:
        return None
    v = column(table, col, label)
    return v[np.isfinite(v)]


def plotted(chart: str, trace: dict) -> np.ndarray:
    axis = "z" if trace["type"] == "heatmap" else ("x" if chart == "kl-ecdf" else "y")
    v = np.array([np.nan if x is None else x for x in trace[axis]], dtype=float)
    return v[np.isfinite(v)]


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)")
def test_report_in_headless_chromium(report_run, text, tmp_path):
    report = report_run["path"] / "report.html"
    expected = set(re.findall(r'<div class="ds-chart" id="([^"]+)"', text))
    assert len(expected) == len(CHARTS)

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
    assert "&lt;script&gt;alert(1)&lt;/script&gt; Q: What is 2 plus 3?" in dom
    assert "alert() was called: 1" not in dom

    shot = tmp_path / "report.png"
    chromium(report, tmp_path, "--hide-scrollbars", "--window-size=1400,2000", f"--screenshot={shot}")
    assert shot.stat().st_size > 20_000
    shutil.copy(shot, SCREENSHOT_COPY)


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)")
def test_every_chart_plots_a_varying_series_where_the_data_varies(run, text, tmp_path):
    """In the browser, after plotly has drawn: each chart's traces hold the values the
    page embedded, a trace of a table column is non-constant wherever that column
    is, and the per-suite table fits a 1,400 px window (nothing cut)."""
    page_file = tmp_path / "probe.html"
    page_file.write_text(text.replace("</body>", PROBE + "</body>", 1), encoding="utf-8")
    done = chromium(page_file, tmp_path, "--dump-dom", "--window-size=1400,2000")
    found = re.search(r'<pre id="ds-probe">(.*?)</pre>', done.stdout, re.S)
    assert found, done.stderr[-3000:]
    probe = json.loads(htmllib.unescape(found.group(1)))
    embedded = charts_of(text)
    assert set(probe["charts"]) == set(CHARTS)
    for name, drawn in probe["charts"].items():
        assert drawn["marks"] >= 1, name
        varying = []
        for tr, spec in zip(drawn["traces"], embedded[name]["data"]):
            assert tr["meta"] == spec.get("meta", {}), name
            values = plotted(name, tr)
            data = data_series(run, name, tr["meta"])
            if data is not None and np.ptp(data) > 0:
                assert np.ptp(values) > 0, (name, tr["meta"])
                assert sorted(values.round(9)) == sorted(data.round(9)) or name in ("class-mass",), (name, tr["meta"])
            varying.append(values.size > 1 and np.ptp(values) > 0)
        assert any(varying), f"{name}: every series is constant"
    suites = probe["suites"]
    assert suites["scroll"] <= suites["client"] and suites["right"] <= suites["window"], suites


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)")
def test_browser_check_catches_requests_and_plain_plotly_works(run, tmp_path):
    """The detector itself: a page that tries to fetch is flagged; plotly.js inline (uncompressed) renders."""
    text = render_report(run, compress_js=False)
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

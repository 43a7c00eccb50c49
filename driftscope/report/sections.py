"""The report's sections, each drawn from summary.json and the run's tables.

A section function returns "" when the run holds none of its data, so a report
shows only what was measured. All run text is escaped by the html helpers.
"""

from __future__ import annotations

import re

import polars as pl

from driftscope.report import figures as F
from driftscope.report import where as W
from driftscope.report.html import Cell, Charts, esc, fmt, num, section, table, visible

STATS = (("mean", "mean"), ("se", "se"), ("median", "median"), ("p90", "p90"), ("p95", "p95"),
         ("p99", "p99"), ("p99_9", "p99.9"), ("max", "max"), ("n", "n"))


def verdict_class(verdict) -> str:
    return "v-" + re.sub(r"[^a-z-]", "", str(verdict).lower()) if verdict else ""


def verdict_box(figs: dict) -> str:
    verdict, sentence = F.get(figs, "verdict"), F.get(figs, "verdict_sentence")
    if not verdict and not sentence:
        return ""
    tag = f'<span class="tag">{esc(verdict)}</span>' if verdict else ""
    return f'<div class="verdict {verdict_class(verdict)}">{tag}{esc(sentence or "")}</div>'


def _card(key: str, val: str, sub: str = "") -> str:
    return f'<div class="card"><div class="k">{esc(key)}</div><div class="v">{esc(val)}</div><div class="s">{esc(sub)}</div></div>'


def headline_cards(f: dict) -> str:
    cards = [
        _card("KL mean", fmt(F.get(f, "kl", "mean")), f"± {fmt(F.get(f, 'kl', 'se'), 2)} (s.e.), nats"),
        _card("KL p99", fmt(F.get(f, "kl", "p99")), f"max {fmt(F.get(f, 'kl', 'max'))}"),
        _card("top-1 agreement", fmt(F.get(f, "top1_agreement"), pct=True), "tuned argmax = base argmax"),
    ]
    if F.value(F.get(f, "accuracy_change")) is not None:
        lo, hi = F.ci(f)
        interval = f"95% CI {fmt(lo, pct=True, signed=True)} to {fmt(hi, pct=True, signed=True)}" if lo is not None else ""
        cards.append(_card("accuracy change", fmt(F.get(f, "accuracy_change"), pct=True, signed=True),
                           f"{fmt(F.get(f, 'accuracy_base'), pct=True)} → {fmt(F.get(f, 'accuracy_tuned'), pct=True)} {interval}"))
    if F.value(F.get(f, "mcnemar_p")) is not None:
        cards.append(_card("McNemar p", fmt(F.get(f, "mcnemar_p"), 2), "paired per-item correctness"))
    numeric = F.get(f, "classes", "numeric")
    if numeric:
        cards.append(_card("numeric-mass shift", fmt(numeric.get("shift"), pct=True, signed=True),
                           f"{fmt(numeric.get('base'), pct=True)} → {fmt(numeric.get('tuned'), pct=True)}"))
    if "recovered" in f:
        cards.append(_card("recovered", fmt(F.get(f, "recovered"), pct=True), "of the drop, by removing the output shift"))
    share = F.get(f, "kl_split", "between_share")
    if F.value(share) is not None:
        cards.append(_card("between-class share", fmt(share, pct=True), "of KL is a change of output type"))
    return '<div class="cards">' + "".join(cards) + "</div>"


def _model_line(m: dict) -> str:
    extra = ", ".join(f"{k} {m[k]}" for k in ("kind", "fingerprint") if m.get(k))
    return f"{m.get('path', m.get('label', '?'))}" + (f" ({extra})" if extra else "")


def run_facts(summary: dict, meta: dict) -> str:
    models = summary.get("models", {})
    rows = [("base", _model_line(models.get("base", {})))]
    rows += [(f"tuned: {t.get('label', i + 1)}", _model_line(t)) for i, t in enumerate(models.get("tuned", []))]
    for s in summary.get("suites", []):
        rows.append((f"suite: {s.get('name')}", f"v{s.get('version', '?')}, {s.get('n_probes', '?')} probes"
                     f" ({s.get('n_with_answer', '?')} with answers), hash {str(s.get('hash', ''))[:12]}"
                     + (f" — {s['description']}" if s.get("description") else "")))
    settings = summary.get("settings", {})
    if settings:
        rows.append(("settings", ", ".join(f"{k}={v}" for k, v in settings.items() if v not in ({}, None, ""))))
    if meta.get("created"):
        rows.append(("created", f"{meta['created']}" + (f", took {meta['seconds']} s" if meta.get("seconds") else "")))
    if summary.get("driftscope_version"):
        rows.append(("driftscope", f"{summary['driftscope_version']} (schema {summary.get('schema_version')})"))
    return '<dl class="meta">' + "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in rows) + "</dl>"


def headline(summary: dict, meta: dict) -> str:
    parts = []
    for c in summary.get("checkpoints", []):
        f = c.get("figures", {})
        kind = f' <span class="note">{esc(c["kind"])}</span>' if c.get("kind") else ""
        parts.append(f'<div class="ckpt"><h3 title="{esc(c.get("path", ""))}">{esc(c.get("label"))}{kind}</h3>'
                     f"{verdict_box(f)}{headline_cards(f)}{_continuation_note(f)}</div>")
    return section("headline", "Verdict and headline", "".join(parts) + "<h3>What produced these figures</h3>" + run_facts(summary, meta))


def _continuation_note(f: dict) -> str:
    """One line on the continuation positions (--continue), the terminal's line."""
    if not f.get("continuation"):
        return ""
    from driftscope.continuation import sentence

    return f'<p class="note">Later: {esc(sentence(f["continuation"]))}.</p>'


def _class_shifts(sf: dict, top: int = 2) -> str:
    shifts = [(k, F.value(v.get("shift"))) for k, v in F.get(sf, "classes", default={}).items() if isinstance(v, dict)]
    shifts = sorted([s for s in shifts if s[1] is not None], key=lambda s: -abs(s[1]))[:top]
    return ", ".join(f"{k} {fmt(v, pct=True, signed=True)}" for k, v in shifts) or "—"


def shared_prompts(items: pl.DataFrame | None) -> list[tuple[list[str], int]]:
    """Groups of suites that ask exactly the same prompts (e.g. a free-answer and a
    multiple-choice version of the same questions), with the number of prompts."""
    if items is None or items.height == 0 or not {"checkpoint", "suite", "prompt"} <= set(items.columns):
        return []
    first = items.filter(pl.col("checkpoint") == items["checkpoint"][0])
    sets: dict[frozenset, list[str]] = {}
    for suite in first["suite"].unique(maintain_order=True).to_list():
        sets.setdefault(frozenset(first.filter(pl.col("suite") == suite)["prompt"].to_list()), []).append(str(suite))
    return [(names, len(prompts)) for prompts, names in sets.items() if len(names) > 1]


def _pairing_note(groups: list[tuple[list[str], int]]) -> str:
    if not groups:
        return ""
    lines = "; ".join(f"{' and '.join(names)} ask the same {n} prompt{'s' if n != 1 else ''}" for names, n in groups)
    return (f'<p class="note">{esc(lines)} (for example a free-answer and a multiple-choice version of the same questions). '
            "Drift is measured on the prompt and its gold answer, so their drift columns match wherever the gold answers "
            "do; what tells them apart is how an answer is scored (free text or among choices). The column "
            "\u201csame prompts as\u201d marks them.</p>")


def suites_section(summary: dict, items: pl.DataFrame | None = None) -> str:
    pairs = [(c, s, sf) for c in summary.get("checkpoints", []) for s, sf in F.get(c, "figures", "suites", default={}).items()]
    if not pairs:
        return ""
    groups = shared_prompts(items)
    twin = {s: [o for o in names if o != s] for names, _ in groups for s in names}
    has_acc = any(F.value(F.get(sf, "accuracy_change")) is not None for _, _, sf in pairs)
    has_verdict = any(F.get(sf, "verdict") for _, _, sf in pairs)
    several = len(summary.get("checkpoints", [])) > 1
    headers = (["checkpoint"] if several else []) + ["suite", "probes"] + (["same prompts as"] if twin else [])
    if has_acc:
        headers += ["acc. base", "acc. tuned", "change (95% CI)", "McNemar p", "recovered"]
    headers += ["KL mean", "KL p99", "top-1 agree", "numeric shift", "class shifts", "between share"]
    headers += ["verdict"] if has_verdict else []
    rows = []
    for c, s, sf in pairs:
        row = ([c.get("label")] if several else []) + [s, num(F.get(sf, "n_probes"))]
        row += [", ".join(twin.get(s, [])) or "—"] if twin else []
        if has_acc:
            lo, hi = F.ci(sf)
            row += [num(F.get(sf, "accuracy_base"), pct=True), num(F.get(sf, "accuracy_tuned"), pct=True),
                    Cell(fmt(F.get(sf, "accuracy_change"), pct=True, signed=True)
                         + (f"\n({lo * 100:+.1f} … {hi * 100:+.1f})" if lo is not None and hi is not None else ""),
                         F.value(F.get(sf, "accuracy_change")), "ci"),
                    num(F.get(sf, "mcnemar_p"), digits=2), num(F.get(sf, "recovered"), pct=True)]
        row += [num(F.get(sf, "kl", "mean")), num(F.get(sf, "kl", "p99")), num(F.get(sf, "top1_agreement"), pct=True),
                num(F.get(sf, "classes", "numeric", "shift"), pct=True, signed=True), Cell(_class_shifts(sf), None, "shifts"),
                num(F.get(sf, "kl_split", "between_share"), pct=True)]
        if has_verdict:
            v = F.get(sf, "verdict")
            row.append(Cell(str(v) if v else "—", None, verdict_class(v)))
        rows.append(row)
    lead = "One row per suite" + (" and checkpoint" if several else "") + "; click a header to sort."
    return section("suites", "Per suite", table(headers, rows, cls="sortable suites") + _pairing_note(groups), lead)


def drift_section(summary: dict, positions: pl.DataFrame | None, charts: Charts) -> str:
    labels = F.labels_of(summary)
    hist = charts.add("kl-ecdf", F.kl_ecdf(positions, labels))
    rows = []
    for c in summary.get("checkpoints", []):
        for metric, name in (("kl", "KL(base‖tuned)"), ("kl_reverse", "KL(tuned‖base)"), ("js", "JS")):
            st = F.get(c, "figures", metric)
            if isinstance(st, dict):
                rows.append([c.get("label"), name] + [num(st.get(k), digits=4 if k == "n" else 3) for k, _ in STATS])
    pct = table(["checkpoint", "divergence"] + [n for _, n in STATS], rows) if rows else ""
    top1 = charts.add("top1", F.top1_by_suite(summary))
    if not (hist or pct or top1):
        return ""
    return section("drift", "Distribution drift", hist + pct + top1,
                   "How far each tuned model's next-token distribution moved from the base, over every scored position (nats).")


def classes_section(summary: dict, classes: pl.DataFrame | None, charts: Charts) -> str:
    mass = charts.add("class-mass", F.class_mass(classes, F.labels_of(summary)))
    rows = []
    for c in summary.get("checkpoints", []):
        for name, v in F.get(c, "figures", "classes", default={}).items():
            if isinstance(v, dict):
                rows.append([c.get("label"), name, num(v.get("base"), pct=True), num(v.get("tuned"), pct=True),
                             num(v.get("shift"), pct=True, signed=True), num(v.get("shift_se"), pct=True),
                             num(v.get("log_odds_shift"), signed=True)])
    shifts = table(["checkpoint", "class", "base mass", "tuned mass", "shift", "s.e.", "log-odds shift"], rows) if rows else ""
    split = charts.add("kl-split", F.kl_split(summary))
    if not (mass or shifts or split):
        return ""
    note = ('<p class="note">KL(p‖q) = KL over the classes (a change of output type) + the mass-weighted KL inside each '
            "class (a change of content). A high between-class share means the model mostly changed what kind of token it emits.</p>")
    return section("classes", "Token classes", mass + shifts + (split + note if split else ""),
                   "Mean probability mass per token class at the scored positions.")


def movers_section(summary: dict, tokens: pl.DataFrame | None, top: int = 20) -> str:
    need = {"direction", "text", "p_mean", "q_mean", "delta"}
    if tokens is None or tokens.height == 0 or not need <= set(tokens.columns):
        return ""
    parts = []
    for lb, df in F.checkpoint_groups(tokens, F.labels_of(summary)):
        biggest = max((abs(F.value(d) or 0) for d in df["delta"].to_list()), default=0) or 1
        halves = []
        for direction, title in (("gain", "gained most"), ("loss", "lost most")):
            sub = df.filter(pl.col("direction") == direction)
            sub = sub.sort("rank") if "rank" in sub.columns else sub.sort("delta", descending=direction == "gain")
            rows = []
            for i, r in enumerate(sub.head(top).iter_rows(named=True), start=1):
                d = F.value(r["delta"]) or 0
                width = max(1, round(60 * abs(d) / biggest))
                bar = f'<span class="bar {"up" if d > 0 else "down"}" style="width:{width}px"></span>'
                rows.append(f'<tr><td class="num">{i}</td><td class="tok">{esc(visible(r["text"]))}</td>'
                            f'<td class="num">{esc(r.get("token_id", ""))}</td><td class="num">{esc(fmt(r["p_mean"]))}</td>'
                            f'<td class="num">{esc(fmt(r["q_mean"]))}</td><td class="num">{bar}{esc(fmt(d, signed=True))}</td></tr>')
            head = "".join(f"<th>{h}</th>" for h in ("#", "token", "id", "base p", "tuned p", "Δ"))
            halves.append(f'<div><h3>{esc(lb)}: {title}</h3><table><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>')
        parts.append('<div class="row">' + "".join(halves) + "</div>")
    return section("movers", "Token movers", "".join(parts),
                   "Tokens whose mean probability over all scored positions rose or fell the most. "
                   "␣ is a space, \\n a newline.")


def layers_section(summary: dict, tables: dict[str, pl.DataFrame], charts: Charts) -> str:
    labels = F.labels_of(summary)
    parts = [charts.add("layers", W.layer_lines(tables.get("layers"), labels)),
             charts.add("components", W.component_heatmap(tables.get("components"), labels)),
             charts.add("weights", W.weight_heatmap(tables.get("weights"), labels))]
    if not any(parts):
        return ""
    return section("layers", "Layers, components and weights", "".join(parts),
                   "Where in the network the tuned model differs: the residual stream and the logit lens per layer, "
                   "the change of each attention and MLP block's direct contribution to the logits (one colour scale "
                   "for all checkpoints), and the relative change of the weights (colour scaled per checkpoint).")


def correlations(summary: dict) -> str:
    """Pearson and Spearman of accuracy change against drift, across suites and checkpoints."""
    from scipy import stats

    pts = F.drift_accuracy_points(summary)
    rows = []
    for key, name in (("kl", "KL mean"), ("numeric", "numeric-mass shift")):
        xy = [(p[key], p["acc"]) for p in pts if p[key] is not None]
        if len(xy) < 3 or len({x for x, _ in xy}) < 2 or len({y for _, y in xy}) < 2:
            continue
        x, y = zip(*xy)
        rows.append([f"accuracy change vs {name}", num(len(xy), digits=4),
                     num(stats.pearsonr(x, y)[0], signed=True), num(stats.spearmanr(x, y)[0], signed=True)])
    if not rows:
        return ""
    return "<h3>Correlation between drift and accuracy</h3>" + table(["pair", "points", "Pearson r", "Spearman ρ"], rows,
                                                                     caption="one point per checkpoint and suite")


def checkpoints_section(summary: dict, charts: Charts) -> str:
    trend = charts.add("trend", F.checkpoint_trend(summary))
    if not trend:
        return ""
    scatter = charts.add("drift-acc", F.drift_vs_accuracy(summary))
    _, _, how = F.checkpoint_order(F.labels_of(summary))
    return section("checkpoints", "Along the checkpoints", trend + scatter + correlations(summary),
                   f"Drift and accuracy for each tuned checkpoint of the run, {how}.")

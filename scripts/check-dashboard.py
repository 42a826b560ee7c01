#!/usr/bin/env python3
"""Keeps the dashboard, the alert rules and the metrics reference true to src/metrics.rs.

Checks, with the standard library only (scripts/check-prometheus.sh runs it):
  - deploy/grafana/hookbridge.json is JSON, has the `datasource` (prometheus), `source` and
    `sink` variables, and every panel queries through `${datasource}`;
  - every PromQL expression in the dashboard (panel targets and variable queries) and in
    deploy/prometheus/alerts.yml names only metrics that src/metrics.rs exports
    (histograms as `_bucket`/`_sum`/`_count`), only labels those metrics carry (plus `le` on
    buckets, and the `instance`/`job` that Prometheus adds), and only `outcome`/`reason`/
    `decision`/`by`/`result`/`backend` values that appear as string literals in src/;
  - every alert has labels.severity, annotations summary and runbook_url, and the runbook_url's
    anchor is a heading of docs/runbooks.md;
  - docs/metrics.md mentions every exported metric.
So a renamed metric, label or reason code fails CI instead of leaving an empty panel or an
alert that can never fire.

  --promql-rules FILE  also write the dashboard's expressions, Grafana variables replaced by
                       plain values, as recording rules to FILE, for `promtool check rules` to
                       parse them with Prometheus's own parser.
"""

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
METRICS_RS = ROOT / "src" / "metrics.rs"
DASHBOARD = ROOT / "deploy" / "grafana" / "hookbridge.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
RUNBOOKS = ROOT / "docs" / "runbooks.md"
METRICS_MD = ROOT / "docs" / "metrics.md"

# Labels Prometheus attaches to every scraped series.
TARGET_LABELS = {"instance", "job"}
# Labels whose values are fixed codes in the source, checked against its string literals.
VALUE_CHECKED = {"outcome", "reason", "decision", "by", "result", "backend"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
# Prometheus's own series that rules may use.
PROMETHEUS_SERIES = {"up": {"instance", "job"}}

problems = []


def problem(where, msg):
    problems.append(f"{where}: {msg}")


def macro_calls(text):
    """(kind, first argument, label keys) of every metrics::counter!/gauge!/histogram! call."""
    for m in re.finditer(r"\bmetrics::(counter|gauge|histogram)!\s*\(", text):
        depth, i = 1, m.end()
        while depth and i < len(text):
            depth += {"(": 1, ")": -1}.get(text[i], 0)
            i += 1
        args = text[m.end() : i - 1]
        first = args.split(",", 1)[0].strip()
        yield m.group(1), first, set(re.findall(r'"(\w+)"\s*=>', args))


def exported_metrics():
    """name -> (type, labels) from src/metrics.rs."""
    text = METRICS_RS.read_text()
    consts = dict(re.findall(r'const\s+(\w+)\s*:\s*&str\s*=\s*"([a-zA-Z_:][a-zA-Z0-9_:]*)"', text))
    metrics = {}
    for kind, first, labels in macro_calls(text):
        name = first.strip('"') if first.startswith('"') else consts.get(first)
        if name is None:
            problem(METRICS_RS.relative_to(ROOT), f"cannot resolve the metric name {first}")
            continue
        old_kind, old_labels = metrics.get(name, (kind, set()))
        if old_kind != kind:
            problem(METRICS_RS.relative_to(ROOT), f"{name} is recorded as both {old_kind} and {kind}")
        metrics[name] = (kind, old_labels | labels)
    for name in consts.values():
        if name not in metrics:
            problem(METRICS_RS.relative_to(ROOT), f"{name} is defined but never recorded")
    return metrics


def source_literals():
    words = set()
    for path in (ROOT / "src").rglob("*.rs"):
        words.update(re.findall(r'"([a-z0-9_]+)"', path.read_text()))
    return words


STRING = r'"(?:[^"\\]|\\.)*"'
MATCHER = re.compile(r'([a-zA-Z_]\w*)\s*(=~|!~|!=|=)\s*(' + STRING + ")")
SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)?\s*\{([^{}]*)\}")
GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)")
IDENT = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def series_of(token, metrics):
    """(base metric, its labels) for a series name, or None when hookbridge does not export it."""
    if token in PROMETHEUS_SERIES:
        return token, PROMETHEUS_SERIES[token] - TARGET_LABELS
    if token in metrics:
        kind, labels = metrics[token]
        return (None if kind == "histogram" else (token, labels))
    for suffix in HISTOGRAM_SUFFIXES:
        base = token[: -len(suffix)]
        if token.endswith(suffix) and metrics.get(base, ("",))[0] == "histogram":
            return base, metrics[base][1] | ({"le"} if suffix == "_bucket" else set())
    return None


def check_expr(where, expr, metrics, literals):
    # Metric names: identifiers outside strings. Only hookbridge's namespace and `up` are series
    # here; everything else is a function, keyword, label or duration.
    bare = re.sub(STRING, '""', expr)
    used, unknown = {}, set()
    for token in IDENT.findall(bare):
        if token.startswith("hookbridge_") or token in PROMETHEUS_SERIES:
            found = series_of(token, metrics)
            if found is None:
                unknown.add(token)
            else:
                used[token] = found[1] | TARGET_LABELS
    for token in sorted(unknown):
        hint = " (a histogram: use _bucket, _sum or _count)" if token in metrics else ""
        problem(where, f"{token} is not exported by src/metrics.rs{hint}")
    if unknown:
        return used  # its labels cannot be checked against a metric that does not exist
    if not used:
        problem(where, "references no hookbridge metric")
        return used
    known = set().union(*used.values())
    # Label matchers, against the labels of the metric they select.
    for sel in SELECTOR.finditer(expr):
        name = sel.group(1)
        labels = used.get(name, known)
        for label, op, value in MATCHER.findall(sel.group(2)):
            if label == "__name__":
                continue
            if label not in labels:
                problem(where, f"label {label} is not a label of {name or 'these metrics'}")
            if label in VALUE_CHECKED:
                raw = json.loads(value)
                alternatives = raw.split("|") if op in ("=~", "!~") else [raw]
                for alt in alternatives:
                    if re.fullmatch(r"[a-z0-9_]+", alt) and alt not in literals:
                        problem(where, f'{label}="{alt}" appears nowhere in src/ as a value')
    # Aggregation and matching labels.
    for _, inner in GROUPING.findall(bare):
        for label in filter(None, (l.strip() for l in inner.split(","))):
            if label not in known:
                problem(where, f"groups by {label}, which none of its metrics carry")
    return used


def check_dashboard(metrics, literals):
    rel = DASHBOARD.relative_to(ROOT)
    try:
        dash = json.loads(DASHBOARD.read_text())
    except json.JSONDecodeError as e:
        problem(rel, f"not JSON: {e}")
        return []
    variables = {v.get("name"): v for v in dash.get("templating", {}).get("list", [])}
    ds = variables.get("datasource", {})
    if ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        problem(rel, "needs a `datasource` variable of type datasource, query prometheus")
    for name in ("source", "sink"):
        if name not in variables:
            problem(rel, f"needs a `{name}` variable")
    exprs = []
    for name, var in variables.items():
        if var.get("type") != "query":
            continue
        query = var.get("query")
        query = query.get("query", "") if isinstance(query, dict) else query or ""
        m = re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\s*\)\s*", query)
        where = f"{rel}: variable {name}"
        if not m:
            problem(where, f"expected label_values(metric, label), got {query!r}")
            continue
        used = check_expr(where, m.group(1), metrics, literals)
        if used and not any(m.group(2) in labels for labels in used.values()):
            problem(where, f"label {m.group(2)} is not a label of {m.group(1)}")

    def panels(items):
        for p in items:
            yield p
            yield from panels(p.get("panels", []))

    ids = set()
    for p in panels(dash.get("panels", [])):
        where = f"{rel}: panel {p.get('id')} {p.get('title')!r}"
        if p.get("id") in ids:
            problem(where, "duplicate panel id")
        ids.add(p.get("id"))
        if p.get("type") == "row":
            continue
        targets = p.get("targets") or []
        if not targets:
            problem(where, "has no query")
        for t in [p] + targets:
            uid = (t.get("datasource") or {}).get("uid")
            if uid != "${datasource}":
                problem(where, f"datasource uid is {uid!r}, not ${{datasource}}")
        for t in targets:
            expr = t.get("expr", "")
            check_expr(f"{where} {t.get('refId')}", expr, metrics, literals)
            exprs.append((p.get("id"), t.get("refId"), expr))
    return exprs


def heading_anchors(path):
    """GitHub's anchors for the Markdown headings of path."""
    anchors = set()
    for line in path.read_text().splitlines():
        m = re.match(r"#+\s+(.*)", line)
        if m:
            text = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower())
            anchors.add(text.replace(" ", "-"))
    return anchors


def alert_rules(text):
    """(name, expr, block text) per `- alert:` entry; expr single-line or a `|` block."""
    blocks = re.split(r"(?m)^(?=\s*- alert:)", text)[1:]
    for block in blocks:
        name = re.search(r"- alert:\s*(\S+)", block).group(1)
        lines = block.splitlines()
        expr = None
        for i, line in enumerate(lines):
            m = re.match(r"(\s*)expr:\s*(.*)$", line)
            if not m:
                continue
            if m.group(2).strip() in ("|", ">", "|-", ">-"):
                indent = len(m.group(1))
                body = []
                for more in lines[i + 1 :]:
                    if more.strip() and len(more) - len(more.lstrip()) <= indent:
                        break
                    body.append(more.strip())
                expr = " ".join(body)
            else:
                expr = m.group(2).strip().strip("'")
            break
        yield name, expr, block


def check_alerts(metrics, literals):
    rel = ALERTS.relative_to(ROOT)
    anchors = heading_anchors(RUNBOOKS) if RUNBOOKS.exists() else set()
    if not anchors:
        problem(RUNBOOKS.relative_to(ROOT), "missing or without headings")
    count = 0
    for name, expr, block in alert_rules(ALERTS.read_text()):
        count += 1
        where = f"{rel}: {name}"
        if not expr:
            problem(where, "no expr")
        else:
            check_expr(where, expr, metrics, literals)
        if not re.search(r"(?m)^\s*severity:\s*(critical|warning|info)\s*$", block):
            problem(where, "labels.severity must be critical, warning or info")
        if not re.search(r"(?m)^\s*summary:", block):
            problem(where, "no summary annotation")
        url = re.search(r'(?m)^\s*runbook_url:\s*"?([^"\s]+)"?', block)
        if not url:
            problem(where, "no runbook_url annotation")
        elif url.group(1).split("#")[-1] not in anchors:
            problem(where, f"runbook_url {url.group(1)} names no heading of docs/runbooks.md")
    if not count:
        problem(rel, "no alerts found")
    return count


def check_metrics_doc(metrics):
    """docs/metrics.md's reference table has one row per exported metric, and no other."""
    rel = METRICS_MD.relative_to(ROOT)
    text = METRICS_MD.read_text() if METRICS_MD.exists() else ""
    rows = set(re.findall(r"(?m)^\|\s*`(hookbridge_\w+)`\s*\|", text))
    for name in sorted(set(metrics) - rows):
        problem(rel, f"{name} has no row in the metrics table")
    for name in sorted(rows - set(metrics)):
        problem(rel, f"{name} is in the metrics table but not exported by src/metrics.rs")


def write_rules(path, exprs):
    """Dashboard expressions as recording rules; Grafana's variables become plain values."""
    out = ["# Generated by scripts/check-dashboard.py for `promtool check rules`.", "groups:",
           "  - name: hookbridge-dashboard", "    rules:"]
    for pid, ref, expr in exprs:
        expr = expr.replace("$__rate_interval", "5m").replace("$__range", "1h")
        expr = expr.replace("$__interval", "1m")
        expr = re.sub(r"\$\{?\w+\}?", ".*", expr)  # $source inside a matcher: everything
        out.append(f"      - record: dashboard:panel_{pid}_{ref}")
        out.append(f"        expr: {json.dumps(expr)}")
    Path(path).write_text("\n".join(out) + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--promql-rules", metavar="FILE")
    args = parser.parse_args()
    metrics = exported_metrics()
    literals = source_literals()
    exprs = check_dashboard(metrics, literals)
    alerts = check_alerts(metrics, literals)
    check_metrics_doc(metrics)
    for p in problems:
        print(p, file=sys.stderr)
    if problems:
        print(f"check-dashboard: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    if args.promql_rules:
        write_rules(args.promql_rules, exprs)
    print(f"ok -- {len(exprs)} dashboard queries and {alerts} alerts use only the "
          f"{len(metrics)} metrics of src/metrics.rs, with their labels and values")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Turns one bench/run.sh result directory into docs/benchmarks.md (printed to stdout).

The hand-written sections of the current docs/benchmarks.md ("Interleaved with the floor",
"Worst-case unauthenticated request", "Tracing" and "What the numbers say") are carried over as
they are."""
import json, os, platform, re, subprocess, sys

out = sys.argv[1]
def j(name):
    p = os.path.join(out, name + ".json")
    return json.load(open(p)) if os.path.exists(p) else None
def txt(name):
    p = os.path.join(out, name + ".txt")
    return open(p).read() if os.path.exists(p) else ""
def cmd(c):
    try:
        return subprocess.run(c, shell=True, capture_output=True, text=True, timeout=20).stdout.strip()
    except Exception:
        return "?"
def f(x, d=0):
    return "–" if x is None else f"{x:,.{d}f}"
def us(x):
    return f(x, 1) if x is not None and x < 100 else f(x)
def g(d, k):
    return d.get(k) if d else None

meta = j("meta") or {}
S, L = meta.get("server_cpu", "?"), meta.get("load_cpu", "?")
rounds = meta.get("rounds", 1)
prof = meta.get("profile", os.environ.get("PROFILE", "production"))
conns = meta.get("connections", 64)
fixed_rate = meta.get("fixed_rate", 2000)

SCHEMES = {"hmac": "HMAC-SHA256", "standard": "Standard Webhooks", "cobo": "Cobo WaaS2 (Ed25519)"}
SINKS = {"file": "file", "kafka": "Kafka (acks=all)", "rabbitmq": "RabbitMQ (confirms)"}
CLIENTS = {"kafka": ("floor-kafka", "bare rdkafka"), "rabbitmq": ("floor-rabbitmq", "bare lapin")}
PATHS = [("file", "hmac"), ("file", "standard"), ("file", "cobo"), ("kafka", "standard"),
         ("kafka", "cobo"), ("rabbitmq", "standard"), ("rabbitmq", "cobo")]
# The ratio target: server CPU per request ≤ this many times the floor.
LIMIT = {"hmac": 2.0, "standard": 2.0, "cobo": 1.25}

def floor(sink, scheme, r):
    """(µs per request, what it is made of) for one path in round r, or (None, why)."""
    v = j(f"floor-verify-{scheme}-r{r}")
    verify = g(v, "server_cpu_us_per_req")
    if verify is None:
        return None, "no http+verify floor"
    parts = [f"http+verify {us(verify)}"]
    total = verify
    if sink in CLIENTS:
        name, label = CLIENTS[sink]
        c = g(j(f"{name}-r{r}"), "client_cpu_us_per_msg")
        if c is None:
            return None, f"no {label} floor"
        parts.append(f"{label} {us(c)}")
        total += c
    return total, " + ".join(parts)

def path_row(sink, scheme, r):
    """The run, its CPU per request, the sum-of-parts floor (and what it is made of) and the
    ratio to it, the one-process floor and the ratio to that."""
    d = j(f"pin-{sink}-{scheme}-r{r}")
    fl, made = floor(sink, scheme, r)
    cpu = g(d, "server_cpu_us_per_req")
    ratio = cpu / fl if cpu and fl else None
    one = g(j(f"floor1-{sink}-{scheme}-r{r}"), "server_cpu_us_per_req")
    ratio1 = cpu / one if cpu and one else None
    return d, cpu, fl, made, ratio, one, ratio1

def judged(sink, row):
    """The ratio a path's target is judged by: the one-process floor for a broker sink (the
    minimal server, the check and the bare client, measured together), the sink-less floor
    the issue set for the file sink."""
    return row[6] if sink in CLIENTS else row[4]

def x(v):
    return "–" if v is None else f"{v:.2f}×"

def rps_cell(d):
    if not d:
        return "–"
    s = f(d["rps"])
    if d.get("server_busy") is not None and d["server_busy"] < 0.9:
        s += " †"
    if d["ok"] != d["requests"]:
        s += f" ({d['requests'] - d['ok']:,} not 2xx!)"
    return s

lines = []
p = lines.append
p("# Benchmarks")
p("")
p(f"Produced by `bench/run.sh` (results in `{out}`), commit {meta.get('commit', '?')}. Processes are pinned:")
p(f"**CPU {S}** runs only the server under test (hookbridge, the floor servers, the bare broker clients")
p(f"standing in for hookbridge's broker client, the Python baseline); **CPU {L}** runs the load generator,")
p("RabbitMQ (beam.smp, every thread) and tansu. So a server's CPU per request and its req/s are per core, and")
p("the floors beside them were measured in the same run, on the same core, the same way.")
p("")
mem_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30)
p(f"- machine: {os.cpu_count()} cores (online {meta.get('all_cpus', '?')}), {mem_gib} GiB, {platform.platform()}; "
  f"load average {meta.get('loadavg_start', '?')} at the start, {meta.get('loadavg_end', '?')} at the end")
tansu = cmd("tansu --version")
p(f"- {cmd('rustc --version')}; {cmd(f'target/{prof}/hookbridge --version')} (`{prof}` profile); "
  f"tansu {tansu.split()[-1] if tansu else '?'} (memory storage); RabbitMQ {cmd('rabbitmqctl version 2>/dev/null')}")
p(f"- load: closed loop, {conns} keep-alive connections, up to {f(meta.get('events'))} distinct pre-signed events "
  f"or {meta.get('secs', '?')} s per run, ~1.2 KB Cobo-style JSON bodies; `--quiet` load generator, one thread"
  + (" (QUICK=1: a smoke run, the numbers mean little)" if meta.get("quick") else ""))
p("- hookbridge: audit log on (JSON lines to a file), edge dedup on (memory), spool on for broker sinks")
p("")

# ---------------------------------------------------------------- the pinned table
for r in range(1, rounds + 1):
    p("## Pinned, one core for the server" + (f" (round {r} of {rounds})" if rounds > 1 else ""))
    p("")
    p("| path | req/s per core | server µs/request | floor µs/request (what it is made of) | ratio | one-process floor µs | ratio |")
    p("|---|---|---|---|---|---|---|")
    for sink, scheme in PATHS:
        d, cpu, fl, made, ratio, one, ratio1 = path_row(sink, scheme, r)
        p(f"| {SCHEMES[scheme]} → {SINKS[sink]} | {rps_cell(d)} | {us(cpu)} | {us(fl)} ({made}) | "
          f"{x(ratio)} | {us(one)} | {x(ratio1)} |")
    p("")
p(f"Server µs/request: the server process's CPU ticks (user + system, every thread) over the run /")
p("requests. Floors: `hookbridge-loadgen http-ceiling` (a minimal warp server) loaded the same way, with")
p("`--verify-with bench/hookbridge-file.toml` (hookbridge's own verifier for the path's source, 401 on")
p(f"failure; every floor request got a 2xx), plus the bare broker client's own CPU per message, pinned on")
p(f"CPU {S}, {conns} in flight (rdkafka acks=all idempotent; lapin confirms, persistent, 8 channels).")
p("One-process floor: the same minimal server, which after the check publishes the body with the bare")
p("client and answers once the broker confirmed it (`--publish-kafka`, `--publish-rabbitmq`), or appends")
p("it to a file and answers once synced (`--publish-file`: group commit, a `write` and an `fdatasync` per")
p("batch), loaded the same way: the broker then shares the load core with the load generator, as it does")
p("while hookbridge runs, where the bare client above was measured with the broker alone on that core.")
p("† the server's core was under 90 % busy: the load core set the rate, and 10⁶ / µs per request is the")
p("rate one full core would give.")
p("")

# ---------------------------------------------------------------- targets
def status(values, ok):
    vals = [v for v in values if v is not None]
    if not vals:
        return "–"
    met = [ok(v) for v in vals]
    return "met" if all(met) else ("missed" if not any(met) else "mixed (met in some rounds)")

p("## Targets")
p("")
p("| target | measured | |")
p("|---|---|---|")
for sink, scheme in PATHS:
    lim = LIMIT[scheme]
    rows = [path_row(sink, scheme, r) for r in range(1, rounds + 1)]
    ratios = [judged(sink, row) for row in rows]
    shown = " / ".join(x(v) for v in ratios)
    if sink in CLIENTS:
        what = "the one-process floor"
        shown += f" (sum of parts: {' / '.join(x(row[4]) for row in rows)})"
    else:
        what = "the floor"
        shown += f" (with a durable append: {' / '.join(x(row[6]) for row in rows)})"
    p(f"| {SCHEMES[scheme]} → {SINKS[sink]}: server CPU ≤ {lim:g}× {what} | {shown} | {status(ratios, lambda v: v <= lim)} |")
for name, label in [("hb-file-2000rps", "file"), ("hb-spool-2000rps", "broker down, spool"), ("hb-kafka-2000rps", "Kafka")]:
    d = j(name)
    v = g(d, "p99_ms")
    extra = f" ({f(d['rps'])} req/s achieved)" if d else ""
    p(f"| p99 ≤ 5 ms at a fixed {f(fixed_rate)} req/s, {label} (Cobo) | {f(v, 2)} ms{extra} | {status([v], lambda x: x <= 5)} |")
rss = g(j("hb-file-1000conns"), "server_peak_rss_mb")
p(f"| RSS ≤ 64 MB with 1,000 keep-alive connections under load | {f(rss)} MB | {status([rss], lambda x: x <= 64)} |")
run_s = meta.get("run_s")
if run_s is not None:
    b = meta.get("build_s", 0)
    build = "build skipped" if meta.get("skip_build") else f"build {b // 60} min {b % 60:02d} s"
    p(f"| the whole run (without the build) in under 15 minutes | {run_s // 60} min {run_s % 60:02d} s"
      f" ({build}{', QUICK=1' if meta.get('quick') else ''}) | {status([run_s], lambda x: x < 900)} |")
p("")

# ---------------------------------------------------------------- callgrind
p("## Instructions per request (callgrind)")
p("")
cg = txt("callgrind").strip()
cg_lines = [l for l in cg.splitlines() if l.startswith("#") or "per request" in l]
if any("per request" in l for l in cg_lines):
    p(f"`SKIP_BUILD=1 EVENTS={meta.get('callgrind_events', 2000)} bench/callgrind.sh hmac standard cobo`: file sink,")
    p("hookbridge's instructions over the requests (after a 300-request warm-up) / requests. The one figure")
    p("here that does not move with whatever else runs on the machine, except Cobo's: its requests share")
    p("Ed25519 batches as they happen to arrive together (8 connections here), so it moves by a few per cent.")
    p("")
    p("```")
    lines.extend(cg_lines)
    p("```")
else:
    p("Not measured in this run" + (f": {cg.splitlines()[-1]}" if cg else "."))
p("")

# ---------------------------------------------------------------- details
p("## Floors")
p("")
p(f"Same core (CPU {S}), same load, same run as the table above.")
p("")
p("| floor | round | rate /s | CPU µs per request or message | notes |")
p("|---|---|---|---|---|")
for r in range(1, rounds + 1):
    d = j(f"floor-http-r{r}")
    if d:
        p(f"| minimal warp server, no verification | {r} | {f(d['rps'])} | {f(d.get('server_cpu_us_per_req'), 1)} | p99 {f(d['p99_ms'], 2)} ms |")
    for scheme in SCHEMES:
        d = j(f"floor-verify-{scheme}-r{r}")
        if d:
            p(f"| warp + hookbridge's verifier, {SCHEMES[scheme]} | {r} | {f(d['rps'])} | {f(d.get('server_cpu_us_per_req'), 1)} | "
              f"{f(d['ok'])} of {f(d['requests'])} 2xx, p99 {f(d['p99_ms'], 2)} ms |")
    for sink, (name, label) in CLIENTS.items():
        d = j(f"{name}-r{r}")
        if d:
            p(f"| {label}, {conns} in flight | {r} | {f(d['rate'])} | {f(d.get('client_cpu_us_per_msg'), 1)} | "
              f"{f(d['messages'])} confirmed; broker {f(d.get('broker_cpu_us_per_msg'))} µs/msg on CPU {L} |")
p("")

p("## Both cores, per run")
p("")
p(f"Server core (CPU {S}): how busy the server kept it while the load ran, and what the rest of the machine")
p(f"(other processes, interrupts) took of it over the run. Load core (CPU {L}): the load generator's and the broker's CPU per request (their sum")
p("× req/s is how busy that core was).")
p("")
p("| run | req/s | server busy | rest of the machine on the server core | load generator µs/req | broker µs/req | p99 ms |")
p("|---|---|---|---|---|---|---|")
def pct(x):
    return "–" if x is None else f"{x * 100:.0f} %"
for r in range(1, rounds + 1):
    for name, label in ([(f"floor-http-r{r}", "floor: warp")]
                        + [(f"floor-verify-{s}-r{r}", f"floor: warp + verify, {s}") for s in SCHEMES]
                        + [(f"floor1-{k}-{s}-r{r}", f"one-process floor → {k}, {s}") for k, s in PATHS]
                        + [(f"pin-{k}-{s}-r{r}", f"hookbridge → {k}, {s}") for k, s in PATHS]):
        d = j(name)
        if d:
            p(f"| {label}{f' (round {r})' if rounds > 1 else ''} | {f(d['rps'])} | {pct(d.get('server_busy'))} | "
              f"{pct(d.get('server_core_others'))} | {f(d.get('loadgen_cpu_us_per_req'), 1)} | "
              f"{f(d.get('broker_cpu_us_per_req'))} | {f(d['p99_ms'], 2)} |")
p("")

p("## Fixed rate, memory, and the docs-style baseline")
p("")
p("| run | load | req/s | 2xx | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | server CPU µs/req | server peak RSS MB |")
p("|---|---|---|---|---|---|---|---|---|---|---|")
for name, what, mode in [
    ("hb-file-2000rps", "hookbridge → file, Cobo WaaS2", f"open, {fixed_rate}/s"),
    ("hb-spool-2000rps", "hookbridge, broker down → spool, Cobo WaaS2", f"open, {fixed_rate}/s"),
    ("hb-kafka-2000rps", "hookbridge → Kafka, Cobo WaaS2", f"open, {fixed_rate}/s"),
    ("floor-kafka-2000rps", "floor: minimal server + Ed25519 check + bare rdkafka → Kafka", f"open, {fixed_rate}/s"),
    ("hb-file-1000conns", "hookbridge → file, Standard Webhooks (fresh process)", "closed, 1000 conns"),
    ("py-rabbitmq", "docs-style Python → RabbitMQ (confirms), Cobo", f"closed, {conns} conns"),
    ("py-kafka", "docs-style Python → Kafka, Cobo", f"closed, {conns} conns"),
]:
    d = j(name)
    if d:
        p(f"| {what} | {mode} | {f(d['rps'])} | {f(d['ok'])} | {f(d['p50_ms'], 2)} | {f(d['p90_ms'], 2)} | {f(d['p99_ms'], 2)} | "
          f"{f(d['p999_ms'], 2)} | {f(d['max_ms'], 1)} | {f(d.get('server_cpu_us_per_req'))} | {f(d.get('server_peak_rss_mb'))} |")
p("")
fs = j("fdatasync")
if fs:
    p(f"- The disk's own `fdatasync` (1,000 appends of 6 KB, each synced, before these runs): p50 {f(fs['p50_ms'], 2)} ms, "
      f"p90 {f(fs['p90_ms'], 2)} ms, p99 {f(fs['p99_ms'], 2)} ms, max {f(fs['max_ms'], 1)} ms. The file sink and the spool "
      f"answer only after one, so their p99 cannot be below the disk's.")
for py, sink in [("py-rabbitmq", "rabbitmq"), ("py-kafka", "kafka")]:
    a, b = j(f"pin-{sink}-cobo-r1"), j(py)
    if g(a, "server_cpu_us_per_req") and g(b, "server_cpu_us_per_req"):
        p(f"- Cobo → {SINKS[sink]} on one core: the docs-style baseline needs {b['server_cpu_us_per_req'] / a['server_cpu_us_per_req']:.1f}× "
          f"hookbridge's CPU per request ({f(b['server_cpu_us_per_req'])} against {f(a['server_cpu_us_per_req'])} µs).")
if lines[-1] != "":
    p("")

p("## How to reproduce")
p("")
p("```sh")
p("bench/run.sh            # about 10 minutes; QUICK=1 for a short smoke run, SKIP_BUILD=1, ROUNDS=2")
p("SKIP_BUILD=1 bench/interleaved.sh   # file-sink ratios, floor and hookbridge in alternating bursts")
p("SKIP_BUILD=1 SINK=rabbitmq PATHS=standard bench/interleaved.sh   # a broker sink against the one-process floor")
p("# single runs, pinned the same way, e.g.:")
p("cargo build --profile production -p hookbridge -p hookbridge-loadgen --bins")
p(f"taskset -c {S} target/production/hookbridge serve --config bench/hookbridge-file.toml &")
p(f"taskset -c {L} target/production/hookbridge-loadgen run --url http://127.0.0.1:8081/hooks/cobo --scheme cobo-waas2 --connections 64 --events 100000 --out /tmp/run")
p(f"taskset -c {S} target/production/hookbridge-loadgen http-ceiling --listen 127.0.0.1:8099 --verify-with bench/hookbridge-file.toml &")
p("```")

# The hand-written sections survive a new run (to be updated by hand).
try:
    kept = open("docs/benchmarks.md").read()
    last = kept.find("## What the numbers say")
    for title, to_end in [
        ("## Interleaved with the floor", False),
        ("## Worst-case unauthenticated request", False),
        ("## Tracing", False),
        ("## What the numbers say", True),
    ]:
        at = kept.find(title)
        if at < 0 or (not to_end and 0 <= last < at):   # already inside the last section
            continue
        end = len(kept) if to_end else kept.find("\n## ", at + len(title))
        p("")
        lines.append(kept[at:end if end >= 0 else len(kept)].rstrip("\n"))
except OSError:
    pass
print("\n".join(lines))

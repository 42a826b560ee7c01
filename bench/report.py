#!/usr/bin/env python3
"""Turns one bench/run.sh result directory into docs/benchmarks.md (printed to stdout)."""
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

v1 = re.search(r"([\d.]+) verifications/s", txt("verify-1"))
v2 = re.search(r"([\d.]+) verifications/s", txt("verify-2"))
verify1 = float(v1.group(1)) if v1 else 0.0
verify2 = float(v2.group(1)) if v2 else 0.0
us_per_verify = 1e6 / verify1 if verify1 else 0.0
http = j("http-ceiling")
ck = j("ceiling-kafka"); cr256 = j("ceiling-rabbitmq-256"); cr64 = j("ceiling-rabbitmq-64")
rows = [
    ("hb-file-cobo", "hookbridge → file, Cobo WaaS2 (Ed25519)", "closed, 64 conns"),
    ("hb-file-hmac", "hookbridge → file, HMAC-SHA256", "closed, 64 conns"),
    ("hb-file-rsa", "hookbridge → file, RSA-SHA256", "closed, 64 conns"),
    ("hb-file-1000conns", "hookbridge → file, Standard Webhooks", "closed, 1000 conns"),
    ("hb-file-2000rps", "hookbridge → file, Cobo WaaS2", "open, 2000/s"),
    ("hb-rabbitmq-cobo", "hookbridge → RabbitMQ (confirms), Cobo WaaS2", "closed, 256 conns"),
    ("hb-rabbitmq-2000rps", "hookbridge → RabbitMQ, Cobo WaaS2", "open, 2000/s"),
    ("hb-rabbitmq-halfmax", "hookbridge → RabbitMQ, Cobo WaaS2", "open, ½ max"),
    ("hb-spool-closed", "hookbridge, broker down → spool, Cobo WaaS2", "closed, 64 conns"),
    ("hb-spool-2000rps", "hookbridge, broker down → spool, Cobo WaaS2", "open, 2000/s"),
    ("hb-kafka-cobo", "hookbridge → Kafka (acks=all), Cobo WaaS2", "closed, 256 conns"),
    ("hb-kafka-standard", "hookbridge → Kafka, Standard Webhooks (HMAC)", "closed, 64 conns"),
    ("hb-kafka-2000rps", "hookbridge → Kafka, Cobo WaaS2", "open, 2000/s"),
    ("hb-kafka-halfmax", "hookbridge → Kafka, Cobo WaaS2", "open, ½ max"),
    ("hb-callback-rules", "approval callback, CEL rules → decision event in file", "closed, 64 conns"),
    ("hb-callback-ask-200rps", "approval callback, decision service over RabbitMQ", "open, 200/s"),
    ("hb-callback-ask", "approval callback, decision service over RabbitMQ", "closed, 64 conns"),
    ("py-rabbitmq", "docs-style Python → RabbitMQ (confirms)", "closed, 64 conns"),
    ("py-kafka", "docs-style Python → Kafka", "closed, 64 conns"),
    ("http-ceiling", "minimal warp server (no verify, no sink)", "closed, 64 conns"),
]
def f(x, d=0):
    return "–" if x is None else f"{x:,.{d}f}"
def ratio(a, b):
    return "–" if not a or not b else f"{a / b:.2f}×"

lines = []
p = lines.append
p("# Benchmarks")
p("")
p("Produced by `bench/run.sh` (results in `" + out + "`). Load generator, server and brokers share one machine, so")
p("every figure competes for the same cores; ratios measured side by side in one run are the meaningful part.")
p("")
mem_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30)
p(f"- machine: {os.cpu_count()} cores, {mem_gib} GiB, {platform.platform()}")
prof = os.environ.get("PROFILE", "production")
tansu = cmd("tansu --version")
p(f"- {cmd('rustc --version')}; {cmd(f'target/{prof}/hookbridge --version')} (`{prof}` profile); tansu {tansu.split()[-1] if tansu else '?'} (memory storage); RabbitMQ {cmd('rabbitmqctl version 2>/dev/null')}")
p(f"- bodies: ~1.2 KB Cobo-style JSON, each event distinct and pre-signed; `--quiet` load generator (`target/{prof}/hookbridge-loadgen run …`)")
p("- audit log on (JSON lines to a file), edge dedup on (memory), spool on for broker sinks")
p("")
p("## Ceilings")
p("")
p("| ceiling | result |")
p("|---|---|")
p(f"| Ed25519 (Cobo WaaS2) verification, 1 thread | {f(verify1)} /s ({us_per_verify:.1f} µs each) |")
p(f"| Ed25519 verification, 2 threads | {f(verify2)} /s |")
p(f"| minimal warp server, 64 conns | {f(http and http['rps'])} req/s, p99 {f(http and http['p99_ms'], 2)} ms |")
p(f"| bare rdkafka, acks=all idempotent, 256 in flight | {f(ck and ck['rate'])} msg/s |")
p(f"| bare lapin, confirms, persistent, 256 in flight | {f(cr256 and cr256['rate'])} msg/s |")
p(f"| bare lapin, confirms, persistent, 64 in flight | {f(cr64 and cr64['rate'])} msg/s |")
lat = re.search(r"confirm latency ms (.*)", txt("ceiling-rabbitmq-2000rps"))
if lat:
    p(f"| bare lapin at a fixed 2000/s: confirm latency (ms) | {lat.group(1)} |")
p("")
p("## Runs")
p("")
p("| run | load | req/s | 2xx | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | server CPU µs/req | server peak RSS MB | load generator CPU µs/req |")
p("|---|---|---|---|---|---|---|---|---|---|---|---|")
for name, what, mode in rows:
    d = j(name)
    if not d:
        continue
    p(f"| {what} | {mode} | {f(d['rps'])} | {f(d['ok'])} | {f(d['p50_ms'],2)} | {f(d['p90_ms'],2)} | {f(d['p99_ms'],2)} | {f(d['p999_ms'],2)} | {f(d['max_ms'],1)} | {f(d.get('server_cpu_us_per_req'),0)} | {f(d.get('server_peak_rss_mb'),0)} | {f(d.get('loadgen_cpu_us_per_req'),1)} |")
p("")
p("## Targets")
p("")
hr, hk, hks, hf = j("hb-rabbitmq-cobo"), j("hb-kafka-cobo"), j("hb-kafka-standard"), j("hb-file-cobo")
pr, pk = j("py-rabbitmq"), j("py-kafka")
g = lambda d, k: d and d.get(k)
p("| target | measured |")
p("|---|---|")
p(f"| RabbitMQ: ≥ 80 % of the bare confirmed-publish ceiling at the same concurrency (256) | {ratio(g(hr,'rps'), g(cr256,'rate'))} |")
p(f"| RabbitMQ: ≥ 3× the docs-style baseline | {ratio(g(hr,'rps'), g(pr,'rps'))} |")
p(f"| Kafka: ≥ 10× the docs-style baseline | {ratio(g(hk,'rps'), g(pk,'rps'))} |")
p(f"| Kafka, Standard Webhooks (HMAC): ≥ 60 % of the HTTP ceiling | {ratio(g(hks,'rps'), g(http,'rps'))} |")
cap = min(x for x in [g(http, 'rps'), verify2] if x) if (g(http, 'rps') or verify2) else None
p(f"| file sink: ≥ 60 % of min(HTTP ceiling, Ed25519 ceiling on 2 cores) | {ratio(g(hf,'rps'), cap)} |")
for name, label in [("hb-spool-2000rps", "broker down, spool"), ("hb-file-2000rps", "file"), ("hb-rabbitmq-2000rps", "RabbitMQ"), ("hb-kafka-2000rps", "Kafka"), ("hb-rabbitmq-halfmax", "RabbitMQ ½ max"), ("hb-kafka-halfmax", "Kafka ½ max")]:
    d = j(name)
    p(f"| p99 ≤ 5 ms, {label} ({'2000/s' if '2000' in name else f(d and d.get('rate')) + '/s'}) | {f(g(d,'p99_ms'),2)} ms |")
cpu = g(hf, "server_cpu_us_per_req")
p(f"| server CPU per request excluding the signature check ≤ 50 µs (file sink, Cobo) | {f(cpu - us_per_verify if cpu else None, 0)} µs ({f(cpu,0)} µs total − {us_per_verify:.0f} µs Ed25519) |")
p(f"| RSS ≤ 64 MB with 1000 keep-alive connections under load | {f(g(j('hb-file-1000conns'),'server_peak_rss_mb'),0)} MB |")
for name in ["hb-rabbitmq-halfmax", "hb-kafka-cobo"]:
    d = j(name)
    if d and d.get("delivered") is not None:
        p(f"| delivery check ({name}) | {d['delivered']} distinct keys on the broker for {d['ok']} 2xx |")
p("")
p("## Where the CPU goes")
p("")
p("CPU time per message in µs, measured per process over each run. Everything shares the same")
p(f"{os.cpu_count()} cores, so `{os.cpu_count()} cores ÷ total` is the rate at which the machine runs out of CPU;")
p("a ceiling that needs less CPU per message is higher for that reason alone.")
p("")
p("| path | load generator / bare client | server | broker | total | cores ÷ total | measured /s |")
p("|---|---|---|---|---|---|---|")
def budget(label, client, server, broker, rate):
    parts = [x for x in (client, server, broker) if x is not None]
    total = sum(parts) if parts else None
    limit = (os.cpu_count() or 1) * 1e6 / total if total else None
    p(f"| {label} | {f(client,1)} | {f(server,0)} | {f(broker,0)} | {f(total,0)} | {f(limit)} | {f(rate)} |")
for label, d in [("bare lapin, 256 in flight", cr256), ("bare rdkafka, 256 in flight", ck)]:
    if d:
        budget(label, d.get("client_cpu_us_per_msg"), None, d.get("broker_cpu_us_per_msg"), d.get("rate"))
for name, label in [("hb-rabbitmq-cobo", "hookbridge → RabbitMQ, Cobo"), ("py-rabbitmq", "docs-style Python → RabbitMQ, Cobo"),
                    ("hb-kafka-cobo", "hookbridge → Kafka, Cobo"), ("hb-kafka-standard", "hookbridge → Kafka, Standard Webhooks"),
                    ("py-kafka", "docs-style Python → Kafka, Cobo"), ("hb-file-cobo", "hookbridge → file, Cobo"),
                    ("hb-file-hmac", "hookbridge → file, HMAC"), ("http-ceiling", "minimal warp server")]:
    d = j(name)
    if d:
        budget(label, d.get("loadgen_cpu_us_per_req"), d.get("server_cpu_us_per_req"), d.get("broker_cpu_us_per_req"), d.get("rps"))
p("")
p("## How to reproduce")
p("")
p("```sh")
p("bench/run.sh            # about 10 minutes; QUICK=1 for a short smoke run")
p("# single runs, e.g.:")
p("cargo build --profile production -p hookbridge -p hookbridge-loadgen --bins")
p("target/production/hookbridge serve --config bench/hookbridge-file.toml &")
p("target/production/hookbridge-loadgen run --url http://127.0.0.1:8081/hooks/cobo --scheme cobo-waas2 --connections 64 --events 100000 --out /tmp/run")
p("```")
# The hand-written analysis below the generated part survives a new run (to be updated by hand).
try:
    kept = open("docs/benchmarks.md").read()
    at = kept.find("## What the numbers say")
    if at >= 0:
        p("")
        lines.append(kept[at:].rstrip("\n"))
except OSError:
    pass
print("\n".join(lines))

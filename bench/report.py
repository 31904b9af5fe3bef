#!/usr/bin/env python3
"""Turn benchmark JSON records into one markdown section (tables) appended to
docs/performance.md, with the machine described (nproc, RAM, CPU, load average).

Reads the records of bench/agents.py, bench/history.py, bench/logs.py and
bench/dispatch.py (``agents-*.json``, ``history-*.json``, ``logs-*.json``,
``dispatch-*.json`` in bench/results/ by
default, or the files given). ``--print`` writes to stdout instead of the doc.

Run:  /work/venv/bin/python bench/report.py [FILE ...] [--doc docs/performance.md] [--print]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
KINDS = ("agents", "history", "logs", "dispatch")


def _ms(stats: dict[str, Any], key: str) -> str:
    value = stats.get(key)
    return "–" if value is None else f"{value:g}"


def _load(value: Any) -> str:
    return "–" if not value else f"{value[0]:g}"


def machine_line(machine: dict[str, Any]) -> str:
    return (
        f"{machine.get('nproc', '?')} cores ({machine.get('cpu_model', '?')}), "
        f"{machine.get('memory_gib', '?')} GiB RAM, {machine.get('python', '?')}, "
        f"kernel {machine.get('kernel', '?')}, commit {str(machine.get('git_commit', '?'))[:10]}"
        f"{' (dirty)' if machine.get('git_dirty') else ''}, load average at start "
        f"{'/'.join(str(x) for x in machine.get('loadavg_at_start', []))}"
    )


def agents_table(records: list[dict[str, Any]]) -> list[str]:
    """One row per step. Older records lack the newer columns (shown as –)."""
    lines = [
        "| database | controllers | agents | registered in s (p99 ms) | online "
        "| controller CPU (% core) | CPU ms / heartbeat | controller RSS MiB "
        "| heartbeats/s | heartbeat p50 / p99 ms | API p50 / p99 ms | errors "
        "| other work (% core) | load 1 min |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for record in records:
        timeout = record.get("agent_timeout")
        database = record["database"]
        if timeout and timeout != 15.0:
            database += f", agent timeout {timeout:g} s"
        for step in record.get("steps", []):
            hb, api = step["heartbeat_ms"], step["api_ms"]
            reg = step.get("register_ms", {})
            lines.append(
                f"| {database} | {step.get('controllers', 1)} | {step['agents']} "
                f"| {step.get('registration_seconds', '–')} ({_ms(reg, 'p99')}) "
                f"| {step['online']} | {step['controller_core_percent']} "
                f"| {step.get('controller_cpu_ms_per_heartbeat', '–')} "
                f"| {step['controller_rss_mib']} "
                f"| {step['heartbeats_per_s']} | {_ms(hb, 'p50')} / {_ms(hb, 'p99')} "
                f"| {_ms(api, 'p50')} / {_ms(api, 'p99')} | {sum(step['errors'].values())} "
                f"| {step.get('outside_core_percent', '–')} | {_load(step['loadavg'])} |"
            )
    return lines


def history_table(records: list[dict[str, Any]]) -> list[str]:
    """One row per endpoint and number of concurrent clients. Older records (in-process,
    one client, no "runs") show – in the newer columns."""
    lines = [
        "| database | mode | controllers | clients | builds | endpoint | p50 ms | p95 ms "
        "| p99 ms | req/s | server CPU ms / request | slowest SQL ms | load 1 min |",
        "|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for record in records:
        builds = record.get("parameters", {}).get("builds", "?")
        mode = record.get("mode", "in-process")
        controllers = record.get("controllers", 0)
        runs = record.get("runs") or [{"clients": 1, "endpoints": record.get("endpoints", {})}]
        for run in runs:
            for label, row in run.get("endpoints", {}).items():
                lines.append(
                    f"| {record['database']} | {mode} | {controllers or '–'} | {run['clients']} "
                    f"| {builds:,} | {label} | {_ms(row['ms'], 'p50')} | {_ms(row['ms'], 'p95')} "
                    f"| {_ms(row['ms'], 'p99')} | {row.get('requests_per_s', '–')} "
                    f"| {row.get('cpu_ms_per_request', '–')} | {row['slowest_sql_ms']} "
                    f"| {_load(row['loadavg'])} |"
                )
    return lines


def logs_table(records: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| database | controllers | MB printed | ingest MB/s | log complete "
        "| controller / agent CPU s per 100 MB | controller RSS max MiB (until compacted) "
        "| agent RSS max MiB | live tail p50 / p95 / p99 ms "
        "| live tail during a flood p50 / p95 / p99 ms | load 1 min |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for record in records:
        ing, tail = record.get("ingest", {}), record.get("live_tail", {})
        lat = tail.get("latency_ms", {})
        busy = record.get("during_ingest", {}).get("live_tail", {}).get("latency_ms", {})
        busy_cell = f"{_ms(busy, 'p50')} / {_ms(busy, 'p95')} / {_ms(busy, 'p99')}" if busy else "–"
        cpu = "–"
        if "controller_cpu_s_per_100mb" in ing:
            cpu = f"{ing['controller_cpu_s_per_100mb']} / {ing['agent_cpu_s_per_100mb']}"
        controllers = record.get("parameters", {}).get("controllers", 1)
        lines.append(
            f"| {record['database']} | {controllers} | {ing.get('printed_bytes', 0) / 1e6:g} "
            f"| {ing.get('ingest_mb_per_s')} | {ing.get('log_complete')} | {cpu} "
            f"| {ing.get('controller_rss_max_mib')} | {ing.get('agent_rss_max_mib')} "
            f"| {_ms(lat, 'p50')} / {_ms(lat, 'p95')} / {_ms(lat, 'p99')} | {busy_cell} "
            f"| {_load(ing.get('loadavg'))} |"
        )
    return lines


def dispatch_table(records: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| database | controllers | builds | agents × executors | builds/s "
        "| controller CPU (% core, all) | other processes (% core) | (b) queued→running p50 ms "
        "| load at start |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for record in records:
        params = record.get("parameters", {})
        for db, result in record.get("results", {}).items():
            a, b = result.get("throughput", {}), result.get("latency", {})
            qr = b.get("queued_to_running_ms", {})
            cpu = a.get("cpu", {})
            lines.append(
                f"| {db} | {result.get('controllers', params.get('controllers', 1))} "
                f"| {params.get('builds')} | {params.get('agents')} × {params.get('executors')} "
                f"| {a.get('builds_per_second')} | {cpu.get('controller_core_percent')} "
                f"| {cpu.get('outside_core_percent')} | {_ms(qr, 'p50')} "
                f"| {_load(record.get('machine', {}).get('loadavg_at_start'))} |"
            )
    return lines


def render(records: list[dict[str, Any]]) -> str:
    by_kind: dict[str, list[dict[str, Any]]] = {k: [] for k in KINDS}
    for record in records:
        if record.get("benchmark") in by_kind:
            by_kind[str(record["benchmark"])].append(record)
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    out = [f"## Scale figures ({stamp})", ""]
    machines = {machine_line(r["machine"]) for r in records if "machine" in r}
    out.append("Measured on:")
    out += [f"- {m}" for m in sorted(machines)]
    out.append(f"- load average when this report was made: {os.getloadavg()[0]:.2f}")
    out.append("")
    titles = {
        "agents": ("Simulated agents (`bench/agents.py`)", agents_table),
        "history": ("API latency with a long history (`bench/history.py`)", history_table),
        "logs": ("Log ingest and live tail (`bench/logs.py`)", logs_table),
        "dispatch": (
            "Trivial-build throughput, 1 or N controllers (`bench/dispatch.py`)",
            dispatch_table,
        ),
    }
    for kind, (title, table) in titles.items():
        if by_kind[kind]:
            out += [f"### {title}", "", *table(by_kind[kind]), ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="*", type=Path)
    parser.add_argument("--doc", type=Path, default=ROOT / "docs" / "performance.md")
    parser.add_argument("--print", action="store_true", help="stdout instead of the doc")
    args = parser.parse_args(argv)
    files = args.files or sorted(
        p for kind in KINDS for p in RESULTS.glob(f"{kind}-*.json") if "-before" not in p.name
    )
    if not files:
        print(f"no JSON records given or found in {RESULTS}", file=sys.stderr)
        return 1
    records = []
    for path in files:
        try:
            records.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError) as exc:
            print(f"cannot read {path}: {exc}", file=sys.stderr)
            return 1
    text = render(records)
    if args.print:
        print(text)
    else:
        with args.doc.open("a") as doc:
            doc.write("\n" + text + "\n")
        print(f"appended to {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/python3
"""Turns the output of `cargo bench --bench transfer` into the README's
tables (markdown, on stdout) and its chart (an SVG of throughput against
state size, one line per path and baseline).

Usage: /usr/bin/python3 benches/chart.py [--partial] [CRITERION_DIR] [SVG_OUT]
       /usr/bin/python3 benches/chart.py --self-test
Defaults: $CARGO_TARGET_DIR/criterion (or target/criterion) and
benches/throughput.svg. Standard library only.

Criterion keeps each benchmark's latest figures whatever run measured
them, so after a filtered run (`-- FILTER`) its directory mixes runs. The
bench writes RUN_FILE: the run's id and every benchmark it measured, and
the run id heads its latency and memory files. Figures of any other run
are refused, named; with --partial they are left out instead (their cells
show "–") and the output says so.
"""

import argparse
import json
import math
import os
import sys
import tempfile
from pathlib import Path

RUN_FILE = "dbus-vmstate-run.txt"
LATENCY_FILE = "dbus-vmstate-latency.txt"
MEMORY_FILE = "dbus-vmstate-rss.txt"
# The criterion groups of benches/transfer.rs (other benches' are ignored).
GROUPS = ("save", "load", "helpers_4k")

SIZES = ["4KiB", "1MiB", "16MiB", "64MiB", "1GiB"]
SIZE_BYTES = {"4KiB": 4 << 10, "1MiB": 1 << 20, "16MiB": 16 << 20, "64MiB": 64 << 20, "1GiB": 1 << 30}
PATHS = [
    ("raw_socket", "raw Unix socket (ceiling)", "#555555"),
    ("stream", "coordinator, streaming (Stream1)", "#1f77b4"),
    ("plain", "coordinator, plain Save/Load", "#2ca02c"),
    ("p2p_call", "bare call, peer to peer", "#9467bd"),
    ("bus_call", "bare call, through dbus-daemon", "#d62728"),
]
HELPER_VARIANTS = [
    ("stream_concurrent", "coordinator, all at once, streaming"),
    ("plain_concurrent", "coordinator, all at once, plain"),
    ("plain_sequential", "one after another, peer to peer"),
    ("bus_sequential", "one after another, through dbus-daemon (QEMU)"),
]


def criterion_dir(arg):
    if arg:
        return Path(arg)
    if os.environ.get("CRITERION_HOME"):
        return Path(os.environ["CRITERION_HOME"])
    if os.environ.get("CARGO_TARGET_DIR"):
        return Path(os.environ["CARGO_TARGET_DIR"]) / "criterion"
    return Path("target/criterion")


def load_results(root):
    """full_id -> median seconds, for the benchmarks of benches/transfer.rs."""
    out = {}
    for bench in root.glob("**/new/benchmark.json"):
        meta = json.loads(bench.read_text())
        if meta["full_id"].split("/")[0] not in GROUPS:
            continue
        est = json.loads((bench.parent / "estimates.json").read_text())
        out[meta["full_id"]] = est["median"]["point_estimate"] / 1e9
    return out


def run_id_of(text):
    """The run id a file starts with (`run ID`), or None."""
    first = text.splitlines()[0].split() if text.strip() else []
    return first[1] if len(first) == 2 and first[0] == "run" else None


def load_run(root):
    """(run id, benchmark ids) of the last run, from RUN_FILE."""
    path = root / RUN_FILE
    if not path.exists():
        sys.exit(f"no {RUN_FILE} under {root}: run `cargo bench --bench transfer` first "
                 "(it names the run each figure comes from)")
    text = path.read_text()
    run = run_id_of(text)
    if run is None:
        sys.exit(f"{path}: no `run ID` first line")
    benches = {line.split(maxsplit=1)[1] for line in text.splitlines() if line.startswith("bench ")}
    return run, benches


def of_this_run(root, results, run, benches):
    """Splits the figures: those of `run`, and the names of those that are
    not (benchmarks it did not measure, side files another run wrote)."""
    fresh = {k: v for k, v in results.items() if k in benches}
    stale = sorted(k for k in results if k not in benches)
    missing = sorted(benches - results.keys())
    if missing:
        sys.exit(f"run {run} measured {', '.join(missing)}, but criterion holds no figures for them")
    side = {}
    for name in (LATENCY_FILE, MEMORY_FILE):
        path = root / name
        if not path.exists():
            continue
        text = path.read_text()
        if run_id_of(text) == run:
            side[name] = text
        else:
            stale.append(name)
    return fresh, side, stale


def gbps(seconds, size):
    return SIZE_BYTES[size] / seconds / 1e9


def fmt_time(seconds):
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def throughput_table(results, group):
    lines = [
        f"| {group} | " + " | ".join(label for _, label, _ in PATHS) + " |",
        "|---|" + "---|" * len(PATHS),
    ]
    for size in SIZES:
        raw = results.get(f"{group}/raw_socket/{size}")
        cells = []
        for key, _, _ in PATHS:
            t = results.get(f"{group}/{key}/{size}")
            if t is None:
                cells.append("–")
                continue
            cell = f"{gbps(t, size):.2f} GB/s"
            if raw and key != "raw_socket":
                cell += f" ({raw / t:.2f}× raw)"
            cells.append(cell)
        lines.append(f"| {size} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def helpers_table(results):
    counts = sorted(
        {int(k.split("/")[2]) for k in results if k.startswith("helpers_4k/")}
    )
    if not counts:
        return ""
    lines = [
        "| helpers of 4 KiB | " + " | ".join(label for _, label in HELPER_VARIANTS) + " |",
        "|---|" + "---|" * len(HELPER_VARIANTS),
    ]
    for n in counts:
        cells = []
        for key, _ in HELPER_VARIANTS:
            t = results.get(f"helpers_4k/{key}/{n}")
            cells.append(fmt_time(t) if t is not None else "–")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def memory_lines(text):
    out = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) != 4:
            continue
        what, size = fields[0], fields[1]
        before = int(fields[2].split("=")[1])
        after = int(fields[3].split("=")[1])
        out.append((what, size, before, after))
    return out


def latency(text):
    """Medians in µs of the interleaved 4 KiB Save measurement, by path."""
    out = {}
    for line in text.splitlines():
        if not line.startswith("save_4KiB_median_us "):
            continue
        for field in line.split()[1:]:
            key, _, value = field.partition("=")
            if key != "rounds":
                out[key] = float(value)
    return out


def check(name, ok, detail):
    mark = "met" if ok else "**missed**"
    return f"| {name} | {detail} | {mark} |"


def targets(results, memory, lat):
    rows = ["| target | measured (same run) | |", "|---|---|---|"]
    for group in ("save", "load"):
        raw = results.get(f"{group}/raw_socket/1GiB")
        st = results.get(f"{group}/stream/1GiB")
        if raw and st:
            ratio = raw / st
            rows.append(check(
                f"{group}: streaming at 1 GiB ≥ 0.5× raw socket",
                ratio >= 0.5,
                f"{gbps(st, '1GiB'):.2f} vs {gbps(raw, '1GiB'):.2f} GB/s = {ratio:.2f}×",
            ))
    for group in ("save", "load"):
        for key in ("plain", "p2p_call"):
            t = results.get(f"{group}/{key}/16MiB")
            if t:
                rows.append(check(
                    f"{group}: plain ({key}) at 16 MiB ≥ 1 GB/s",
                    gbps(t, "16MiB") >= 1.0,
                    f"{gbps(t, '16MiB'):.2f} GB/s",
                ))
    for group in ("save", "load"):
        p2p = results.get(f"{group}/p2p_call/16MiB")
        bus = results.get(f"{group}/bus_call/16MiB")
        if p2p and bus:
            rows.append(check(
                f"{group}: p2p ≥ 2× bus throughput at 16 MiB",
                bus / p2p >= 2,
                f"{gbps(p2p, '16MiB'):.2f} vs {gbps(bus, '16MiB'):.2f} GB/s = {bus / p2p:.2f}×",
            ))
        p2p = results.get(f"{group}/p2p_call/4KiB")
        bus = results.get(f"{group}/bus_call/4KiB")
        if p2p and bus:
            rows.append(check(
                f"{group}: p2p ≤ 0.5× bus latency at 4 KiB (separate benchmarks)",
                p2p / bus <= 0.5,
                f"{fmt_time(p2p)} vs {fmt_time(bus)} = {p2p / bus:.2f}×",
            ))
    if "p2p_call" in lat and "bus_call" in lat:
        p2p, bus = lat["p2p_call"], lat["bus_call"]
        rows.append(check(
            "save: p2p ≤ 0.5× bus latency at 4 KiB (interleaved)",
            p2p / bus <= 0.5,
            f"{p2p:.0f} µs vs {bus:.0f} µs = {p2p / bus:.2f}× (raw request/reply: {lat.get('raw_socket', 0):.0f} µs)",
        ))
    for key in ("stream_concurrent", "plain_concurrent"):
        t = results.get(f"helpers_4k/{key}/64")
        if t:
            rows.append(check(f"64 helpers of 4 KiB saved ({key}) < 10 ms", t < 0.010, fmt_time(t)))
    for what, size, before, after in memory:
        if what == "stream-save" and size == "1GiB":
            rows.append(check(
                "coordinator peak RSS saving 1 GiB < 64 MiB",
                after < 64 * 1024,
                f"{after / 1024:.1f} MiB (before the save: {before / 1024:.1f} MiB)",
            ))
    return "\n".join(rows)


def svg(results, out):
    panel_w, panel_h, gap = 440, 300, 40
    left, right, top, bottom = 60, 15, 40, 45
    width = 2 * panel_w + gap
    height = panel_h + 95
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
    ]
    ymax = 0.0
    for key, value in results.items():
        group, path, size = (key.split("/") + ["", "", ""])[:3]
        if group in ("save", "load") and size in SIZE_BYTES:
            ymax = max(ymax, gbps(value, size))
    ymax = max(1.0, ymax * 1.1)
    step = 1.0 if ymax <= 8 else 2.0
    for p, group in enumerate(("save", "load")):
        x0 = p * (panel_w + gap)
        pw, ph = panel_w - left - right, panel_h - top - bottom

        lo, hi = math.log2(SIZE_BYTES[SIZES[0]]), math.log2(SIZE_BYTES[SIZES[-1]])

        def px(i):
            return x0 + left + pw * (math.log2(SIZE_BYTES[SIZES[i]]) - lo) / (hi - lo)

        def py(v):
            return top + ph - ph * v / ymax

        parts.append(f'<text x="{x0 + panel_w / 2}" y="20" text-anchor="middle" font-size="14" '
                     f'font-weight="bold">{group.capitalize()}: throughput against state size</text>')
        v = 0.0
        while v <= ymax + 1e-9:
            y = py(v)
            parts.append(f'<line x1="{x0 + left}" y1="{y:.1f}" x2="{x0 + left + pw}" y2="{y:.1f}" stroke="#e5e5e5"/>')
            parts.append(f'<text x="{x0 + left - 6}" y="{y + 4:.1f}" text-anchor="end">{v:.0f}</text>')
            v += step
        for i, size in enumerate(SIZES):
            parts.append(f'<text x="{px(i):.1f}" y="{top + ph + 18}" text-anchor="middle">{size}</text>')
        parts.append(f'<line x1="{x0 + left}" y1="{top + ph}" x2="{x0 + left + pw}" y2="{top + ph}" stroke="#333"/>')
        parts.append(f'<line x1="{x0 + left}" y1="{top}" x2="{x0 + left}" y2="{top + ph}" stroke="#333"/>')
        parts.append(f'<text x="{x0 + 16}" y="{top + ph / 2}" text-anchor="middle" '
                     f'transform="rotate(-90 {x0 + 16} {top + ph / 2})">GB/s (10⁹ bytes/s)</text>')
        parts.append(f'<text x="{x0 + left + pw / 2}" y="{top + ph + 36}" text-anchor="middle">'
                     f'state size of one helper (log scale)</text>')
        for key, _, color in PATHS:
            points = [
                (px(i), py(gbps(results[f"{group}/{key}/{s}"], s)))
                for i, s in enumerate(SIZES)
                if f"{group}/{key}/{s}" in results
            ]
            if not points:
                continue
            dash = ' stroke-dasharray="5,3"' if key in ("raw_socket", "bus_call") else ""
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
            parts.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"{dash}/>')
            for x, y in points:
                parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{color}"/>')
    ly = panel_h + 20
    for i, (key, label, color) in enumerate(PATHS):
        lx = 60 + (i % 3) * 280
        y = ly + (i // 3) * 20
        dash = ' stroke-dasharray="5,3"' if key in ("raw_socket", "bus_call") else ""
        parts.append(f'<line x1="{lx}" y1="{y}" x2="{lx + 24}" y2="{y}" stroke="{color}" stroke-width="2"{dash}/>')
        parts.append(f'<text x="{lx + 30}" y="{y + 4}">{label}</text>')
    parts.append(f'<text x="60" y="{ly + 55}" fill="#555">Each point: median of one helper process saving '
                 f'(or loading) its state once; plain paths stop at 64 MiB (one D-Bus message holds 128 MiB).</text>')
    parts.append("</svg>")
    out.write_text("\n".join(parts) + "\n")


def self_test():
    """Checks the run rule on a made-up criterion directory; exits non-zero
    if a figure of another run would be charted."""
    def bench(root, full_id, ns):
        d = root.joinpath(*full_id.split("/"), "new")
        d.mkdir(parents=True)
        (d / "benchmark.json").write_text(json.dumps({"full_id": full_id}))
        (d / "estimates.json").write_text(json.dumps({"median": {"point_estimate": ns}}))

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        bench(root, "save/raw_socket/4KiB", 10e3)
        bench(root, "save/stream/4KiB", 40e3)
        (root / RUN_FILE).write_text("run 2-1\nbench save/raw_socket/4KiB\n")
        (root / LATENCY_FILE).write_text("run 1-1\nsave_4KiB_median_us raw_socket=11.0 rounds=3\n")
        (root / MEMORY_FILE).write_text("run 2-1\nstream-save 1GiB peak_rss_before_kib=1 peak_rss_after_kib=2\n")
        run, benches = load_run(root)
        fresh, side, stale = of_this_run(root, load_results(root), run, benches)
        assert run == "2-1", run
        assert list(fresh) == ["save/raw_socket/4KiB"], fresh
        assert stale == ["save/stream/4KiB", LATENCY_FILE], stale
        assert list(side) == [MEMORY_FILE], side
        assert memory_lines(side[MEMORY_FILE]) == [("stream-save", "1GiB", 1, 2)]
        assert "0.41 GB/s" in throughput_table(fresh, "save")
        assert "×" not in throughput_table(fresh, "save"), "a ratio against a figure left out"
        (root / RUN_FILE).write_text("run 2-1\nbench save/raw_socket/4KiB\nbench save/plain/4KiB\n")
        try:
            of_this_run(root, load_results(root), *load_run(root))
            raise AssertionError("a benchmark of the run without figures was accepted")
        except SystemExit as e:
            assert "save/plain/4KiB" in str(e), e
    print("chart.py self-test: ok")


def main():
    parser = argparse.ArgumentParser(description="The README's tables and chart from one run of the transfer bench.")
    parser.add_argument("--partial", action="store_true",
                        help="chart only the last run's figures, leaving out those of earlier runs")
    parser.add_argument("--self-test", action="store_true", help="check the run rule and exit")
    parser.add_argument("criterion_dir", nargs="?")
    parser.add_argument("svg_out", nargs="?")
    args = parser.parse_args()
    if args.self_test:
        self_test()
        return
    root = criterion_dir(args.criterion_dir)
    out = Path(args.svg_out) if args.svg_out else Path(__file__).with_name("throughput.svg")
    run, benches = load_run(root)
    results, side, stale = of_this_run(root, load_results(root), run, benches)
    if stale and not args.partial:
        sys.exit(f"{root} holds figures of runs before the last one ({run}): {', '.join(stale)}.\n"
                 "Run the whole bench (`cargo bench --bench transfer`) to chart them together, "
                 "or pass --partial to chart only the last run's figures.")
    if not results:
        sys.exit(f"run {run} measured nothing under {root}; run `cargo bench --bench transfer` first")
    memory = memory_lines(side.get(MEMORY_FILE, ""))
    lat = latency(side.get(LATENCY_FILE, ""))
    svg(results, out)
    if stale:
        print(f"Partial: the figures of run {run} only; left out, from earlier runs: {', '.join(stale)}.\n")
    print("### Save (helper to coordinator)\n")
    print(throughput_table(results, "save"))
    print("\n### Load (coordinator to helper)\n")
    print(throughput_table(results, "load"))
    table = helpers_table(results)
    if table:
        print("\n### Many helpers, 4 KiB each: one save of all of them\n")
        print(table)
    if memory:
        print("\n### Coordinator peak memory (VmHWM of a process running only the coordinator)\n")
        print("| run | before | after |\n|---|---|---|")
        for what, size, before, after in memory:
            print(f"| {what} {size} | {before / 1024:.1f} MiB | {after / 1024:.1f} MiB |")
    if lat:
        print("\n### Latency of one 4 KiB Save, interleaved (median)\n")
        print("| raw Unix socket request/reply | bare call, peer to peer | bare call, through dbus-daemon |")
        print("|---|---|---|")
        print(f"| {lat.get('raw_socket', 0):.0f} µs | {lat.get('p2p_call', 0):.0f} µs | {lat.get('bus_call', 0):.0f} µs |")
    print("\n### Targets\n")
    print(targets(results, memory, lat))
    print(f"\n(chart written to {out})", file=sys.stderr)


if __name__ == "__main__":
    main()

"""What `python -m bench` makes of the sections' results: the table with the
targets of the performance work, and the plots.  Pure apart from writing the
PNG files; every figure is a ratio or a difference against a baseline measured
in the same run (the machines are shared and noisy).

    section       from                  plots
    flavours      bench_flavours.py     ttft_cdf.png (one panel per flavour, 1 stream),
                                        cpu_by_flavour.png (CPU per chunk at N streams)
    concurrency   bench_sse.py          cpu_per_chunk.png (OpenAI SSE, CPU per chunk
                                        against concurrent streams)
    idle          bench_idle.py         memory.png (RSS against idle connections)
    disconnect    bench_disconnect.py   (a row of the table only)
    signin        bench_signin.py       (rows of the table only)
    webapp        bench_webapp.py       webapp_ttft.png (TTFT CDF per server, N users)
    wire          bench_wire.py         wire_bytes.png (bytes per reply against its
                                        length, gateway and relay, per flavour)
    sustained     bench_sustained.py    (rows of the table only)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The targets of the performance issue, each read from one section.
ADDED_TTFT_MS = 0.5  # gateway p50 − relay p50 at one stream, every flavour
CPU_RATIO = 1.15  # gateway ÷ relay, CPU per chunk at the highest level
KB_PER_CONNECTION = {"websocket": 16.0, "socketio": 32.0}
IDLE_CONNECTIONS = 10_000
CLOSED_MS = 50.0  # client gone → the model server's request closed
GAP_INTERVALS = 2.0  # a running reply's longest gap, in upstream intervals, at most
WEBAPP_TTFT_P99_MS = 50.0  # the web app's turn, N users at once: the gateway's p99
WEBAPP_CPU_BELOW_OPENWEBUI = 25.0  # Open WebUI's CPU per reply ÷ the gateway's, at least
# Bytes on the wire linear in the reply's length: the marginal bytes per token
# between the longest lengths ÷ between the shortest, at most (a linear flavour
# reads 1.00–1.03: the upstream's tokens grow a character at each power of ten).
WIRE_LINEARITY = 1.1

FLAVOURS = ("openai-sse", "ragflow-sse", "ragflow-ws", "nadoo-ws", "socketio")
# One colour per path (and transport) in every plot.
COLOURS = {"direct": "tab:grey", "relay": "tab:blue", "gateway": "tab:orange",
           "baseline": "tab:blue", "websocket": "tab:orange", "socketio": "tab:green",
           "trivial": "tab:blue", "openwebui": "tab:red"}  # fmt: skip


@dataclass(frozen=True)
class Row:
    """One line of the table: what was measured, against what, and the target."""

    what: str
    measured: str
    target: str
    met: bool | None  # None: no target, or not measured

    def markdown(self) -> str:
        mark = {True: "✓", False: "✗", None: "–"}[self.met]
        return f"| {self.what} | {self.measured} | {self.target} | {mark} |"


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(v for v in values if not math.isnan(v))
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def _streams(level: int | str) -> str:
    return "1 stream" if int(level) == 1 else f"{int(level):,} streams"


def rows(report: dict[str, Any]) -> list[Row]:
    sections = report["sections"]
    found: list[Row] = []
    if "flavours" in sections:
        found += _flavour_rows(sections["flavours"])
    if "concurrency" in sections:
        found += _concurrency_rows(sections["concurrency"])
    if "idle" in sections:
        found += _idle_rows(sections["idle"], report.get("quick", False))
    if "signin" in sections:
        found += _signin_rows(sections["signin"])
    if "webapp" in sections:
        found += _webapp_rows(sections["webapp"])
    if "wire" in sections:
        found += _wire_rows(sections["wire"])
    if "sustained" in sections:
        found += _sustained_rows(sections["sustained"])
    if "disconnect" in sections:
        section = sections["disconnect"]
        found.append(
            Row(
                "openai-sse: client gone → upstream request closed, worst of "
                f"{section['replies']}",
                f"{section['closed_max_ms']:.1f} ms (p50 {section['closed_p50_ms']:.1f})",
                f"< {CLOSED_MS:.0f} ms",
                section["closed_max_ms"] < CLOSED_MS,
            )
        )
    return found


def _flavour_rows(section: dict[str, Any]) -> list[Row]:
    found = []
    levels = section["levels"]
    one, most = str(min(levels)), str(max(levels))
    for flavour, by_level in section["flavours"].items():
        single = by_level.get(one, {})
        if "gateway" in single and "relay" in single:
            gateway = percentile(single["gateway"]["ttft_ms"], 50)
            relay = percentile(single["relay"]["ttft_ms"], 50)
            added = gateway - relay
            found.append(
                Row(
                    f"{flavour}: TTFT p50 added to the bare relay's, {_streams(one)}",
                    f"{added:+.2f} ms ({gateway:.2f} against {relay:.2f})",
                    f"≤ {ADDED_TTFT_MS} ms",
                    added <= ADDED_TTFT_MS if not math.isnan(added) else None,
                )
            )
        loaded = by_level.get(most, {})
        ratio = _cpu_ratio(loaded)
        if ratio is not None:
            found.append(
                Row(
                    f"{flavour}: CPU per chunk ÷ the bare relay's, {_streams(most)}",
                    f"×{ratio:.2f}",
                    f"≤ ×{CPU_RATIO}",
                    ratio <= CPU_RATIO,
                )
            )
    return found


def _cpu_ratio(paths: dict[str, Any]) -> float | None:
    gateway = (paths.get("gateway") or {}).get("cpu_us_per_chunk")
    relay = (paths.get("relay") or {}).get("cpu_us_per_chunk")
    if not gateway or not relay:
        return None
    return float(gateway) / float(relay)


def _concurrency_rows(section: dict[str, Any]) -> list[Row]:
    found = []
    paths = section["paths"]
    for i, level in enumerate(section["levels"]):
        gateway, relay = paths["gateway"]["cpu_us_per_chunk"][i], paths["relay"]["cpu_us_per_chunk"][i]
        if not gateway or not relay:
            continue
        ratio = gateway / relay
        top = level == max(section["levels"])
        found.append(
            Row(
                f"OpenAI SSE: CPU per chunk ÷ the bare relay's, {_streams(level)}",
                f"×{ratio:.2f} ({gateway:.1f} against {relay:.1f} µs)",
                f"≤ ×{CPU_RATIO}" if top else "",
                (ratio <= CPU_RATIO) if top else None,
            )
        )
    return found


def _idle_rows(section: dict[str, Any], quick: bool) -> list[Row]:
    found = []
    transports = section["transports"]
    for name, data in transports.items():
        kb = data["kb_per_connection"]
        limit = KB_PER_CONNECTION.get(name)
        found.append(
            Row(
                f"{name}: memory per idle connection",
                f"{kb:.1f} KB ({data['opened']:,} open, {data['failed']:,} failed)",
                f"≤ {limit:.0f} KB" if limit else "the floor",
                (kb <= limit) if limit else None,
            )
        )
        if limit and not quick:
            found.append(
                Row(
                    f"{name}: idle connections held by one process",
                    f"{data['opened']:,}",
                    f"{IDLE_CONNECTIONS:,}",
                    data["opened"] >= IDLE_CONNECTIONS and not data["failed"],
                )
            )
    return found


def _signin_rows(section: dict[str, Any]) -> list[Row]:
    quiet, busy = section["cases"]["quiet"], section["cases"]["busy"]
    limit = GAP_INTERVALS * section["interval_ms"]
    what = f"{section['streams']} running replies while {section['signins']} users sign in"
    return [
        Row(f"{what}: longest gap between chunks",
            f"{busy['gap_max_ms']:.1f} ms (quiet: {quiet['gap_max_ms']:.1f})",
            f"< {limit:.0f} ms", busy["gap_max_ms"] < limit),
        Row(f"{what}: TTFT p50 / p99",
            f"{busy['ttft_p50_ms']:.1f} / {busy['ttft_p99_ms']:.1f} ms "
            f"(quiet: {quiet['ttft_p50_ms']:.1f} / {quiet['ttft_p99_ms']:.1f}; "
            f"sign-ins p50 {busy['signin_p50_ms']:,.0f} ms)", "", None),
    ]  # fmt: skip


def _webapp_rows(section: dict[str, Any]) -> list[Row]:
    users, targets = section["users"], section["targets"]
    found = []
    for name, row in targets.items():
        label = f"web app, {users} users, {row['label']}"
        whole = row["complete"] == users
        found.append(
            Row(f"{label}: replies complete in 60 s", f"{row['complete']}/{users}",
                f"{users}/{users}" if name == "gateway" else "", whole if name == "gateway" else None)
        )  # fmt: skip
        if row["ttft_p50_ms"] is None:
            continue
        p99 = row["ttft_p99_ms"]
        measured = f"{row['ttft_p50_ms']:,.1f} / {p99:,.1f} ms"
        share = section.get("gateway_share_ms")
        if name == "gateway" and share:
            measured += f" (the gateway's share {share['p50']:+.1f} / {share['p99']:+.1f})"
        found.append(
            Row(f"{label}: TTFT p50 / p99", measured,
                f"p99 < {WEBAPP_TTFT_P99_MS:.0f} ms" if name == "gateway" else "",
                p99 < WEBAPP_TTFT_P99_MS if name == "gateway" else None)
        )  # fmt: skip
        if row["cpu_ms_per_reply"] is not None:
            found.append(
                Row(f"{label}: server CPU per reply, memory after",
                    f"{row['cpu_ms_per_reply']:.1f} ms, {row['rss_mb']:.0f} MB", "", None)
            )  # fmt: skip
    ratio = section.get("cpu_openwebui_over_gateway")
    if ratio is not None:
        found.append(
            Row(f"web app, {users} users: Open WebUI's CPU per reply ÷ the gateway's",
                f"×{ratio:.1f}", f"≥ ×{WEBAPP_CPU_BELOW_OPENWEBUI:.0f}",
                ratio >= WEBAPP_CPU_BELOW_OPENWEBUI)
        )  # fmt: skip
    return found


def _wire_rows(section: dict[str, Any]) -> list[Row]:
    short, middle, longest = section["upstream"]["lengths"]
    what = f"bytes on the wire per added token, {middle:,}→{longest:,} ÷ {short}→{middle:,}"
    found = []
    for name, row in section["rows"].items():
        gateway, relay = row["paths"]["gateway"], row["paths"].get("relay")
        linearity = gateway["linearity"]
        per_token = gateway["lengths"][str(longest)]["per_token"]
        if linearity is None or per_token is None:
            found.append(Row(f"{name}: bytes on the wire per reply", "not measured", "", None))
            continue
        measured = f"{linearity:.2f} ({per_token:,.0f} B per token at {longest:,}"
        if row["gateway_over_relay"] is not None:
            measured += f"; ×{row['gateway_over_relay']:.2f} the relay's bytes"
        measured += ")"
        # RAGFlow's cumulative answers repeat the text so far in every chunk: quadratic
        # by the protocol, on the bare relay as on the gateway, so no target.
        cumulative = row.get("answer_mode") == "cumulative"
        if cumulative and relay and relay["linearity"] is not None:
            measured += f", the relay's {relay['linearity']:.2f}"
        found.append(
            Row(f"{name}: {what}",
                measured, "quadratic by the protocol" if cumulative else f"≤ {WIRE_LINEARITY}",
                None if cumulative else linearity <= WIRE_LINEARITY)
        )  # fmt: skip
    return found


def _sustained_rows(section: dict[str, Any]) -> list[Row]:
    """Each gateway row against the target (every chunk, no gap over 2× the upstream's
    interval), with the bare relay's figures beside it: where the relay misses too,
    the machine is the limit at that load, not the gateway."""
    limit = section["gap_limit_ms"]
    rate = 1000 / section["upstream"]["interval_ms"]
    relays = {r["flavour"]: r for r in section["rows"] if r["path"] == "relay"}
    found = []
    for row in section["rows"]:
        if row["path"] == "relay":
            continue
        gap = row["gap_ms"]
        if gap["max"] is None:
            found.append(Row(f"{row['flavour']}, {row['streams']:,} streams: sustained",
                             "not measured", "", None))  # fmt: skip
            continue
        where = "" if row["part"] == "per core" else f", {row['path']}"
        measured = (
            f"{row['chunks']:,}/{row['expected']:,} chunks, gap max {gap['max']:,.0f} ms "
            f"(p99.9 {gap['p99_9']:,.0f}), {row['gaps_over']:,} of {row['gaps']:,} over"
        )
        relay = relays.get(row["flavour"]) if row["part"] == "per core" else None
        if relay is not None and relay["gap_ms"]["max"] is not None:
            measured += (
                f"; relay: gap max {relay['gap_ms']['max']:,.0f} ms, "
                f"{relay['gaps_over']:,} over"
            )
        if row["streams_per_core"]:
            measured += f"; CPU: {row['streams_per_core']:,} streams per core"
        found.append(
            Row(f"{row['flavour']}{where}: {row['streams']:,} streams at {rate:.0f} tokens/s",
                measured, f"every chunk, no gap > {limit:.0f} ms", row["met"])
        )  # fmt: skip
    return found


def table(report: dict[str, Any]) -> str:
    lines = [
        f"Benchmarks of {report['date']} on {report['machine']}"
        + (" (quick: small loads, indicative only)" if report.get("quick") else ""),
        "",
        "| measured | result | target | met |",
        "|---|---|---|---|",
    ]
    lines += [row.markdown() for row in rows(report)]
    return "\n".join(lines)


# -- plots --------------------------------------------------------------------------------
def plots(report: dict[str, Any], out: Path) -> list[Path]:
    """The PNG plots of the sections that ran, written into `out`."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    sections = report["sections"]
    made = []
    stamp = f"{report['date']} · {report['machine']}"
    if "flavours" in sections:
        made.append(_ttft_cdfs(sections["flavours"], out / "ttft_cdf.png", stamp))
        made.append(_cpu_by_flavour(sections["flavours"], out / "cpu_by_flavour.png", stamp))
    if "concurrency" in sections:
        made.append(_cpu_per_chunk(sections["concurrency"], out / "cpu_per_chunk.png", stamp))
    if "idle" in sections:
        made.append(_memory(sections["idle"], out / "memory.png", stamp))
    if "webapp" in sections:
        made.append(_webapp_ttft(sections["webapp"], out / "webapp_ttft.png", stamp))
    if "wire" in sections:
        made.append(_wire_bytes(sections["wire"], out / "wire_bytes.png", stamp))
    return made


def _figure(panels: int = 1, width: float = 7.0, height: float = 4.0) -> tuple[Any, Any]:
    import matplotlib.pyplot as plt

    columns = min(panels, 3)
    rows_ = math.ceil(panels / columns)
    fig, axes = plt.subplots(
        rows_, columns, figsize=(width * columns / (2 if columns > 1 else 1), height * rows_),
        squeeze=False,
    )  # fmt: skip
    return fig, [ax for row in axes for ax in row]


def _save(fig: Any, path: Path, title: str, stamp: str) -> Path:
    import matplotlib.pyplot as plt

    fig.suptitle(title)
    fig.text(0.99, 0.005, stamp, ha="right", va="bottom", fontsize=7, color="grey")
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _ttft_cdfs(section: dict[str, Any], path: Path, stamp: str) -> Path:
    one = str(min(section["levels"]))
    flavours = [f for f in FLAVOURS if f in section["flavours"]] or list(section["flavours"])
    fig, axes = _figure(len(flavours))
    for ax, flavour in zip(axes, flavours, strict=False):
        for name, paths in section["flavours"][flavour].get(one, {}).items():
            samples = sorted(paths["ttft_ms"])
            if not samples:
                continue
            ys = [(i + 1) / len(samples) for i in range(len(samples))]
            ax.step(samples, ys, where="post", label=name, color=COLOURS.get(name))
        ax.set_title(flavour)
        ax.set_xlabel("time to first token, ms")
        ax.set_ylabel("share of replies")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in axes[len(flavours) :]:
        ax.set_visible(False)
    upstream = section["upstream"]
    title = (
        f"Time to first token at 1 stream (upstream: {upstream['deltas']} deltas "
        f"{upstream['delay_ms']:.0f} ms apart)"
    )
    return _save(fig, path, title, stamp)


def _cpu_by_flavour(section: dict[str, Any], path: Path, stamp: str) -> Path:
    most = str(max(section["levels"]))
    flavours = [f for f in FLAVOURS if f in section["flavours"]] or list(section["flavours"])
    fig, (ax,) = _figure()
    width = 0.38
    for offset, name in ((-width / 2, "relay"), (width / 2, "gateway")):
        values = [
            (section["flavours"][f].get(most, {}).get(name) or {}).get("cpu_us_per_chunk") or 0.0
            for f in flavours
        ]
        xs = [i + offset for i in range(len(flavours))]
        ax.bar(xs, values, width, label=name, color=COLOURS[name])
    ax.set_xticks(range(len(flavours)), flavours)
    ax.set_ylabel("server CPU per delivered chunk, µs")
    ax.grid(axis="y", alpha=0.3)
    ax.legend()
    return _save(fig, path, f"CPU per chunk at {_streams(most)}: gateway and bare relay", stamp)


def _cpu_per_chunk(section: dict[str, Any], path: Path, stamp: str) -> Path:
    fig, (ax,) = _figure()
    for name in ("relay", "gateway"):
        values = section["paths"][name]["cpu_us_per_chunk"]
        ax.plot(section["levels"], values, marker="o", label=name, color=COLOURS[name])
    ax.set_xscale("log")
    ax.set_xticks(section["levels"], [str(level) for level in section["levels"]])
    ax.minorticks_off()
    ax.set_xlabel("concurrent streams")
    ax.set_ylabel("server CPU per delivered chunk, µs")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path, "OpenAI SSE: CPU per chunk against concurrency", stamp)


def _memory(section: dict[str, Any], path: Path, stamp: str) -> Path:
    fig, (ax,) = _figure()
    for name, data in section["transports"].items():
        ax.plot(
            data["connections"],
            data["rss_mb"],
            marker="o",
            color=COLOURS.get(name),
            label=f"{name} ({data['kb_per_connection']:.1f} KB each)",
        )
    ax.set_xlabel("idle connections")
    ax.set_ylabel("server RSS, MB")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path, "Memory against idle connections, one process", stamp)


def _webapp_ttft(section: dict[str, Any], path: Path, stamp: str) -> Path:
    fig, (ax,) = _figure()
    for name, row in section["targets"].items():
        samples = sorted(row.get("ttft_ms") or [])
        if not samples:
            continue
        ys = [(i + 1) / len(samples) for i in range(len(samples))]
        ax.step(samples, ys, where="post", label=row["label"], color=COLOURS.get(name))
    ax.set_xscale("log")
    ax.set_xlabel("time to first token, ms (log scale)")
    ax.set_ylabel("share of replies")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    title = f"The web app's turn, {section['users']} users at once: time to first token"
    return _save(fig, path, title, stamp)


def _wire_bytes(section: dict[str, Any], path: Path, stamp: str) -> Path:
    lengths = section["upstream"]["lengths"]
    fig, (ax,) = _figure(width=8.0, height=5.0)
    colours = iter(["tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown",
                    "tab:pink", "tab:olive", "tab:cyan"])  # fmt: skip
    for name, row in section["rows"].items():
        colour = next(colours, "tab:grey")
        for where, style in (("gateway", "-"), ("relay", ":")):
            report = row["paths"].get(where)
            if report is None:
                continue
            totals = [report["lengths"][str(n)]["total_median"] for n in lengths]
            points = [(n, t) for n, t in zip(lengths, totals, strict=True) if t]
            if points:
                ax.plot(*zip(*points, strict=True), style, marker="o", color=colour,
                        label=f"{name} ({where})" if where == "gateway" else None)  # fmt: skip
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("reply length (tokens)")
    ax.set_ylabel("bytes on the wire per reply, both ways")
    ax.legend(fontsize="small", title="dotted: the bare relay", title_fontsize="small")
    ax.grid(True, which="both", alpha=0.3)
    return _save(fig, path, "Bytes on the wire against the reply's length", stamp)

"""The benchmark suite in one command: where the gateway stands against a bare
relay of each flavour, measured in the same run.

    python -m bench                 # the whole suite, a few minutes
    python -m bench --quick         # small loads, about three minutes: a smoke run
    python -m bench --only idle,flavours
    python -m bench --publish       # also into bench/results/latest/ (the README's plots)
    python -m bench --peer openwebui  # also Open WebUI 0.12.4 in the web app section
                                      # (installed into its own virtualenv on first use,
                                      # about 3 GB: never part of the test command)
    gateway bench ...               # the same, from the gateway's command

Sections, each a module of its own that also runs alone (`python -m bench.<module>`):

    flavours      bench_flavours.py   every flavour (OpenAI SSE, RAGFlow SSE and
                                      WebSocket, Nadoo WebSocket, Socket.IO) against a
                                      bare relay of the same shape: TTFT at 1 stream,
                                      CPU per chunk at many
    concurrency   bench_sse.py        OpenAI SSE, CPU per chunk from 1 to 200 streams
    idle          bench_idle.py       memory per idle connection, to 10,000
    disconnect    bench_disconnect.py a client gone mid-reply: time until the
                                      model server's request is closed
    signin        bench_signin.py     running replies, quiet and while 50 users sign
                                      in at once (password hashing off the loop)
    webapp        bench_webapp.py     the web app's turn, 50 users at once on one
                                      Socket.IO each: the gateway against a trivial
                                      python-socketio server (the client's share)
                                      and, with --peer openwebui, Open WebUI
    wire          bench_wire.py       bytes on the wire per reply of 50, 500 and
                                      2,000 tokens, every flavour, gateway and
                                      bare relay: linear in the reply's length?
    sustained     bench_sustained.py  250 streams at 50 tokens/s on every flavour,
                                      gateway and bare relay (every chunk, no gap
                                      over 40 ms?), and 1,000 on two replicas on
                                      Redis and PostgreSQL

It writes bench/results/<date-time>/report.json (every sample, the machine, the
date) and the PNG plots of `bench/report.py`, prints the table of results
against the targets, and shows a progress bar on the terminal.  The other
benches (`bench_socketio`, `bench_scale`, `bench_replay`, `bench_deflate`,
`bench_finish`, `bench_proxy`) keep their own commands; their figures are in
bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from bench import report as reports
from bench.common import ROOT, machine

RESULTS = ROOT / "bench" / "results"

@dataclass(frozen=True)
class Options:
    """What every section is run with."""

    quick: bool = False
    peer: str | None = None  # a server to run beside the gateway (the webapp section's)


Progress = Callable[[str], None]
Measure = Callable[[Options, Progress], dict[str, Any]]


def _flavours(options: Options, progress: Progress) -> dict[str, Any]:
    from bench import bench_flavours

    return bench_flavours.measure(quick=options.quick, progress=progress)


def _concurrency(options: Options, progress: Progress) -> dict[str, Any]:
    from bench import bench_sse

    levels = (1, 10, 50) if options.quick else (1, 10, 50, 100, 200)
    return bench_sse.measure(levels, rounds=1 if options.quick else 3, progress=progress)


def _idle(options: Options, progress: Progress) -> dict[str, Any]:
    from bench import bench_idle

    return bench_idle.measure(quick=options.quick, progress=progress)


def _disconnect(options: Options, progress: Progress) -> dict[str, Any]:
    from bench import bench_disconnect

    return bench_disconnect.measure(replies=10 if options.quick else 30, progress=progress)


def _signin(options: Options, progress: Progress) -> dict[str, Any]:
    from bench import bench_signin

    return bench_signin.measure(pairs=1 if options.quick else 3, progress=progress)


def _webapp(options: Options, progress: Progress) -> dict[str, Any]:
    from bench import bench_webapp

    return bench_webapp.measure(quick=options.quick, progress=progress, peer=options.peer)


def _sustained(options: Options, progress: Progress) -> dict[str, Any]:
    from bench import bench_sustained

    return bench_sustained.measure(quick=options.quick, progress=progress)


def _wire(options: Options, progress: Progress) -> dict[str, Any]:
    from bench import bench_wire

    return bench_wire.measure(quick=options.quick, progress=progress)


# name: (how many progress steps it reports, roughly; how to run it)
SECTIONS: dict[str, tuple[int, Measure]] = {
    "flavours": (25, _flavours),
    "concurrency": (15, _concurrency),
    "idle": (33, _idle),
    "disconnect": (1, _disconnect),
    "signin": (1, _signin),
    "webapp": (4, _webapp),
    "wire": (42, _wire),
    "sustained": (12, _sustained),
}


def run(names: list[str], quick: bool, out: Path, peer: str | None = None) -> dict[str, Any]:
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": machine(),
        "quick": quick,
        "peer": peer,
        "sections": {},
        "seconds": {},
    }
    total = sum(SECTIONS[name][0] for name in names)
    with tqdm(total=total, unit="step", disable=None, file=sys.stderr) as bar:
        for name in names:
            steps, measure = SECTIONS[name]
            done = 0

            def progress(what: str, name: str = name, steps: int = steps) -> None:
                nonlocal done
                bar.set_description(f"{name}: {what}"[:60])
                if done < steps:
                    bar.update(1)
                    done += 1

            started = time.monotonic()
            report["sections"][name] = measure(Options(quick, peer), progress)
            report["seconds"][name] = round(time.monotonic() - started, 1)
            bar.update(steps - done)  # a section that reported fewer steps
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small loads: a smoke run")
    parser.add_argument(
        "--only", default=",".join(SECTIONS), help=f"sections, comma-separated: {', '.join(SECTIONS)}"
    )
    parser.add_argument("--out", type=Path, default=None, help="directory for the report")
    parser.add_argument(
        "--peer",
        choices=["openwebui"],
        default=None,
        help="also run Open WebUI 0.12.4 in the webapp section (about 3 GB on first use)",
    )
    parser.add_argument(
        "--publish", action="store_true", help="also copy it all to bench/results/latest/"
    )
    args = parser.parse_args()
    names = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in names if name not in SECTIONS]
    if unknown or not names:
        parser.error(f"unknown section {', '.join(unknown)}; known: {', '.join(SECTIONS)}")
    out = args.out or RESULTS / time.strftime("%Y-%m-%d-%H%M")
    report = run(names, args.quick, out, args.peer)
    made = reports.plots(report, out)
    print(reports.table(report))
    written = ", ".join([*(p.name for p in made), "report.json"])
    print(f"\nreport and plots: {out}/ ({written})")
    if args.publish:
        latest = RESULTS / "latest"
        shutil.rmtree(latest, ignore_errors=True)
        shutil.copytree(out, latest)
        print(f"published to {latest}/")


if __name__ == "__main__":
    main()

"""`python -m bench` keeps working: its table and plots from a report of every section
(made up here, so the check is fast and exact), and two real sections run end to end
(the OpenAI SSE concurrency sweep and the web app's turn, quick) into a report and plots;
a lever measured by `bench_ab` on a flavour of `bench_flavours`.

No figure is asserted: benchmarks are read by people, as ratios against the
baselines measured in the same run (bench/RESULTS.md), never as timed tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench import report

ROOT = Path(__file__).resolve().parent.parent


def made_up() -> dict[str, Any]:
    def path(ttft: float, cpu: float | None) -> dict[str, Any]:
        return {"ttft_ms": [ttft, ttft + 1, ttft + 2], "cpu_us_per_chunk": cpu, "chunks": 64}

    flavours = {
        flavour: {
            "1": {"direct": path(20.0, None), "relay": path(21.0, 100.0), "gateway": path(21.2, 110.0)},
            "200": {"relay": path(30.0, 40.0), "gateway": path(31.0, 60.0)},
        }
        for flavour in report.FLAVOURS
    }
    return {
        "date": "2026-12-05 09:00",
        "machine": "2 cores, test",
        "quick": False,
        "sections": {
            "flavours": {"upstream": {"deltas": 64, "delay_ms": 20.0}, "levels": [1, 200], "flavours": flavours},
            "concurrency": {
                "upstream": {"deltas": 64, "delay_ms": 20.0},
                "levels": [1, 200],
                "paths": {
                    name: {"ttft_p50_ms": [1.0, 2.0], "ttft_p99_ms": [1.0, 2.0], "chunks": [64, 64],
                           "cpu_us_per_chunk": cpu}
                    for name, cpu in (("direct", [None, None]), ("relay", [100.0, 40.0]), ("gateway", [110.0, 44.0]))
                },
            },
            "idle": {
                "steps": [0, 10_000],
                "transports": {
                    "baseline": {"connections": [0, 10_000], "rss_mb": [30.0, 80.0], "kb_per_connection": 5.1, "opened": 10_000, "failed": 0},
                    "websocket": {"connections": [0, 10_000], "rss_mb": [90.0, 240.0], "kb_per_connection": 15.4, "opened": 10_000, "failed": 0},
                    "socketio": {"connections": [0, 10_000], "rss_mb": [90.0, 500.0], "kb_per_connection": 42.0, "opened": 9_990, "failed": 10},
                },
            },
            "webapp": {
                "users": 50, "flow": "webapp", "upstream": {"deltas": 49, "delay_ms": 20.0},
                "targets": {
                    name: {"label": label, "users": 50, "complete": complete, "ttft_ms": [ttft, ttft * 2],
                           "ttft_p50_ms": ttft, "ttft_p99_ms": ttft * 2, "cpu_ms_per_reply": cpu, "rss_mb": 80.0}
                    for name, label, complete, ttft, cpu in (
                        ("trivial", "trivial server", 50, 30.0, 4.0), ("gateway", "gateway", 50, 40.0, 7.0),
                        ("openwebui", "Open WebUI 0.12.4", 49, 2900.0, 110.0))
                },
                "gateway_share_ms": {"p50": 10.0, "p99": 20.0}, "cpu_openwebui_over_gateway": 15.7,
            },
            "signin": {
                "streams": 20, "signins": 50, "pairs": 3, "interval_ms": 20.0,
                "cases": {
                    "quiet": {"ttft_p50_ms": 32.5, "ttft_p99_ms": 38.9, "gap_max_ms": 22.5, "gap_p99_ms": 22.5,
                              "signin_p50_ms": None, "signin_max_ms": None},
                    "busy": {"ttft_p50_ms": 41.0, "ttft_p99_ms": 50.9, "gap_max_ms": 22.9, "gap_p99_ms": 22.9,
                             "signin_p50_ms": 894.0, "signin_max_ms": 1734.0},
                },
            },
            "disconnect": {"replies": 30, "closed_p50_ms": 1.2, "closed_p99_ms": 2.5, "closed_max_ms": 2.7, "samples_ms": [1.2]},
            "sustained": {
                "upstream": {"deltas": 250, "interval_ms": 20.0}, "turns": 2, "ramp_s": 1.0, "clients": 2,
                "gap_limit_ms": 40.0,
                "rows": [
                    {"part": part, "flavour": "nadoo-ws", "path": path, "streams": streams, "chunks": chunks,
                     "expected": 125_000, "gaps": 124_500, "gaps_over": over,
                     "gap_ms": {"p50": 20.0, "p99": 24.0, "p99_9": p999, "max": worst},
                     "streams_per_core": per_core, "met": met}
                    for part, path, streams, chunks, over, p999, worst, per_core, met in (
                        ("per core", "relay", 250, 125_000, 3, 30.0, 56.0, 345, False),
                        ("per core", "gateway", 250, 125_000, 0, 25.0, 39.0, 259, True),
                        ("scale-out", "2 replicas", 1000, 124_000, 900, 150.0, 335.0, 378, False),
                    )
                ],
            },
            "wire": {
                "upstream": {"lengths": [50, 500, 2000], "delay_ms": 1.0}, "replies": 3,
                "rows": {
                    name: {"flavour": name.split()[0], "answer_mode": mode, "gateway_over_relay": 1.02,
                           "paths": {path: {"lengths": {str(n): {"total_median": n * per * (n / 100 if mode == "cumulative" else 1) + 300,
                                                                "per_token": per, "failed": 0} for n in (50, 500, 2000)},
                                            "marginal": [per, per * lin], "linearity": lin}
                                     for path in ("relay", "gateway")}}
                    for name, mode, per, lin in (("nadoo-ws", None, 95.6, 1.02), ("ragflow-sse cumulative", "cumulative", 7332.3, 4.57),
                                                 ("socketio", None, 193.9, 1.2))
                },
            },
        },
    }  # fmt: skip


def test_the_table_reads_each_target_from_its_section() -> None:
    rows = {row.what: row for row in report.rows(made_up())}
    added = rows["nadoo-ws: TTFT p50 added to the bare relay's, 1 stream"]
    assert added.measured.startswith("+0.20 ms") and added.met is True
    cpu = rows["socketio: CPU per chunk ÷ the bare relay's, 200 streams"]
    assert cpu.measured == "×1.50" and cpu.met is False
    sweep = rows["OpenAI SSE: CPU per chunk ÷ the bare relay's, 200 streams"]
    assert sweep.met is True and sweep.measured.startswith("×1.10")
    assert rows["OpenAI SSE: CPU per chunk ÷ the bare relay's, 1 stream"].met is None
    assert rows["websocket: memory per idle connection"].met is True
    assert rows["socketio: memory per idle connection"].met is False
    assert rows["socketio: idle connections held by one process"].met is False
    assert rows["baseline: memory per idle connection"].met is None
    complete = rows["web app, 50 users, gateway: replies complete in 60 s"]
    assert complete.measured == "50/50" and complete.met is True
    assert rows["web app, 50 users, Open WebUI 0.12.4: replies complete in 60 s"].met is None
    ttft = rows["web app, 50 users, gateway: TTFT p50 / p99"]
    assert ttft.measured == "40.0 / 80.0 ms (the gateway's share +10.0 / +20.0)" and ttft.met is False
    below = rows["web app, 50 users: Open WebUI's CPU per reply ÷ the gateway's"]
    assert below.measured == "×15.7" and below.met is False
    gap = rows["20 running replies while 50 users sign in: longest gap between chunks"]
    assert gap.measured == "22.9 ms (quiet: 22.5)" and gap.target == "< 40 ms" and gap.met is True
    closed = rows["openai-sse: client gone → upstream request closed, worst of 30"]
    assert closed.measured == "2.7 ms (p50 1.2)" and closed.met is True
    wire = "bytes on the wire per added token, 500→2,000 ÷ 50→500"
    linear = rows[f"nadoo-ws: {wire}"]
    assert linear.measured == "1.02 (96 B per token at 2,000; ×1.02 the relay's bytes)" and linear.met is True
    assert rows[f"socketio: {wire}"].met is False
    # Quadratic by the protocol (each chunk repeats the text so far): no target, the relay beside it.
    cumulative = rows[f"ragflow-sse cumulative: {wire}"]
    assert cumulative.met is None and cumulative.measured.endswith("the relay's 4.57")
    sustained = rows["nadoo-ws: 250 streams at 50 tokens/s"]
    assert sustained.met is True and sustained.target == "every chunk, no gap > 40 ms"
    assert sustained.measured == (
        "125,000/125,000 chunks, gap max 39 ms (p99.9 25), 0 of 124,500 over; "
        "relay: gap max 56 ms, 3 over; CPU: 259 streams per core"
    )
    assert rows["nadoo-ws, 2 replicas: 1,000 streams at 50 tokens/s"].met is False
    table = report.table(made_up())
    assert table.splitlines()[0] == "Benchmarks of 2026-12-05 09:00 on 2 cores, test"
    assert "| websocket: memory per idle connection | 15.4 KB (10,000 open, 0 failed) | ≤ 16 KB | ✓ |" in table


def test_every_plot_is_drawn(tmp_path: Path) -> None:
    made = report.plots(made_up(), tmp_path)
    names = sorted(p.name for p in made)
    assert names == [
        "cpu_by_flavour.png", "cpu_per_chunk.png", "memory.png", "ttft_cdf.png", "webapp_ttft.png",
        "wire_bytes.png",
    ]
    for png in made:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


@pytest.mark.timeout(300)
def test_a_quick_section_runs_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "results"
    # Through `gateway bench`, which hands its arguments to `python -m bench`.
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "bench", "--quick", "--only", "concurrency,webapp",
         "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    written = json.loads((out / "report.json").read_text())
    section = written["sections"]["concurrency"]
    assert section["levels"] == [1, 10, 50]
    assert all(n > 0 for n in section["paths"]["gateway"]["chunks"])
    assert (out / "cpu_per_chunk.png").stat().st_size > 10_000
    assert "OpenAI SSE: CPU per chunk ÷ the bare relay's, 50 streams" in done.stdout
    # The web app's turn, 10 users on the gateway and on the trivial server: every reply whole.
    webapp = written["sections"]["webapp"]
    assert {name: row["complete"] for name, row in webapp["targets"].items()} == {
        "trivial": 10, "gateway": 10
    }
    assert (out / "webapp_ttft.png").stat().st_size > 10_000
    unknown = subprocess.run(
        [sys.executable, "-m", "bench", "--only", "nope"], cwd=ROOT, capture_output=True, text=True
    )
    assert unknown.returncode == 2 and "unknown section nope" in unknown.stderr


def test_gateway_bench_is_the_suite_with_its_own_arguments() -> None:
    def gateway(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gateway", *args], cwd=ROOT, capture_output=True, text=True
        )

    helped = gateway("bench", "--help")
    assert helped.returncode == 0 and helped.stdout.startswith("usage: python -m bench")
    assert "--peer" in helped.stdout and "--only" in helped.stdout
    unknown = gateway("bench", "--only", "nope")
    assert unknown.returncode == 2 and "unknown section nope" in unknown.stderr
    # Only `bench` passes arguments on: any other command still refuses what it does not take.
    refused = gateway("token", "--user", "u", "--bogus")
    assert refused.returncode == 2
    assert refused.stderr == "gateway: unrecognized arguments: --bogus (see gateway --help)\n"
    assert "bench" in gateway("--help").stdout


def test_gateway_bench_without_the_bench_extra_says_how_to_install_it(tmp_path: Path) -> None:
    # tqdm hidden from the interpreter, as in a gateway installed without the extra.
    (tmp_path / "sitecustomize.py").write_text(
        "import sys\n"
        "class Hide:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'tqdm':\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, Hide())\n"
    )
    hidden = subprocess.run(
        [sys.executable, "-m", "gateway", "bench", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
    )
    assert hidden.returncode == 2, hidden.stderr
    assert hidden.stdout == "" and "Traceback" not in hidden.stderr
    [line] = hidden.stderr.splitlines()
    assert "needs the bench extra (tqdm missing)" in line and "--extra bench" in line


def test_the_flavours_bench_takes_a_reply_of_any_length() -> None:
    # `--deltas`: each reply's fixed costs shared over more chunks; as many deltas
    # at one stream in all, in at least 5 rounds.
    from bench.bench_flavours import plan

    assert plan(False).deltas == 32 and plan(False).rounds_one == 30
    longer = plan(False, deltas=256)
    assert (longer.deltas, longer.rounds_one, longer.streams) == (256, 5, 200)
    assert plan(False, deltas=64).rounds_one == 15
    assert longer.text.split() == [f"tok{index}" for index in range(256)]


def test_idle_memory_is_what_one_more_connection_costs_past_the_first_step() -> None:
    # The first step pays for what start-up left (memory it freed, reused by the
    # first sockets; tables grown once): the headline is the cost past it.
    from bench.bench_idle import marginal, table

    kb = [50_000, 60_000, 80_000, 100_000]  # RSS in KB at 0, 1,000, 2,000, 3,000
    assert marginal([0, 1000, 2000, 3000], kb) == 20.0
    assert marginal([0, 3000], [50_000, 110_000]) == 20.0  # one step: from zero
    row = {"connections": [0, 1000, 2000, 3000], "rss_mb": [k / 1024 for k in kb],
           "kb_per_connection": 20.0, "kb_per_connection_from_zero": 16.67,
           "kb_per_connection_fit": 16.8, "opened": 3000, "failed": 0}
    shown = table({"steps": [0, 1000, 2000, 3000], "transports": {"websocket": row}})
    assert "| websocket | 3,000 | 48.8 → 97.7 | 20.0 | 16.7 | 16.8 | – | ≤ 16 KB | 3,000 / 0 |" in shown
    # A report from before the split: its figure was from zero.
    del row["kb_per_connection_from_zero"]
    assert "| – | 20.0 | 16.8 |" in table({"steps": [0, 1000, 2000, 3000], "transports": {"websocket": row}})


def test_a_lever_is_measured_on_any_flavour() -> None:
    # `bench_ab --flavour nadoo-ws`: the revision's gateway and the working tree's,
    # each with users of its own, the same Nadoo load on both, a pair each way.
    from bench import bench_ab

    found = bench_ab.measure("HEAD", streams=4, pairs=2, flavour="nadoo-ws")
    assert found["flavour"] == "nadoo-ws" and found["pairs"] == 2
    for side in ("before", "after"):
        assert found["cpu_us_per_chunk"][side] > 0
        assert found["ttft_p50_ms"][side] > 0
    assert found["ratio_min"] <= found["ratio_median"] <= found["ratio_max"]


def test_the_trickle_bench_reads_one_event_at_every_read_size() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.bench_trickle", "--rounds", "1", "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["event_bytes"] > 1_000_000
    assert [row["read_bytes"] for row in result["rows"]] == [4096, 1024, 256, 64]
    assert result["rows"][0]["ratio"] == 1.0

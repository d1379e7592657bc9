"""Finishing a reply costs the same in a chat of 2 messages as in one of 2,000.

    python -m bench.bench_finish [--rounds 300]

For each backend (SQLite file, PostgreSQL on 127.0.0.1:5432) a chat of N
messages is stored, then the reply's completion is written the way a reply's
runner writes its end (`ReplyRunner._store_end`, `finish_reply`: one
transaction with the message row, the chat's `updated_at` and its title if
still the default),
`--rounds` times.  Reported: µs per finish, and the ratio of
N=2000 to N=2 measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg

from bench.common import machine, percentile
from gateway.store import ChatRecord, MessageRecord, Store, open_store

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


async def finish_cost(store: Store, size: int, rounds: int) -> tuple[float, float]:
    chat_id = str(uuid.uuid4())
    chat = ChatRecord(chat_id, "bench", "t", f"m{size - 1}", 0, 0)
    messages = [
        MessageRecord(
            chat_id,
            f"m{i}",
            f"m{i - 1}" if i else None,
            "assistant" if i % 2 else "user",
            "some earlier text " * 20,
            True if i % 2 else None,
            {"timestamp": i},
        )
        for i in range(size)
    ]
    await store.insert_chat(chat, messages)
    last = messages[-1]
    samples = []
    for i in range(rounds):
        last.content, last.done, last.draft = f"final reply {i} " * 30, True, None
        began = time.perf_counter()
        await store.finish_reply(last, i, "a title", ("", "New Chat"))
        samples.append(time.perf_counter() - began)
    return percentile(samples, 50) * 1e6, percentile(samples, 99) * 1e6


async def run(rounds: int) -> None:
    print(f"# finish cost — {time.strftime('%Y-%m-%d')} — {machine()}; {rounds} finishes per row\n")
    print("| backend | messages | p50 µs | p99 µs |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        name = f"gw_bench_{uuid.uuid4().hex[:8]}"
        admin = await asyncpg.connect(PG_ADMIN)
        await admin.execute(f'CREATE DATABASE "{name}"')
        try:
            for backend, url in (
                ("sqlite", ""),
                ("postgresql", f"postgresql://postgres@127.0.0.1:5432/{name}"),
            ):
                store = await open_store(url, Path(tmp))
                results = {}
                for size in (2, 2000):
                    results[size] = await finish_cost(store, size, rounds)
                    print(
                        f"| {backend} | {size} | {results[size][0]:.0f} | {results[size][1]:.0f} |"
                    )
                print(
                    f"| {backend} | **2000 ÷ 2** | ×{results[2000][0] / results[2][0]:.2f} | ×{results[2000][1] / results[2][1]:.2f} |"
                )
                await store.close()
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await admin.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=300)
    asyncio.run(run(parser.parse_args().rounds))


if __name__ == "__main__":
    main()

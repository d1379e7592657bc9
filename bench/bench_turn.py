"""What a turn in a long chat costs the event loop: the chat's history built from its
rows, then the turn planned (`turns.plan_turn`: the question and its placeholder
put in the tree) and the branch the model is sent, for chats of 2 to 20,000
messages.

    python -m bench.bench_turn [--runs 20]

All of it is synchronous Python on the loop: while it runs, every other reply on
the replica waits (a chunk due meanwhile is late by as much).  The rows stand in
for what the store returns (one branch of alternating user and assistant
messages, 200 characters each); no database is involved, only the gateway's own
code.  Reported: the median over RUNS turns, ms, per chat size.
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid

from bench.common import machine
from gateway.chat import tree
from gateway.chat.chats import new_chat
from gateway.chat.shapes import history_of
from gateway.chat.turns import conversation_for, plan_turn
from gateway.commands import Ask, ReplyTarget
from gateway.store.records import MessageRecord

SIZES = (2, 200, 2_000, 20_000)


def rows(chat_id: str, size: int) -> list[MessageRecord]:
    return [
        MessageRecord(chat_id, f"m{i}", f"m{i - 1}" if i else None,
                      "assistant" if i % 2 else "user", "some earlier text " * 11,
                      True if i % 2 else None, {"timestamp": i})
        for i in range(size)
    ]  # fmt: skip


def turn_ms(size: int, runs: int) -> float:
    chat = new_chat("bench", "bench")
    chat.current_id = f"m{size - 1}"
    stored = rows(chat.id, size)
    samples = []
    for _ in range(runs):
        began = time.perf_counter()
        history = history_of(chat, stored)
        ask = Ask(
            model="bench", messages=[], chat_id=chat.id, parent_id=history["currentId"],
            user_message={"id": str(uuid.uuid4()), "role": "user", "content": "next?",
                          "timestamp": 0},
            targets=(ReplyTarget(str(uuid.uuid4()), "bench"),), rooms=(), params={},
        )  # fmt: skip
        turn = plan_turn(history, ask, 0)
        conversation_for(tree.path_to(turn.history, turn.question_id or ""), ask.messages)
        samples.append(time.perf_counter() - began)
    return statistics.median(samples) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    print(f"# A turn's work on the loop — {time.strftime('%Y-%m-%d %H:%M')} — {machine()}\n")
    print("| messages in the chat | ms per turn (median) |\n|---|---|")
    for size in SIZES:
        print(f"| {size:,} | {turn_ms(size, args.runs):.3f} |")


if __name__ == "__main__":
    main()

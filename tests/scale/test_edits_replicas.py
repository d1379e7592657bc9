"""A chat's edits, one at a time across replicas.

An edit reads a chat's tree, merges the change and writes it.  Two at once,
each on its own replica, would each write what the other did not see: two
siblings moved under each other at once stored a parentId cycle, and of a
text and a rating sent at once one was lost.  On one replica a lock per chat
makes them one after the other (`tests/api/test_probed_rest.py`); with
replicas on Redis the lock is Redis's (`bus/locks.py`), so the same holds when
each edit reaches another replica.
"""

from __future__ import annotations

from collections.abc import Callable

from tests.api.test_probed_rest import (
    a_text_and_a_rating_at_once,
    new_user,
    siblings_moved_under_each_other,
)
from tests.gatewayproc import GatewayProcess


async def test_two_siblings_moved_under_each_other_on_two_replicas_store_no_cycle(
    cluster: Callable[..., GatewayProcess],
) -> None:
    one, two = cluster("one"), cluster("two")
    await siblings_moved_under_each_other(one, two, new_user("replica-moves"), 12)


async def test_a_text_and_a_rating_sent_to_two_replicas_at_once_are_both_kept(
    cluster: Callable[..., GatewayProcess],
) -> None:
    one, two = cluster("one"), cluster("two")
    await a_text_and_a_rating_at_once(one, two, new_user("replica-fields"), 12)

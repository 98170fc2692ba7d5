"""The largest sizes a topology file may ask for, and why.

Each limit keeps a run inside the memory and the number formats of one machine; a file that
asks for more is refused by ``ringflow validate`` with the limit and its reason, before
anything is allocated. The reasons are the ``*_WHY`` texts, shown in the messages.
"""

from __future__ import annotations

MAX_PARTITIONS = 1024
"""Partitions per topic."""
MAX_PARTITIONS_WHY = (
    "each partition is a ring with its own state in every consumer group and checkpoint, and "
    "more than one per consumer instance gains nothing"
)

MAX_RING_RECORDS = 10_000_000
"""Records all bounded rings may hold at once: partitions x (capacity + retention), summed
over the topics."""
MAX_RING_RECORDS_WHY = (
    "a record held in a ring takes about 150 to 200 bytes, so 10,000,000 of them are 1.5 to "
    "2 GB of memory"
)

MAX_INSTANCES = 256
"""Instances of one producer or one consumer."""
MAX_INSTANCES_WHY = "each instance is a task with its own buffers, state and connections"

MAX_BATCH = 100_000
"""Records in one producer batch."""
MAX_BATCH_WHY = "a batch is held in memory whole and crosses a gateway as one message"

MAX_EVENTS = 1_000_000_000_000
"""Events of one producer, and of a whole run (``--events``)."""
MAX_EVENTS_WHY = "at a million events a second that is more than eleven days of running"

MAX_CATALOGUE = 1_000_000
"""Videos, pages or films in a workload's catalogue."""
MAX_CATALOGUE_WHY = "every producer keeps the catalogue in memory"

MAX_IDS = 2**53
"""Users of a workload."""
MAX_IDS_WHY = "ids are drawn from one random double, which cannot reach every id beyond 2^53"

MAX_MESSAGE_SIZE = 256 * 1024 * 1024
"""Bytes in one websocket message between nodes."""
MAX_MESSAGE_SIZE_WHY = "a message is held in memory whole, on both sides"


def limit_problem(value: float, limit: int, what: str, why: str) -> str | None:
    """Return the message for ``value`` above ``limit`` (None when it is within).

    Args:
        value: What the file asks for.
        limit: The largest value allowed.
        what: What is counted, for the message (``partitions``).
        why: The reason for the limit.
    """
    if value <= limit:
        return None
    return f"at most {limit:,} {what}, got {value:,}: {why}"

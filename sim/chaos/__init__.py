"""Deterministic simulation testing: seeded fault schedules over the real actors on a virtual
clock, each checked against the invariants and replayable from its seed (``ringflow chaos``)."""

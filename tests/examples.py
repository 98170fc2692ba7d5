"""The example topologies, and the video site in the batches of a real deployment.

``video-site.yaml`` moves batches of up to 5,000 records after a 200 ms linger: the fastest
simulation. Tests of crashes, kills and trimming want many batches, so that what they strike
has many moments to land in: they use its producers as ``video-site-split.yaml`` has them, up
to 1,000 records after 50 ms. Batching never changes the aggregates or the digest.
"""

from __future__ import annotations

import re
from pathlib import Path

import attrs

from sim.run import load_topology
from topology import Topology

EXAMPLES = Path(__file__).resolve().parent.parent / "topology" / "examples"
SMALL_BATCHES = {"max_batch": 1000, "linger": 0.05}


def small_batches(spec: Topology) -> Topology:
    """``spec`` with every producer in batches of at most 1,000 records and a 50 ms linger."""
    producers = {name: attrs.evolve(p, **SMALL_BATCHES) for name, p in spec.producers.items()}
    return attrs.evolve(spec, producers=producers)


def video_site_in_small_batches() -> Topology:
    """The video-site example with the producers of ``small_batches``."""
    return small_batches(load_topology(EXAMPLES / "video-site.yaml"))


def small_batch_file(folder: Path) -> Path:
    """Write the video-site example with the producers of ``small_batches`` to ``folder``
    (for tests that run the command on a file) and return its path."""
    text = (EXAMPLES / "video-site.yaml").read_text()
    for field, value in SMALL_BATCHES.items():
        text, found = re.subn(rf"(?m)^(    {field}:) \S+", rf"\1 {value}", text)
        assert found == 1, f"no {field} in the example"
    path = folder / "video-site.yaml"
    path.write_text(text)
    return path

"""The ``social`` workload of seed 003: a follow graph whose follower counts follow a power
law, who is online at the start, and the posts and presence changes it makes."""

from __future__ import annotations

import numpy as np
import pytest

from sim.run import REGISTRY
from sim.social import Post, Presence, Social, SocialGraph, SocialParams
from topology import Topology

PARAMS = SocialParams(users=20_000, max_followers=10_000, min_followers=3, online=0.05)


def test_follower_counts_fall_with_rank_from_the_celebrities_to_the_floor() -> None:
    graph = SocialGraph(PARAMS, seed=1)
    ranked = graph.celebrities(-1)  # every user, most followed first
    counts = graph.follower_counts(ranked)
    assert len(ranked) == PARAMS.users
    assert sorted(ranked.tolist()) == list(range(PARAMS.users))
    assert counts[0] == 10_000
    assert counts[1] == 5_000  # zipf 1: the second has half
    assert (np.diff(counts) <= 0).all()
    assert counts[-1] == 3  # the floor
    above = graph.celebrities(1_000)
    assert graph.follower_counts(above).min() > 1_000
    assert len(above) == int(np.count_nonzero(counts > 1_000)) == 9
    assert ranked[0] != 0  # ranks are shuffled over the ids


def test_an_author_s_followers_are_the_same_in_every_process_of_a_run() -> None:
    graph, again, other = (SocialGraph(PARAMS, seed=s) for s in (1, 1, 2))
    star = int(graph.celebrities(5_000)[0])
    followers = graph.followers(star)
    assert len(followers) == 10_000
    assert len(np.unique(followers)) == len(followers)
    assert (np.diff(followers) > 0).all()  # ascending
    assert star not in followers
    assert followers.min() >= 0
    assert followers.max() < PARAMS.users
    assert np.array_equal(again.followers(star), followers)
    assert not np.array_equal(other.followers(star), followers)
    small = int(graph.celebrities(-1)[-1])
    assert len(graph.followers(small)) == 3


def test_about_the_online_fraction_is_online_at_the_start_and_always_the_same() -> None:
    graph = SocialGraph(PARAMS, seed=1)
    users = np.arange(PARAMS.users)
    online = graph.online_at_start(users)
    assert 0.04 < online.mean() < 0.06
    assert np.array_equal(SocialGraph(PARAMS, seed=1).online_at_start(users), online)
    assert not np.array_equal(SocialGraph(PARAMS, seed=2).online_at_start(users), online)
    everyone = SocialGraph(SocialParams(users=100, max_followers=50, online=1.0), seed=1)
    assert everyone.online_at_start(np.arange(100)).all()


def test_posts_and_presence_changes_are_made_in_the_mix_asked_with_unique_post_ids() -> None:
    made = [
        Social(PARAMS, 7, "p", instance, instance).generate(10_000, 0.0, 0.01)
        for instance in (0, 1)
    ]
    posts = [event for streams in made for event in streams["post"]]
    moves = [event for streams in made for event in streams["presence"]]
    assert all(isinstance(event, Post) for event in posts)
    assert all(isinstance(event, Presence) for event in moves)
    assert 0.75 < len(posts) / 20_000 < 0.85  # presence: 0.2 of the events
    assert len({event.post_id for event in posts}) == len(posts)
    assert {event.online for event in moves} == {0, 1}
    again = Social(PARAMS, 7, "p", 0, 0).generate(10_000, 0.0, 0.01)
    assert again["post"] == made[0]["post"]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"users": 1}, "$.producers.site.params.users: must be >= 2"),
        ({"users": 100, "max_followers": 100}, "max_followers: must be between 0 and users - 1"),
        ({"min_followers": 60_000}, "min_followers: must be at most max_followers"),
        ({"online": 1.5}, "online: must be a fraction between 0 and 1"),
        ({"zipf": -1}, "zipf: must be >= 0"),
    ],
)
def test_a_social_producer_is_checked(params: dict[str, object], message: str) -> None:
    data = {
        "name": "social",
        "topics": {
            "posts": {"partitions": 2, "key": "author_id", "allow_unconsumed": True},
            "presence": {"allow_unconsumed": True},
        },
        "producers": {
            "site": {
                "workload": "social",
                "events": 1_000,
                "topics": {"post": "posts", "presence": "presence"},
                "params": params,
            }
        },
    }
    problems = REGISTRY.check(Topology.from_dict(data))
    assert any(message in problem for problem in problems), problems

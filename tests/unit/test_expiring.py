"""The one cache type behind every "remember this for a while" table."""

import pytest

from hubcache.expiring import ExpiringCache


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_entry_is_there_until_its_time_is_up_then_gone():
    clock = Clock()
    cache: ExpiringCache[str, int] = ExpiringCache(10, ttl=60, clock=clock)
    cache.put("a", 1)
    clock.now += 59.9
    assert cache.get("a") == 1 and "a" in cache
    clock.now += 0.1
    assert cache.get("a") is None and "a" not in cache
    assert len(cache) == 0  # dropped when met, not kept as a dead entry


def test_a_put_may_give_its_own_lifetime():
    clock = Clock()
    cache: ExpiringCache[str, str] = ExpiringCache(10, ttl=60, clock=clock)
    cache.put("token", "t", ttl=5)
    clock.now += 5
    assert cache.get("token") is None


def test_it_never_holds_more_than_its_bound_and_drops_the_oldest_first():
    cache: ExpiringCache[int, int] = ExpiringCache(3, ttl=60, clock=Clock())
    for i in range(5):
        cache.put(i, i)
    assert len(cache) == 3
    assert [cache.get(i) for i in range(5)] == [None, None, 2, 3, 4]


def test_putting_a_key_again_makes_it_the_newest():
    cache: ExpiringCache[str, int] = ExpiringCache(2, ttl=60, clock=Clock())
    cache.put("a", 1)
    cache.put("b", 2)
    cache.put("a", 3)
    cache.put("c", 4)  # over the bound: b, not a, is the oldest now
    assert cache.get("a") == 3 and cache.get("b") is None and cache.get("c") == 4


def test_expired_entries_are_pruned_as_new_ones_come_without_being_asked_for():
    clock = Clock()
    cache: ExpiringCache[int, int] = ExpiringCache(1000, ttl=1, clock=clock)
    for i in range(100):
        cache.put(i, i)
    clock.now += 2
    for i in range(100, 200):
        cache.put(i, i)
    assert len(cache) == 100  # the hundred that expired are gone, though nobody looked them up


def test_pop_forgets_an_entry():
    cache: ExpiringCache[str, int] = ExpiringCache(2, ttl=60, clock=Clock())
    cache.put("a", 1)
    cache.pop("a")
    cache.pop("never there")
    assert cache.get("a") is None


@pytest.mark.parametrize("max_entries, ttl", [(0, 60), (10, 0)])
def test_a_cache_that_could_hold_nothing_is_a_mistake(max_entries, ttl):
    with pytest.raises(ValueError):
        ExpiringCache(max_entries, ttl)

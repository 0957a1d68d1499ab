"""The per-process room access cache (rooms/access.py): a connection to a known
room does no database query, and a changed room setting is never stale beyond
the documented bound (at once for saves through this process, within
ROOM_ACCESS_CACHE_SECONDS for changes made elsewhere)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.conf import settings
from django.test import override_settings

from rooms import access, tokens
from rooms.auth import RoomAccess
from rooms.models import Room

pytestmark = pytest.mark.django_db(transaction=True)


def dorm(**overrides: Any) -> Any:
    return override_settings(DORM={**settings.DORM, **overrides})


@database_sync_to_async
def _save(slug: str, **fields: Any) -> None:
    room = Room.objects.get(slug=slug)
    for name, value in fields.items():
        setattr(room, name, value)
    room.save()


@database_sync_to_async
def _update_without_signals(slug: str, **fields: Any) -> None:
    # What another process (or raw SQL) does, as far as this process can tell.
    Room.objects.filter(slug=slug).update(**fields)


async def test_a_known_room_is_read_once_then_from_the_cache(connect: Any) -> None:
    await database_sync_to_async(Room.objects.create)(slug="known")
    misses = access.cache.misses
    await connect("known", userId="a")
    await connect("known", userId="b")
    await connect("known", userId="c")
    assert access.cache.misses == misses + 1
    assert access.cache.get("known") == RoomAccess(kind="whiteboard")


async def test_making_a_room_private_takes_effect_at_the_next_connection(connect: Any) -> None:
    await database_sync_to_async(Room.objects.create)(slug="closing")
    await connect("closing", userId="a")  # cached as public
    await _save("closing", private=True)
    refused = await connect("closing", userId="b", expect_welcome=False)
    assert await refused.closed_with() == (4403, "room is private: a token is required")
    token, _ = tokens.issue("member", "closing", "write")
    assert (await connect("closing", token=token)).welcome["userId"] == "member"


async def test_lowering_max_connections_takes_effect_at_the_next_connection(connect: Any) -> None:
    # (A room without a limit counts no places, so it starts with one.)
    await database_sync_to_async(Room.objects.create)(slug="shrinks", max_connections=3)
    await connect("shrinks", userId="a")
    await connect("shrinks", userId="b")
    await _save("shrinks", max_connections=2)
    full = await connect("shrinks", userId="c", expect_welcome=False)
    assert await full.closed_with() == (4409, "room is full")


async def test_a_room_created_after_a_not_found_lookup_is_read_again(connect: Any) -> None:
    # The first connection caches "no such room" (public, refused 4404 by the
    # actor: no auto-creation); the room is then created private (REST API,
    # admin): the cached entry must not admit anyone.
    with dorm(AUTO_CREATE_ROOMS=False):
        missing = await connect("later", userId="a", expect_welcome=False)
        assert (await missing.closed_with())[0] == 4404
        assert access.cache.get("later") is not None
        await database_sync_to_async(Room.objects.create)(slug="later", private=True)
        refused = await connect("later", userId="b", expect_welcome=False)
        assert await refused.closed_with() == (4403, "room is private: a token is required")


async def test_anonymous_read_setting_change_takes_effect(connect: Any) -> None:
    with dorm(ALLOW_ANONYMOUS=False):
        await database_sync_to_async(Room.objects.create)(slug="board", settings={"anonymous": "read"})
        assert (await connect("board", userId="viewer")).welcome["type"] == "welcome"
        await _save("board", settings={})
        refused = await connect("board", userId="viewer2", expect_welcome=False)
        assert (await refused.closed_with())[0] == 4401


async def test_a_change_made_elsewhere_is_seen_within_the_ttl(connect: Any) -> None:
    with dorm(ROOM_ACCESS_CACHE_SECONDS=0.3):
        await database_sync_to_async(Room.objects.create)(slug="remote")
        await connect("remote", userId="a")
        await _update_without_signals("remote", private=True)  # no post_save: like another process
        # Within the bound the old value may still be used ...
        assert access.cache.get("remote") is not None
        await asyncio.sleep(0.35)
        # ... past it, never.
        refused = await connect("remote", userId="b", expect_welcome=False)
        assert (await refused.closed_with())[0] == 4403


async def test_a_zero_ttl_queries_every_connection(connect: Any) -> None:
    with dorm(ROOM_ACCESS_CACHE_SECONDS=0):
        await database_sync_to_async(Room.objects.create)(slug="uncached")
        await connect("uncached", userId="a")
        await _update_without_signals("uncached", private=True)
        refused = await connect("uncached", userId="b", expect_welcome=False)
        assert (await refused.closed_with())[0] == 4403
        assert access.cache.get("uncached") is None


async def test_deleting_a_room_drops_its_entry(connect: Any) -> None:
    await database_sync_to_async(Room.objects.create)(slug="gone", private=True)
    token, _ = tokens.issue("m", "gone", "write")
    await connect("gone", token=token)
    assert access.cache.get("gone") is not None
    await database_sync_to_async(Room.objects.filter(slug="gone").delete)()
    assert access.cache.get("gone") is None


def test_a_load_that_raced_an_invalidation_is_not_stored() -> None:
    cache = access.AccessCache()
    generation = cache.generation()  # a load starts ...
    cache.invalidate("r")  # ... the room is saved meanwhile ...
    cache.put("r", RoomAccess(private=False), generation, 60.0)  # ... the load's (old) row arrives
    assert cache.get("r") is None
    cache.put("r", RoomAccess(private=True), cache.generation(), 60.0)
    assert cache.get("r") == RoomAccess(private=True)


def test_entries_expire_and_the_cache_stays_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    cache = access.AccessCache()
    cache.put("r", RoomAccess(), cache.generation(), 0.0)
    assert cache.get("r") is None  # expired at once
    monkeypatch.setattr(access, "MAX_ENTRIES", 50)
    for i in range(120):
        cache.put(f"r{i}", RoomAccess(), cache.generation(), 60.0)
    assert len(cache._entries) == 50
    assert cache.get("r119") is not None and cache.get("r0") is None  # the oldest went first


async def test_a_room_saved_inside_a_transaction_is_invalidated_after_the_commit() -> None:
    from django.db import transaction

    await database_sync_to_async(Room.objects.create)(slug="txn")

    @database_sync_to_async
    def save_in_transaction() -> None:
        with transaction.atomic():
            room = Room.objects.get(slug="txn")
            room.private = True
            room.save()
            # A connection on another database connection reads the old row
            # now and caches it (the generation is already the new one).
            access.cache.put("txn", RoomAccess(private=False), access.cache.generation(), 60.0)
            assert access.cache.get("txn") is not None
        # The commit drops it again.

    await save_in_transaction()
    assert access.cache.get("txn") is None
    assert (await access.db_load_access("txn")).private

"""One embedded store per data dir: the first process starts it, the others join it."""

from __future__ import annotations

import json
import subprocess

import redis

from bridge.store.embedded_share import STATE_FILE, EmbeddedShare, running


def test_second_process_joins_and_owner_cleans_up(tmp_path):
    first = EmbeddedShare(tmp_path, emulator_url="http://127.0.0.1:8080/emulator")
    second = EmbeddedShare(tmp_path, emulator_url="http://127.0.0.1:8081/emulator")
    store = first.open()
    try:
        joined = second.open()
        assert first.owner and not second.owner
        assert joined == store == running(tmp_path)
        assert joined.emulator_url == "http://127.0.0.1:8080/emulator"  # the owner's
        redis.Redis.from_url(joined.url).set("k", "v")
        assert redis.Redis.from_url(store.url).get("k") == b"v"
        second.close()  # a process that joined leaves the store running
        assert redis.Redis.from_url(store.url).ping()
    finally:
        first.close()
    assert not (tmp_path / STATE_FILE).exists() and running(tmp_path) is None


def test_a_dead_owners_store_is_shut_down_and_replaced(tmp_path):
    """An owner killed with -9 leaves its Valkey running (own session) and store.json behind:
    the next process stops that orphan (it flushes its AOF) instead of starting a second
    server on the same files, and keeps the data."""
    orphan = EmbeddedShare(tmp_path)
    state = orphan.open()
    redis.Redis.from_url(state.url).set("kept", "1")
    gone_pid = subprocess.Popen(["true"])
    gone_pid.wait()
    (tmp_path / STATE_FILE).write_text(json.dumps({**state.__dict__, "owner_pid": gone_pid.pid}))
    assert running(tmp_path) is None
    successor = EmbeddedShare(tmp_path)
    try:
        fresh = successor.open()
        assert successor.owner and fresh.url != state.url
        assert orphan.server is not None and orphan.server.proc is not None
        assert orphan.server.proc.wait(10) == 0  # SHUTDOWN
        assert redis.Redis.from_url(fresh.url).get("kept") == b"1"
    finally:
        successor.close()

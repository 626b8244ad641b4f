"""The typed job record: parsed once from the stored hash, and the Lua scripts agree with it."""

from __future__ import annotations

import re
from importlib import resources

import pytest

from bridge.model import (
    JOB_FIELDS,
    DeliveryState,
    Job,
    JobStatus,
    UpstreamRef,
    job_view,
    new_job,
    result_inline,
    wire_fields,
)

# redis.call('HSET'|'HGET'|..., KEYS[1], <args>) in a script whose KEYS[1] is the job hash
HASH_CALL = re.compile(
    r"redis\.call\('(HSET|HGET|HMGET|HINCRBY|HDEL|HEXISTS)',\s*KEYS\[1\],([^)]*)\)"
)
# status / delivery state literals the scripts compare with
COMPARED = re.compile(r"\b(status|state) [~=]= '([a-z_]+)'")


def _scripts() -> dict[str, str]:
    lua = resources.files("bridge.store").joinpath("lua")
    return {p.name: p.read_text() for p in lua.iterdir() if p.name.endswith(".lua")}


def _job_hash_scripts() -> dict[str, str]:
    """The scripts whose KEYS[1] is the job hash (their header says so)."""
    return {n: t for n, t in _scripts().items() if re.search(r"KEYS: 1 job hash", t)}


def _args(text: str) -> list[str]:
    return [a.strip() for a in text.replace("\n", " ").split(",") if a.strip()]


def _hash_fields(name: str, text: str) -> list[tuple[str, str | None]]:
    """(field, value literal or None) named in the job-hash calls of one script."""
    out: list[tuple[str, str | None]] = []
    for command, rest in HASH_CALL.findall(text):
        args = _args(rest)
        step = 2 if command in ("HSET", "HINCRBY") else 1
        for i in range(0, len(args), step):
            if m := re.fullmatch(r"'([A-Za-z_]+)'", args[i]):
                value = args[i + 1] if step == 2 and i + 1 < len(args) else None
                literal = re.fullmatch(r"'([^']*)'", value or "")
                out.append((m.group(1), literal.group(1) if literal else None))
    return out


# the store's own bookkeeping (idempotent commits, leases for poke.lua)
STORE_ONLY_FIELDS = {"commit_id", "lease_until"}


def test_every_field_the_lua_scripts_name_is_a_job_field():
    scripts = _job_hash_scripts()
    assert {"create.lua", "commit.lua", "cancel.lua", "redeliver.lua"} <= set(scripts)
    named = {f for n, t in scripts.items() for f, _ in _hash_fields(n, t)}
    assert {"tenant", "status", "updated_at", "delivery_attempts", "max_attempts"} <= named
    assert sorted(named - JOB_FIELDS - STORE_ONLY_FIELDS) == []


def test_every_status_the_lua_scripts_write_or_compare_is_an_enum_value():
    statuses, states = {s.value for s in JobStatus}, {s.value for s in DeliveryState}
    for name, text in _job_hash_scripts().items():
        for field, value in _hash_fields(name, text):
            if field == "status" and value is not None:
                assert value in statuses, (name, value)
            if field == "delivery_state" and value is not None:
                assert value in states, (name, value)
        for which, value in COMPARED.findall(text):
            assert value in (statuses if which == "status" else states), (name, value)


def _job(**kw) -> Job:
    job = new_job("t", "echo", '{"a":1}', "https://h/cb", '{"m":1}', 30.5)
    job.stored("job_00a" + "0" * 24, 1_700_000_000_123)
    for k, v in kw.items():
        setattr(job, k, v)
    return job


def test_hash_round_trip_and_absent_fields():
    job = _job(
        status=JobStatus.COMPLETED,
        upstream_ref=UpstreamRef("r1", {"poll_url": "http://u/f/r1"}),
        result_size=12,
        delivery_state=DeliveryState.PENDING,
        next_attempt_at=1_700_000_001_000,
    )
    stored = {k: str(v) for k, v in job.to_hash().items()}  # Redis gives strings back
    assert Job.from_hash(stored) == job
    assert "completed_at" not in stored and Job.from_hash(stored).completed_at is None
    assert job.deadline_ms == 30500 and job.deadline_at == job.created_at + 30500
    cleared = {**stored, **{k: str(v) for k, v in wire_fields({"last_error": None}).items()}}
    assert Job.from_hash(cleared).last_error is None  # "" reads back as absent


def test_creation_fields_leave_id_and_times_to_the_store_and_defaults_out():
    job = new_job("t", "echo", "{}", "https://h/cb", "null", 1)
    fields = job.creation_fields()
    assert not {"id", "created_at", "updated_at", "upstream_ref"} & set(fields)
    assert fields["status"] == "queued" and fields["deadline_ms"] == 1000
    # at their defaults: not stored (less store memory per job), read back the same
    assert not {"metadata", "delivery_state", "polls", "submits", "step_errors"} & set(fields)
    back = Job.from_hash({k: str(v) for k, v in fields.items()})
    assert (back.metadata, back.delivery_state, back.polls) == ("null", "none", 0)
    assert back.inputs == job.inputs and back.callback_url == job.callback_url


def test_apply_mirrors_a_commit():
    job = _job()
    job.apply({"status": JobStatus.FAILED, "polls": 3, "last_error": None}, 5000, completed=True)
    assert (job.status, job.polls, job.updated_at, job.completed_at) == ("failed", 3, 5000, 5000)


def test_a_hash_written_before_upstream_ref_still_reads():
    legacy = {k: str(v) for k, v in _job(status=JobStatus.RUNNING).to_hash().items()}
    legacy |= {"upstream_id": "r9", "poll_url": "http://u/futures/r9"}
    ref = Job.from_hash(legacy).upstream_ref
    assert ref == UpstreamRef("r9", {"poll_url": "http://u/futures/r9"})


def test_view_is_the_api_object():
    view = job_view(_job(upstream_ref=UpstreamRef("r1")))
    assert view["status"] == "queued" and view["upstream_id"] == "r1"
    assert view["created_at"] == "2023-11-14T22:13:20.123Z" and view["completed_at"] is None
    assert view["metadata"] == {"m": 1} and view["error"] is None
    assert view["delivery"] == {
        "state": "none",
        "attempts": 0,
        "last_status_code": None,
        "last_attempt_at": None,
        "next_attempt_at": None,
    }


@pytest.mark.parametrize(("size", "inline"), [(None, True), (0, True), (10, True), (11, False)])
def test_inline_or_link_by_bytes(size, inline):
    assert result_inline(_job(result_size=size), 10) is inline


def test_upstream_ref_json_is_checked():
    ref = UpstreamRef("op/1", {"url": "http://x", "n": 2})
    assert UpstreamRef.from_json(ref.to_json()) == ref
    with pytest.raises(ValueError):
        UpstreamRef.from_json('["not", "an", "object"]')

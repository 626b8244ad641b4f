"""Shared test code: constants and config builders, stacks (loopback uvicorn) and the
in-process API (httpx over ASGI), problem and log helpers. Fixtures stay in conftest.py
and are built from these; tests import helpers from here, not from conftest."""

"""The store's Lua scripts, loaded one way: each is `lua/_prelude.lua` (the store's
clock), then the files it includes (`lua/_lists.lua`), then `lua/<name>.lua`, and is run
by EVALSHA. A store that lost its
scripts (restarted, or SCRIPT FLUSH) answers NOSCRIPT; this is handled here only:
every script of the client is loaded again and the calls that found none are sent
once more."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from typing import Any

from redis.exceptions import NoScriptError

from bridge.store.client import StoreClient

PRELUDE = "_prelude"


def lua_source(name: str) -> str:
    return resources.files("bridge.store").joinpath(f"lua/{name}.lua").read_text()


@dataclass(frozen=True)
class Script:
    name: str
    source: str  # the prelude, then the script
    sha: str


Call = tuple[Script, list[str], list[Any]]  # (script, keys, args)


class Scripts:
    """The scripts one client runs."""

    def __init__(self, redis: StoreClient) -> None:
        self.redis = redis
        self._loaded: list[Script] = []

    def load(self, name: str, *includes: str) -> Script:
        """The script `name` after the prelude and the `includes` (lua/<include>.lua, shared
        functions such as _lists.lua's)."""
        parts = [lua_source(n) for n in (PRELUDE, *includes, name)]
        source = "\n".join(parts)
        script = Script(name, source, hashlib.sha1(source.encode()).hexdigest())
        self._loaded.append(script)
        return script

    async def call(self, script: Script, keys: list[str], args: list[Any]) -> Any:
        """One script call (no pipeline, so any client runs it)."""
        try:
            return await self.redis.evalsha(script.sha, len(keys), *keys, *args)
        except NoScriptError:
            await self._load_all()
            return await self.redis.evalsha(script.sha, len(keys), *keys, *args)

    async def run(self, calls: list[Call]) -> list[Any]:
        """Calls in one pipeline (no SCRIPT EXISTS round trip): a reply or an exception
        per call."""
        replies = await self._pipeline(calls)
        missing = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
        if missing:
            await self._load_all()
            again = await self._pipeline([calls[i] for i in missing])
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        return replies

    async def _pipeline(self, calls: list[Call]) -> list[Any]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for script, keys, args in calls:
                pipe.evalsha(script.sha, len(keys), *keys, *args)
            return await pipe.execute(raise_on_error=False)

    async def _load_all(self) -> None:
        for script in self._loaded:
            await self.redis.script_load(script.source)

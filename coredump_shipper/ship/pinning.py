"""Each core's pod, looked up once when the core is found and pinned beside it (podrecord.py).

The look-up starts as soon as the pipeline finds a core, not when a worker gets to it: behind a
backlog or an S3 outage the pod may be gone by then. Every upload attempt takes the pod from the
look-up begun at discovery, else from the record (a retry, or a restart), and looks it up itself only
when neither has it. A core with no pod found is not pinned: a later attempt may still find it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from coredump_shipper.core.facts import CoreFacts
from coredump_shipper.core.file import CoreFile
from coredump_shipper.errors import SkipFile
from coredump_shipper.kube import podrecord
from coredump_shipper.ship.podidentity import Match, PodIdentity
from coredump_shipper.stopping import cancel_and_wait

log = logging.getLogger(__name__)
PARALLEL_LOOKUPS = 4
MAX_TRACKED = 4096  # look-ups of cores that vanished before a worker took them are forgotten past this

# (inode the look-up was for, whether it ran, its match)
Found = tuple[int, bool, Match | None]


class PodPins:
    def __init__(self, identity: PodIdentity, gather: Callable[[CoreFile], CoreFacts]) -> None:
        self.identity = identity
        self.gather = gather
        self._lookups: dict[str, asyncio.Task[Found]] = {}
        self._limit = asyncio.Semaphore(PARALLEL_LOOKUPS)
        self._said_unwritable = False

    def found(self, path: Path) -> None:
        """A core was just found: start its look-up (never waits)."""
        if path.name in self._lookups:
            return
        if len(self._lookups) >= MAX_TRACKED:
            self._lookups = {name: task for name, task in self._lookups.items() if not task.done()}
        self._lookups[path.name] = asyncio.create_task(self._at_discovery(path), name="pod-pin")

    async def match(self, core: CoreFile, facts: CoreFacts) -> Match | None:
        """The pod of this core for one upload attempt: the same one on every attempt once pinned."""
        lookup = self._lookups.pop(core.name, None)
        if lookup is not None:
            inode, looked_up, match = await lookup
            if looked_up and inode == core.identity.inode:
                return match
        pinned = await asyncio.to_thread(
            podrecord.read, core.path.parent, core.name, core.identity.inode, core.size
        )
        if pinned is not None:
            return Match(*pinned)
        return await self._look_up_and_pin(core, facts)

    async def _at_discovery(self, path: Path) -> Found:
        async with self._limit:
            try:
                with CoreFile(path) as core:
                    pinned = await asyncio.to_thread(
                        podrecord.read, path.parent, core.name, core.identity.inode, core.size
                    )
                    if pinned is not None:  # found again after a restart: already pinned
                        return core.identity.inode, True, Match(*pinned)
                    facts = await asyncio.to_thread(self.gather, core)
                    return core.identity.inode, True, await self._look_up_and_pin(core, facts)
            except (SkipFile, OSError) as error:
                # Not a core we can read: the worker says why when it gets to it.
                log.debug("pod of %r not looked up at discovery: %s", str(path), error)
                return 0, False, None

    async def _look_up_and_pin(self, core: CoreFile, facts: CoreFacts) -> Match | None:
        match = await self.identity.find(facts)
        if match is None:
            return None
        try:
            await asyncio.to_thread(
                podrecord.write,
                core.path.parent,
                core.name,
                core.identity.inode,
                core.size,
                match.pod,
                match.container,
            )
        except OSError as error:
            level = logging.DEBUG if self._said_unwritable else logging.WARNING
            self._said_unwritable = True
            log.log(
                level,
                "pod of %r not pinned beside it (%s): after a restart it is looked up again",
                str(core.path),
                error.strerror,
            )
        return match

    async def close(self) -> None:
        await cancel_and_wait(list(self._lookups.values()))
        self._lookups.clear()

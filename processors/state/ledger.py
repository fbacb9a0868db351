"""What a sink has already done per action, so a re-released or re-read action is not created twice.

The ledger is a compacted topic per CRM, partitioned like that CRM's due topic: the entry for an
action read from due partition p is written to ledger partition p. A sink holds the entries of
the partitions it owns (a partitioned `Table`), read back from the topic when they are assigned to
it, and writes each outcome there before the due offset is committed, so the next owner of a
partition knows everything its previous owner did.

The due topic is keyed by company (`due_key`), so every entry reconciliation needs for one
booking, and for every other booking of the same company, sits in one partition: the one the
booking's actions are delivered from. Besides `company/action_id` → outcome, each created object
has a claim entry `company/object:<object id>` → action id, so "does another action's entry name
this object?" is one lookup (`claimant`), wherever in the company's history that action was.

Keys are tenant-scoped (`company/action_id`, SPEC §11). Actions planned before ids were
tenant-scoped are also looked up under their bare id, so those in flight at an upgrade stay
idempotent. Entries are kept `keep_ms` (default 7 days, longer than any re-release or deferral
window): in memory by the table's generations, on the broker by the topic's `retention.ms`.
Entries written before the due topic was keyed by company stay where they were written (the due
partition of their action id), so records already on the due topic find them; an action that
crosses the upgrade through the retry topic is reconciled anyway (it carries `attempt > 0`, see
`processors.stages.deliver`), and the claims of objects created before the upgrade are missing,
which the creation-time window and the same-event sibling lookup cover (docs/reliability.md).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Awaitable, Callable, Iterable

from confluent_kafka import Message

from processors.kafka.read import read_to_end
from processors.state.table import Table

log = logging.getLogger(__name__)

Write = Callable[[int, bytes, bytes], Awaitable[Awaitable[Any]]]


def ledger_key(company_id: str, action_id: str) -> str:
    return f"{company_id}/{action_id}"


def claim_key(company_id: str, object_id: str) -> str:
    """The entry naming the action a CRM object was recorded for (action ids are hex: no clash)."""
    return f"{company_id}/object:{object_id}"


def due_key(company_id: str) -> bytes:
    """The due topic's record key: a company's actions, and so its ledger entries, share a partition."""
    return company_id.encode()


class Ledger:
    def __init__(
        self,
        *,
        topic: str,
        write: Write,
        reader_config: dict[str, Any],
        keep_ms: int,
        clock: Callable[[], float] = time.time,
        read_timeout: float = 120.0,
    ) -> None:
        self.topic = topic
        self._read_timeout = read_timeout
        self._write = write
        self._reader_config = reader_config
        self._table: Table[str] = Table(partitioned=True, keep_ms=keep_ms, clock=clock)

    def get(self, partition: int, company_id: str, action_id: str) -> str | None:
        found = self._table.get(ledger_key(company_id, action_id), partition)
        return found if found is not None else self._table.get(action_id, partition)

    async def put(self, partition: int, company_id: str, action_id: str, value: str) -> Awaitable[Any]:
        """Known at once to this worker; durable when the returned ack resolves."""
        key = ledger_key(company_id, action_id)
        self._table.put(key, value, partition)
        return await self._write(partition, key.encode(), value.encode())

    def claimant(self, partition: int, company_id: str, object_id: str) -> str | None:
        """The action whose entry names this CRM object, if any."""
        return self._table.get(claim_key(company_id, object_id), partition)

    async def claim(self, partition: int, company_id: str, object_id: str, action_id: str) -> Awaitable[Any]:
        """Record that `object_id` is `action_id`'s (before its outcome entry: a crash between the
        two leaves an intent, whose reconciliation finds the object claimed by itself)."""
        key = claim_key(company_id, object_id)
        self._table.put(key, action_id, partition)
        return await self._write(partition, key.encode(), action_id.encode())

    def __len__(self) -> int:
        return len(self._table)

    async def hold(self, partitions: Iterable[int]) -> None:
        """Keep exactly these partitions, read back to their end; raises when a read fails (the
        stage then delivers nothing from them, `processors.kafka.consumer`)."""
        wanted = self._table.hold(partitions)
        if wanted:
            await asyncio.get_running_loop().run_in_executor(None, self._read, wanted)
        self._table.loaded(wanted)

    def ready(self, partition: int) -> bool:
        return self._table.ready(partition)

    def _read(self, partitions: list[int]) -> None:
        def load(msg: Message) -> None:
            key, value = msg.key(), msg.value()
            if key is None or self._table.expired(msg.timestamp()[1]):
                return
            try:
                self._table.put(key.decode(), value.decode() if value is not None else None, msg.partition())
            except UnicodeDecodeError:
                # Not one of ours (entries are ASCII ids): it cannot name an action, so it cannot hide one.
                log.warning("ledger record ignored", extra={"topic": self.topic, "partition": msg.partition(), "offset": msg.offset()})

        read_to_end(self._reader_config, self.topic, load, partitions=partitions, timeout=self._read_timeout)

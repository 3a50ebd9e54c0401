"""``Store.admit`` and ``Store.complete`` as sequences of the store's own calls, for a
store that cannot run them as one atomic step (Redis: the in-flight body and the
outcome need the seq the log gives)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TYPE_CHECKING

from gateway.store.records import Admitted, Completion, DedupStatus, EntityVerdict, Intake

if TYPE_CHECKING:
    from gateway.store import Store


async def admit_in_steps(store: Store, intake: Intake) -> Admitted:
    """What a step did is undone when a later one fails (an appended event stays)."""
    dedup = None
    if intake.key:
        dedup = await store.remember(intake.key, intake.body_hash, intake.hold_s)
        if dedup.status is not DedupStatus.NEW:
            return Admitted(dedup)
    applied = False
    try:
        decision = None
        if intake.entity:
            decision = await store.apply_entity_seq(intake.entity, intake.entity_seq)
            if decision.verdict is EntityVerdict.GAP and intake.key:
                await store.forget(intake.key)
            if decision.verdict is not EntityVerdict.APPLY:
                return Admitted(dedup, decision)
            applied = True
        seq = await store.append_event(intake.user, intake.event)
        inflight = await store.track_inflight(
            intake.message_id, intake.backend, intake.work(seq), intake.lease_s
        )
    except BaseException:
        if applied:
            await store.release_entity_seq(intake.entity, intake.entity_seq)
        if intake.key:
            await store.forget(intake.key)
        raise
    return Admitted(dedup, decision, seq, inflight)


async def complete_in_steps(store: Store, completion: Completion) -> int:
    seq = await store.append_event(completion.user, completion.event)
    writes: list[Awaitable[object]] = []
    if completion.key and completion.outcome is not None:
        outcome = completion.outcome(seq)
        writes.append(store.record_outcome(completion.key, outcome, completion.ttl_s))
    if completion.inflight:
        writes.append(store.settle_inflight(completion.inflight))
    await asyncio.gather(*writes)
    return seq

"""``dialog-gateway dead-letters``: list the messages that used up their delivery
attempts, and queue one again (the gateway's workers then deliver it)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from gateway.config import GatewayConfig
from gateway.delivery import QueuedWork
from gateway.store import DeadLetter
from gateway.store.connect import connect_store
from gateway.translate import message_to_dict

DEFAULT_LIMIT = 100


def describe(dead: DeadLetter) -> dict[str, object]:
    """One dead letter as JSON: where it was going, for whom, why it died, and the message."""
    out: dict[str, object] = {
        "entry_id": dead.entry_id,
        "backend": dead.backend,
        "message_id": dead.message_id,
        "attempts": dead.attempts,
        "error": dead.error,
        "dead_at": datetime.fromtimestamp(dead.dead_at_s, UTC).isoformat(),
    }
    try:
        work = QueuedWork.decode(dead.body)
    except ValueError:
        out["unreadable"] = True
        return out
    out["user"] = work.user
    out["message"] = message_to_dict(work.message)
    return out


async def dead_letters(
    config: GatewayConfig, base_dir: Path, *, replay: str = "", limit: int = DEFAULT_LIMIT
) -> list[str]:
    """Lines to print: the dead letters as JSON lines, or the outcome of a replay."""
    store = await connect_store(
        data_dir=base_dir / config.data_dir,
        redis_url=config.redis_url,
        max_attempts=config.max_delivery_attempts,
    )
    try:
        if replay:
            if not await store.replay_dead_letter(replay):
                raise LookupError(f"no dead letter {replay!r}")
            return [f"queued {replay} again; the gateway delivers it when its back-end is up"]
        return [json.dumps(describe(d)) for d in await store.dead_letters(limit)]
    finally:
        await store.close()

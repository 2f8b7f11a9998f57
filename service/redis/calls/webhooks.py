"""The calls of the webhook deliveries: release_due.lua, settle_delivery.lua."""

from __future__ import annotations

from service.redis.calls import Scripts, text
from service.redis.keys import Keys


async def release_due(scripts: Scripts, keys: Keys, now: float, most: int) -> float | None:
    """Moves up to ``most`` deliveries whose retry is due back into the deliveries stream;
    answers when the next retry is due (None when none waits)."""
    reply = await scripts.run("release_due", [keys.webhook_retries, keys.webhooks], [now, most])
    return float(text(reply)) if reply else None


async def settle(
    scripts: Scripts,
    keys: Keys,
    group: str,
    entry_id: bytes,
    retry: tuple[bytes, float] | None = None,
) -> int:
    """Acks and deletes a delivery of ``group``; with ``retry`` (its member and when),
    puts it in the retry set in the same step. Answers how many were acked."""
    args: list[object] = [group, entry_id]
    if retry is not None:
        member, at = retry
        args += [member, repr(at)]
    reply = await scripts.run("settle_delivery", [keys.webhook_retries, keys.webhooks], args)
    return int(reply)

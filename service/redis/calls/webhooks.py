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
    note: tuple[bytes, str, int, float] | None = None,
) -> int:
    """Acks and deletes a delivery of ``group``; with ``retry`` (its member and when),
    puts it in the retry set in the same step; with ``note`` (the record's key, what became
    of the job's post: 'delivered', 'retrying' or 'given up', its attempt, when), writes it
    into the record while it exists. Answers how many were acked."""
    names: list[object] = [keys.webhook_retries, keys.webhooks]
    args: list[object] = [group, entry_id]
    if note is not None:
        record, outcome, attempt, at = note
        names.append(record)
        args += [outcome, attempt, repr(at)]
    if retry is not None:
        member, when = retry
        args += [member, repr(when)]
    reply = await scripts.run("settle_delivery", names, args)
    return int(reply)

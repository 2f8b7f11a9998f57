"""Every Redis key and stream name the service uses, in one place."""

from __future__ import annotations

from dataclasses import dataclass

from .settings import Settings


@dataclass(frozen=True, slots=True)
class Keys:
    stream: str
    group: str
    record_prefix: str

    @classmethod
    def from_settings(cls, settings: Settings) -> Keys:
        return cls(settings.stream, settings.group, settings.key_prefix)

    @property
    def dead_letters(self) -> str:
        """Stream of jobs given up on, with the reason."""
        return self.stream + ":dead"

    @property
    def webhooks(self) -> str:
        """Stream of webhook deliveries due (record keys)."""
        return self.stream + ":webhooks"

    @property
    def webhook_retries(self) -> str:
        """Sorted set of failed deliveries, scored by when to try them again."""
        return self.stream + ":webhooks:retry"

    @property
    def completions(self) -> str:
        """Pub/sub channel: record keys of jobs that just ended, comma-separated."""
        return self.stream + ":done"

    @property
    def started(self) -> str:
        """Pub/sub channel: record keys of jobs that just started running, comma-separated."""
        return self.stream + ":started"

    def write_probe(self, consumer: str) -> str:
        """A short-lived key a replica writes to see that Redis takes writes (readiness)."""
        return f"{self.stream}:probe:{consumer}"

    def prediction_id(self, record_key: bytes | str) -> str:
        key = record_key.decode() if isinstance(record_key, bytes) else record_key
        return key.removeprefix(self.record_prefix)

    def idempotency(self, key: str) -> str:
        """The prediction id (and body digest) an Idempotency-Key was first used for."""
        return f"{self.stream}:idem:{key}"

    def record(self, prediction_id: str) -> str:
        """Hash holding one job record; it expires after the result TTL."""
        return self.record_prefix + prediction_id

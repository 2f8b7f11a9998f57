"""Every Redis key and channel name the service uses, in one place, and the partitions.

The queue is one or more partitions. A partition is one stream with its consumer group,
and every key a script touches for the jobs of that partition: their records, their
idempotency keys, its dead letters and webhook deliveries, its channels. All of them
share one hash tag, so on a Redis Cluster each script call stays in one slot. A partition
has three streams, one per priority (`PRIORITIES`: high, normal, low), read through
consumer groups of the same name; every other key of the partition serves all three. With
tenants (API_KEYS_FILE), each tenant has its own three streams in every partition
(`<base>:t:<name>`, `...:high`, `...:low`): its quota counts them, and the workers read the
tenants in weighted turns (`service.jobs.reads`). The default tenant (no keys file, or API_KEY)
keeps the plain streams. A job's
partition is a pure function of its prediction id (`Partitions.of`), so any replica
finds its record without a look-up.

On one node with one partition (the default there) the names are the plain ones of
earlier versions (`predictions`, `prediction:<id>`), so an existing queue is kept.
"""

from __future__ import annotations

import functools
import zlib
from dataclasses import dataclass, field, replace

from service.job import new_id

#: The priorities of queued jobs, highest first; a partition has one stream each.
PRIORITIES = ("high", "normal", "low")


@dataclass(frozen=True, slots=True)
class Keys:
    """The names of one partition's keys, seen from one of its priorities (the stream is
    that priority's; every other key is the partition's)."""

    #: "predictions", or "{predictions:<tag>}" for a partition with a hash tag.
    base: str
    group: str
    record_prefix: str
    #: The command the scripts announce with: PUBLISH, or SPUBLISH on a cluster.
    publish: str = "PUBLISH"
    index: int = 0
    #: "normal" (the stream named ``base``, as before priorities), "high" or "low".
    priority: str = "normal"
    #: The tenant whose streams these are ("": the default tenant, the plain streams).
    tenant: str = ""
    #: The stream's name (set from the fields above).
    stream: str = field(init=False, default="")

    def __post_init__(self) -> None:
        name = f"{self.base}:t:{self.tenant}" if self.tenant else self.base
        if self.priority != "normal":
            name = f"{name}:{self.priority}"
        object.__setattr__(self, "stream", name)

    @property
    def priorities(self) -> tuple[Keys, Keys, Keys]:
        """The partition seen from each of its tenant's priorities, highest first."""
        return _priorities(self)

    def of_tenant(self, tenant: str) -> Keys:
        """The partition seen from ``tenant``'s normal stream."""
        if tenant == self.tenant and self.priority == "normal":
            return self
        return _of_tenant(self, tenant)

    @property
    def backlog(self) -> str:
        """Hash: jobs queued or running (entries not yet acked), by model."""
        return self.base + ":backlog"

    @property
    def dead_letters(self) -> str:
        """Stream of jobs given up on, with the reason."""
        return self.base + ":dead"

    @property
    def webhooks(self) -> str:
        """Stream of webhook deliveries due (record keys)."""
        return self.base + ":webhooks"

    @property
    def webhook_retries(self) -> str:
        """Sorted set of failed deliveries, scored by when to try them again."""
        return self.base + ":webhooks:retry"

    def to_replica(self, replica: str) -> str:
        """Channel: what one replica waits for of this partition's jobs: that they ended,
        started or have new chunks (a `Told` letter, then record keys, comma-separated),
        told only to the replicas in a record's watchers (`tell.lua`)."""
        return f"{self.base}:to:{replica}"

    def chunks(self, prediction_id: str) -> str:
        """Stream of a streaming job's chunks (ids 0-1, 0-2, ...: their numbers); it expires
        with the record."""
        return self.record(prediction_id) + ":chunks"

    def write_probe(self, consumer: str) -> str:
        """A short-lived key a replica writes to see that Redis takes writes (readiness)."""
        return f"{self.base}:probe:{consumer}"

    def prediction_id(self, record_key: bytes | str) -> str:
        key = record_key.decode() if isinstance(record_key, bytes) else record_key
        return key.removeprefix(self.record_prefix)

    def idempotency(self, key: str) -> str:
        """The prediction id (and body digest) an Idempotency-Key was first used for."""
        return f"{self.base}:idem:{key}"

    def record(self, prediction_id: str) -> str:
        """Hash holding one job record; it expires after the result TTL."""
        return self.record_prefix + prediction_id


@functools.lru_cache(maxsize=4096)
def _priorities(keys: Keys) -> tuple[Keys, Keys, Keys]:
    return tuple(replace(keys, priority=p) for p in PRIORITIES)  # type: ignore[return-value]


@functools.lru_cache(maxsize=4096)
def _of_tenant(keys: Keys, tenant: str) -> Keys:
    return replace(keys, priority="normal", tenant=tenant)


def idempotency_name(tenant: str, key: str, item: int | None = None) -> str:
    """What an Idempotency-Key is stored under (`Keys.idempotency`): the client's key (1-255
    visible ASCII, so never a space) with its tenant and, for an input of a bulk submit, its
    index, joined by spaces; no two (tenant, key, item) share a name. A single submit of the
    default tenant keeps the bare key (no space)."""
    if item is None:
        return f"{tenant} {key}" if tenant else key
    return f"{tenant} {key} {item}"


@dataclass(frozen=True, slots=True)
class Names:
    """What every key of the queue is named from: STREAM, GROUP and KEY_PREFIX."""

    stream: str = "predictions"
    group: str = "workers"
    key_prefix: str = "prediction:"

    @property
    def meta(self) -> str:
        """JSON of what the stored queue was made with: partition count and hash tags."""
        return f"{self.stream}:meta"

    @property
    def files(self) -> str:
        """Sorted set: the prediction ids that have files in the blob store, scored by when
        they are due to go (their record's expiry); swept by every replica."""
        return f"{self.stream}:files"

    @property
    def batches(self) -> str:
        """Sorted set: the OpenAI-compatible batches not ended yet, scored by when they were
        made; every replica moves them on."""
        return f"{self.stream}:openai:batches"

    def openai(self, object_id: str) -> str:
        """Hash: one object of the OpenAI-compatible batch API (an uploaded file, or a
        batch), in a slot of its own (its id a hash tag), as the keys of a batch below."""
        return f"{self.stream}:openai:{{{object_id}}}"

    def batch_lines(self, batch_id: str) -> str:
        """List: what each line of a batch's input became (JSON), in order."""
        return self.openai(batch_id) + ":lines"

    def batch_output(self, batch_id: str) -> str:
        """Hash: each succeeded line's answer by its number, until the batch ends."""
        return self.openai(batch_id) + ":output"

    def batch_errors(self, batch_id: str) -> str:
        """Hash: each failed or refused line's answer by its number, until the batch ends."""
        return self.openai(batch_id) + ":errors"

    def batch_lock(self, batch_id: str) -> str:
        """String: the replica moving the batch on now."""
        return self.openai(batch_id) + ":lock"

    def activity(self, bucket: int) -> str:
        """Hash: what every replica counted in one 10-second bucket of the dashboard's
        charts (its start in Unix seconds): per tenant, jobs submitted and ended by status,
        and queue wait and run time counts per latency bin; expires after an hour."""
        return f"{self.stream}:activity:{bucket}"

    def ended(self, tenant: str) -> str:
        """List: the latest jobs of ``tenant`` that ended (JSON, newest first), kept to a
        fixed length (one list per tenant, so that a busy one never pushes a quiet one's
        out)."""
        return f"{self.stream}:activity:ended" + (f":t:{tenant}" if tenant else "")

    def failures(self, tenant: str) -> str:
        """List: the latest jobs of ``tenant`` that failed (JSON, newest first), kept to a
        fixed length."""
        return f"{self.stream}:activity:failed" + (f":t:{tenant}" if tenant else "")

    @property
    def replicas(self) -> str:
        """Hash: each replica (CONSUMER_NAME) and what it last said of itself (JSON)."""
        return f"{self.stream}:replicas"

    def rate_bucket(self, tenant: str) -> str:
        """Hash: a tenant's token bucket (`tokens`, `at`), expiring once full again."""
        return f"{self.stream}:tenant:{tenant}:rate"


def partition_of(name: str, count: int) -> int:
    """The partition of a prediction id or an Idempotency-Key: stable, and even."""
    return zlib.crc32(name.encode()) % count


class Partitions:
    """Every partition of the queue, in order."""

    def __init__(self, names: Names, tags: list[str] | None, sharded: bool = False):
        """``tags``: one hash tag per partition; None for the one untagged partition."""
        publish = "SPUBLISH" if sharded else "PUBLISH"
        if tags is None:
            self.all = [Keys(names.stream, names.group, names.key_prefix, publish)]
        else:
            self.all = [
                Keys(base, names.group, f"{names.key_prefix}{base}:", publish, index)
                for index, base in enumerate("{" + f"{names.stream}:{t}" + "}" for t in tags)
            ]
        self.names = names
        self.tags = tags
        self.sharded = sharded
        #: Set: every tenant that ever had streams here (so that a tenant taken out of the
        #: keys file still has its queued jobs read and counted after a restart).
        self.registry = f"{names.stream}:tenants"
        #: Every tenant whose streams are read, with its weight: the default tenant ("")
        #: first, then those of the keys file. It only grows while the process runs (a
        #: tenant taken out of the file still has its queued jobs run).
        self.tenants: dict[str, int] = {"": 1}
        #: Raised at every change of ``tenants`` (readers then read the new streams).
        self.version = 0

    def add_tenants(self, weights: dict[str, int]) -> None:
        """Reads these tenants too, or with these weights now."""
        merged = {**self.tenants, **weights}
        if merged != self.tenants:
            self.tenants = merged
            self.version += 1

    @property
    def tenanted(self) -> bool:
        """Whether any tenant besides the default one exists."""
        return len(self.tenants) > 1

    def streams(self, partition: Keys) -> list[Keys]:
        """Every stream of ``partition``: each tenant's three."""
        return [k for t in self.tenants for k in partition.of_tenant(t).priorities]

    @classmethod
    def single(cls, names: Names) -> Partitions:
        return cls(names, None)

    def __len__(self) -> int:
        return len(self.all)

    def __getitem__(self, index: int) -> Keys:
        return self.all[index]

    def of(self, prediction_id: str) -> Keys:
        """The partition of a job."""
        count = len(self.all)
        return self.all[0 if count == 1 else partition_of(prediction_id, count)]

    def record(self, prediction_id: str) -> str:
        return self.of(prediction_id).record(prediction_id)

    def new_id(self, idempotency_key: str = "", partition: int | None = None) -> str:
        """A new prediction id: in ``partition``, or in the one of ``idempotency_key`` (so
        the key and the record it names share a slot), or anywhere."""
        count = len(self.all)
        if count == 1:
            return new_id()
        if partition is None:
            if not idempotency_key:
                return new_id()
            partition = partition_of(idempotency_key, count)
        while True:  # about `count` tries: ids stay uniformly random
            candidate = new_id()
            if partition_of(candidate, count) == partition:
                return candidate

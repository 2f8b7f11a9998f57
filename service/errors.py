"""Domain errors. Handlers raise these; the wrapper every handler is registered in
(http/answers.py) turns them into JSON answers."""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    """Base of every error that becomes a JSON answer with its own status."""

    status = 500
    #: Seconds for a Retry-After header, for errors a client should retry.
    retry_after: int | None = None

    def __init__(
        self, message: str, detail: Any = None, *, param: str | None = None, code: str = ""
    ) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail
        #: For the OpenAI-compatible routes' error shape: the request field at fault, and a
        #: code a client may branch on ("model_not_found", say).
        self.param = param
        self.code = code


class BadRequest(ServiceError):
    """The request is malformed: bad JSON or a bad header value."""

    status = 400


class RequestTimeout(ServiceError):
    """The request body did not arrive within BODY_TIMEOUT_SECONDS."""

    status = 408


class NotFound(ServiceError):
    """The prediction, model or route does not exist."""

    status = 404


class PayloadTooLarge(ServiceError):
    """A file over MAX_FILE_BYTES, or the other parts of a multipart body over MAX_BODY_BYTES."""

    status = 413


class UnsupportedMediaType(ServiceError):
    """The body is not sent as application/json."""

    status = 415


class InvalidInput(ServiceError):
    """The body or the input does not fit the schema; ``detail`` lists the field errors."""

    status = 422


class Unauthorized(ServiceError):
    """The route needs the API key as a Bearer token."""

    status = 401


class Forbidden(ServiceError):
    """The route is off on this deployment (the admin routes without ADMIN_API_KEY)."""

    status = 403


class IdempotencyConflict(ServiceError):
    """An Idempotency-Key came back with a different request body."""

    status = 409


class QueueFull(ServiceError):
    """MAX_QUEUE jobs wait, or the tenant's max_queued: retry after Retry-After."""

    status = 429
    retry_after = 1


class RateLimited(ServiceError):
    """The tenant sent more requests than its rate allows; retry after ``retry_after``."""

    status = 429

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PredictionTimeout(ServiceError):
    """A sync prediction ran past JOB_TIMEOUT_SECONDS."""

    status = 504


class Overloaded(ServiceError):
    """Too many sync predictions at once (MAX_SYNC_IN_FLIGHT), or no Redis replica confirmed
    a durable submit: retry after Retry-After. (Redis unreachable is answered 503 from the
    Redis error itself, in http/answers.py.)"""

    status = 503
    retry_after = 1


class RedisSlow(Overloaded):
    """The Redis node of this job's partition did not answer within REDIS_TIMEOUT_SECONDS
    (jobs of other partitions are not held up); retry later."""

    def __init__(
        self, message: str = "Redis did not answer in time for this job's partition; try again."
    ) -> None:
        super().__init__(message)


class ShuttingDown(Overloaded):
    """The replica is stopping and the grace period is nearly over: a call still running is
    given up (a sync caller gets 503; a queued job is handed back for another replica)."""


class ModelUnavailable(ServiceError):
    """No model process can take the call now (each one died and is being replaced), or
    no one waits for the call any more: retry after Retry-After."""

    status = 503
    retry_after = 1


class StoreUnavailable(ServiceError):
    """The blob store (BLOB_URL) cannot be reached or refused us: retry after Retry-After."""

    status = 503
    retry_after = 2


class PredictionFailed(ServiceError):
    """The model raised while predicting, or its process died on this input."""

    status = 500


class ModelLoadError(Exception):
    """A model could not be loaded at startup."""

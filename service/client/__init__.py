"""A Python client for the service: `AsyncClient` (aiohttp) and `Client`, its blocking twin.

    async with AsyncClient("http://localhost:8080") as client:
        print(await client.predict("What a lovely day"))
        job = await client.submit("Queued text")
        print(await job.result(timeout=30))
        async for chunk in client.stream("Once upon a time", model="generate"):
            print(chunk, end="")  # a model that streams: each chunk as it is made

    with Client("http://localhost:8080") as client:
        print(client.predict("What a lovely day"))

Errors are raised as `ClientError` subclasses carrying the server's message and status.
A client used without `with` closes its connection when it is garbage-collected.

The client needs only aiohttp: copy the `service/client/` folder into your project, or
install this package without its server dependencies (`pip install --no-deps <this
repository>`, then `pip install aiohttp`).
"""

from service.client.blocking import Client, SyncJob
from service.client.clients import AsyncClient, Job
from service.client.errors import (
    BadRequestError,
    ClientError,
    ConflictError,
    InvalidInputError,
    JobCanceledError,
    NotFoundError,
    OverloadedError,
    PredictionFailedError,
    PredictionTimeoutError,
    UnauthorizedError,
)

__all__ = [
    "AsyncClient",
    "BadRequestError",
    "Client",
    "ClientError",
    "ConflictError",
    "InvalidInputError",
    "Job",
    "JobCanceledError",
    "NotFoundError",
    "OverloadedError",
    "PredictionFailedError",
    "PredictionTimeoutError",
    "SyncJob",
    "UnauthorizedError",
]

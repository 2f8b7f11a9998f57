"""A CPU-bound, pure-Python model: it holds the GIL the whole time it works. Serve it with
EXECUTION=process so that predictions use every core:

    MODEL=examples.cpu_model:count_primes EXECUTION=process scripts/run
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

input_type = Annotated[int, Field(ge=2, le=2_000_000)]


def count_primes(limit: int) -> dict[str, int]:
    """How many primes are below ``limit``, by trial division (deliberately slow)."""
    count = 0
    for n in range(2, limit):
        divisor = 2
        while divisor * divisor <= n:
            if n % divisor == 0:
                break
            divisor += 1
        else:
            count += 1
    return {"limit": limit, "primes": count}


count_primes.input_type = input_type  # type: ignore[attr-defined]

"""`python -m service.http.healthcheck`: exit 0 when this container's replica is ready.

The Docker HEALTHCHECK runs it (the slim image has no curl). It asks /health/ready on
127.0.0.1:$PORT and prints the answer.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def main() -> int:
    url = f"http://127.0.0.1:{os.environ.get('PORT', '8080')}/health/ready"
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:
            print(resp.read().decode())
            return 0
    except urllib.error.HTTPError as exc:
        print(exc.read().decode(), file=sys.stderr)
    except OSError as exc:
        print(f"{url}: {exc}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())

"""The ceiling for scripts/bench: a bare aiohttp handler that parses the same JSON body and
answers the same JSON shape as a sync POST /predict, with nothing else in between.

    python scripts/ceiling.py PORT
"""

from __future__ import annotations

import sys
from pathlib import Path

import orjson
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from service.execution.loop import use_event_loop


async def predict(request: web.Request) -> web.Response:
    body = orjson.loads(await request.read())
    value = body["input"]
    return web.Response(
        body=orjson.dumps({"input": value, "result": value}), content_type="application/json"
    )


def main() -> None:
    use_event_loop()  # the same loop the service runs on
    app = web.Application()
    app.router.add_post("/predict", predict)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)


if __name__ == "__main__":
    main()

"""Admin routes, behind ADMIN_API_KEY: the dead letters (list, replay, purge)."""

from __future__ import annotations

import re
import time

from aiohttp import web

from service.errors import BadRequest, Forbidden, NotFound
from service.http import state
from service.http.io import json_response
from service.http.jobs import parse_id
from service.http.schemas import NOT_FOUND_MESSAGE
from service.jobs.dead_letters import PAGE

#: A page cursor: '<partition>-<stream entry id>' (19 digits: any such number is an id).
_CURSOR = re.compile(r"[0-9]{1,4}-[0-9]{1,19}-[0-9]{1,19}")
#: A dead letter's stream entry id.
_ENTRY = re.compile(r"[0-9]{1,19}-[0-9]{1,19}")


async def admin_off(request: web.Request) -> web.Response:
    """What every admin route answers while ADMIN_API_KEY is not set (routes.py registers it
    in their place): they are off rather than open."""
    raise Forbidden("The admin routes are off: set ADMIN_API_KEY to use them.")


async def list_dead_letters(request: web.Request) -> web.Response:
    """
    ---
    summary: List dead-lettered jobs
    description: >-
      Jobs given up on after MAX_DELIVERIES deliveries, oldest first, with the reason and
      the attempts; `limit` per page (1 to 100, default 100) and `after`, the `next` of the
      previous page. A job whose record expired shows `status: null` and can only be
      purged.
    tags: [admin]
    parameters:
      - {name: limit, in: query, schema: {type: integer, minimum: 1, maximum: 100}}
      - name: after
        in: query
        description: "`next` of the previous page"
        schema: {type: string, pattern: '^[0-9]{1,4}-[0-9]{1,19}-[0-9]{1,19}$'}
    responses:
      "200":
        description: One page of dead letters.
        content:
          application/json:
            schema: {$ref: "#/components/schemas/DeadLetterPage"}
      "400": {$ref: "#/components/responses/BadRequest"}
      "401": {$ref: "#/components/responses/AdminUnauthorized"}
      "403": {$ref: "#/components/responses/AdminOff"}
      "503": {$ref: "#/components/responses/Unavailable"}
    """
    raw_limit = request.query.get("limit", str(PAGE))
    after = request.query.get("after")
    if not re.fullmatch("[0-9]{1,3}", raw_limit) or not 1 <= int(raw_limit) <= PAGE:
        raise BadRequest(f"limit must be a whole number from 1 to {PAGE}.")
    if after is not None and not _CURSOR.fullmatch(after):
        raise BadRequest("after must be the 'next' of a previous page.")
    letters = request.app[state.DEAD_LETTERS]
    items, cursor = await letters.page(after or "", int(raw_limit))
    return json_response({"items": items, "next": cursor, "total": await letters.count()})


async def replay_dead_letter(request: web.Request) -> web.Response:
    """
    ---
    summary: Replay one dead-lettered job
    description: >-
      Puts the job back on the queue under the same prediction id, with fresh attempts (its
      time limit counts from now). Idempotent: a job no longer in the dead letters
      (replayed or purged before) answers `replayed: false` and is not queued again.
    tags: [admin]
    parameters:
      - $ref: "#/components/parameters/PredictionId"
    responses:
      "200":
        description: Replayed now, or not (it was not a dead letter).
        content:
          application/json:
            schema: {$ref: "#/components/schemas/Replayed"}
      "401": {$ref: "#/components/responses/AdminUnauthorized"}
      "403": {$ref: "#/components/responses/AdminOff"}
      "404": {$ref: "#/components/responses/PredictionNotFound"}
      "503": {$ref: "#/components/responses/Unavailable"}
    """
    prediction_id = parse_id(request.match_info["prediction_id"])
    answer = await request.app[state.DEAD_LETTERS].replay_one(prediction_id, time.time())
    if answer is None:
        raise NotFound(NOT_FOUND_MESSAGE)
    return json_response({"prediction_id": prediction_id, "replayed": answer == "replayed"})


async def replay_dead_letters(request: web.Request) -> web.Response:
    """
    ---
    summary: Replay every dead-lettered job
    description: >-
      Each goes back on the queue under its prediction id with fresh attempts; letters
      whose record expired are dropped (`gone`). Idempotent: a second call finds none.
    tags: [admin]
    responses:
      "200":
        description: How many were replayed, and how many dropped.
        content:
          application/json:
            schema: {$ref: "#/components/schemas/ReplayedAll"}
      "401": {$ref: "#/components/responses/AdminUnauthorized"}
      "403": {$ref: "#/components/responses/AdminOff"}
      "503": {$ref: "#/components/responses/Unavailable"}
    """
    counts = await request.app[state.DEAD_LETTERS].replay_all(time.time())
    return json_response({"replayed": counts["replayed"], "gone": counts["gone"] + counts["stale"]})


async def purge_dead_letters(request: web.Request) -> web.Response:
    """
    ---
    summary: Purge the dead letters
    description: >-
      Deletes every dead letter; the jobs' failed records stay until they expire.
    tags: [admin]
    responses:
      "200":
        description: How many were deleted.
        content:
          application/json:
            schema:
              type: object
              required: [purged]
              properties: {purged: {type: integer}}
      "401": {$ref: "#/components/responses/AdminUnauthorized"}
      "403": {$ref: "#/components/responses/AdminOff"}
      "503": {$ref: "#/components/responses/Unavailable"}
    """
    return json_response({"purged": await request.app[state.DEAD_LETTERS].purge()})


async def purge_dead_letter(request: web.Request) -> web.Response:
    """
    ---
    summary: Purge one dead letter
    description: >-
      Deletes the job's dead letter; its failed record stays until it expires. Idempotent:
      a job that is no longer a dead letter answers `purged: false`. A letter whose record
      expired (`status: null` in the list) is purged by its `entry`, from the list.
    tags: [admin]
    parameters:
      - $ref: "#/components/parameters/PredictionId"
      - name: entry
        in: query
        description: "the letter's `entry`, from the list"
        schema: {type: string, pattern: '^[0-9]{1,19}-[0-9]{1,19}$'}
    responses:
      "200":
        description: Purged now, or not (it was not a dead letter).
        content:
          application/json:
            schema:
              type: object
              required: [prediction_id, purged]
              properties:
                prediction_id: {type: string, format: uuid}
                purged: {type: boolean}
      "400": {$ref: "#/components/responses/BadRequest"}
      "401": {$ref: "#/components/responses/AdminUnauthorized"}
      "403": {$ref: "#/components/responses/AdminOff"}
      "404": {$ref: "#/components/responses/PredictionNotFound"}
      "503": {$ref: "#/components/responses/Unavailable"}
    """
    prediction_id = parse_id(request.match_info["prediction_id"])
    entry = request.query.get("entry", "")
    if entry and not _ENTRY.fullmatch(entry):
        raise BadRequest("entry must be the 'entry' of a dead letter in the list.")
    purged = await request.app[state.DEAD_LETTERS].purge_one(prediction_id, entry)
    if purged is None:
        raise NotFound(NOT_FOUND_MESSAGE)
    return json_response({"prediction_id": prediction_id, "purged": purged})

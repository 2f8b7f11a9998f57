"""GET /predict/{id}/files/{name}: a job's input or result file, to its owner only, from
any replica: Content-Type, Content-Length, ETag (If-None-Match: 304) and one byte range
(206; 416 when it lies past the end). With BLOB_PRESIGN on an S3 store, a redirect to a
presigned URL instead."""

from __future__ import annotations

import contextlib
import mimetypes
import re

from aiohttp import hdrs, web

from service.errors import NotFound
from service.http import state
from service.http.io import tenant_of
from service.http.jobs import own_record, parse_id
from service.jobs.files import NAME

#: How long a presigned URL lasts.
PRESIGN_SECONDS = 300
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


async def prediction_file(request: web.Request) -> web.StreamResponse:
    """
    ---
    summary: Download a file of a prediction (an input it took, or a file it returned)
    description: >-
      The URLs in a prediction's `input` and `result` that name its files lead here. The
      caller's credentials are checked as for the prediction itself; files expire with the
      record. One byte range may be asked for (`Range: bytes=0-1023`); `ETag` and
      `If-None-Match` work as usual. With `BLOB_PRESIGN=true` on an S3 store the answer is
      a redirect (307) to a short-lived presigned URL.
    tags: [predictions]
    parameters:
      - $ref: "#/components/parameters/PredictionId"
      - $ref: "#/components/parameters/FileName"
    responses:
      "200":
        description: The file's bytes.
        content:
          application/octet-stream:
            schema: {type: string, format: binary}
      "206": {description: The byte range asked for.}
      "304": {description: Not modified (If-None-Match matched its ETag).}
      "307": {description: "A presigned URL of the file (BLOB_PRESIGN=true, S3)."}
      "401": {$ref: "#/components/responses/Unauthorized"}
      "404": {$ref: "#/components/responses/PredictionNotFound"}
      "416": {description: The range lies past the file's end.}
      "503": {$ref: "#/components/responses/Unavailable"}
    """
    prediction_id = parse_id(request.match_info["prediction_id"])
    name = request.match_info["name"]
    if not NAME.fullmatch(name):
        raise NotFound("No such file.")
    await own_record(request, prediction_id, tenant_of(request))
    files = request.app[state.FILES]
    key = f"{prediction_id}/{name}"
    if files.settings.presign:
        url = await files.store.presign(key, PRESIGN_SECONDS)
        if url is not None:
            raise web.HTTPTemporaryRedirect(url)
    blob = await files.store.stat(key)
    if blob is None:
        raise NotFound("No such file (it expired, or was removed with its job).")
    content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
    headers = {
        hdrs.ETAG: blob.etag,
        hdrs.ACCEPT_RANGES: "bytes",
        hdrs.CONTENT_TYPE: content_type,
        hdrs.CACHE_CONTROL: "private, max-age=0",
    }
    if blob.etag in _tags(request.headers.get(hdrs.IF_NONE_MATCH, "")):
        return web.Response(status=304, headers={hdrs.ETAG: blob.etag})
    start, end, status = 0, blob.size, 200
    asked = request.headers.get(hdrs.RANGE)
    if asked and _tags(request.headers.get(hdrs.IF_RANGE, blob.etag)) == [blob.etag]:
        found = _range(asked, blob.size)
        if found == ():
            return web.Response(status=416, headers={hdrs.CONTENT_RANGE: f"bytes */{blob.size}"})
        if found:
            (start, end), status = found, 206
            headers[hdrs.CONTENT_RANGE] = f"bytes {start}-{end - 1}/{blob.size}"
    response = web.StreamResponse(status=status, headers=headers)
    response.content_length = end - start
    await response.prepare(request)
    # Closed here whatever happens (a client that leaves midway): its file with it.
    async with contextlib.aclosing(files.store.read(key, start, end)) as chunks:
        async for chunk in chunks:
            await response.write(chunk)
    await response.write_eof()
    return response


def _range(header: str, size: int) -> tuple[int, ...] | None:
    """The (start, end) of one byte range (end exclusive) of a file of ``size`` bytes; ()
    when it lies past the end (416); None when the header is not one range (the whole)."""
    found = _RANGE.fullmatch(header.strip())
    if not found:
        return None
    first, last = found.groups()
    start, end = 0, size
    if first:
        start = int(first)
        end = min(size, int(last) + 1) if last else size
    elif last:
        start = max(0, size - int(last))
    return () if start >= size or start >= end else (start, end)


def _tags(header: str) -> list[str]:
    return [t.strip().removeprefix("W/") for t in header.split(",") if t.strip()]

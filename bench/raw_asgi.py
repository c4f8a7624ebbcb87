"""The HTTP ceiling: a bare ASGI app streaming N MiB of in-memory bytes (no framework, no
decryption). bench/storage.py serves it with the same uvicorn to measure what HTTP alone costs."""

import os

PIECE = bytes(1024 * 1024)
N = int(os.environ.get("RAW_MIB", "512"))


async def app(scope, receive, send):  # type: ignore[no-untyped-def]
    if scope["type"] != "http":
        return
    headers = [(b"content-length", str(N * len(PIECE)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    for i in range(N):
        await send({"type": "http.response.body", "body": PIECE, "more_body": i < N - 1})

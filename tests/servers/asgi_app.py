"""An ASGI app for uvicorn in burnwatch's end-to-end tests (real_servers).

Run: python3 -m uvicorn --app-dir tests/servers asgi_app:app (with
`--http h11` or `--http httptools`), with the environment variable
REQUEST_LOG naming the request log.

Every request's body is received to its end (uvicorn answers
`Expect: 100-continue` when the app first receives), then one line
`<status> <X-Tenant-ID or -> <method> <path>` is appended to the log (one
write on an O_APPEND descriptor) just before the response goes out.

Paths: /status/<code> answers <code>; / answers 200; anything else 404.
"""

import os
import re

LOG_FD = os.open(os.environ["REQUEST_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
STATUS = re.compile(r"^/status/([1-5][0-9][0-9])$")


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    while True:
        msg = await receive()
        if msg["type"] != "http.request" or not msg.get("more_body"):
            break
    path = scope["path"]
    m = STATUS.match(path)
    code = int(m.group(1)) if m else (200 if path == "/" else 404)
    tenant = "-"
    for name, value in scope["headers"]:
        if name == b"x-tenant-id":
            tenant = value.decode("latin-1") or "-"
    os.write(LOG_FD, f"{code} {tenant} {scope['method']} {path}\n".encode())
    out = f"status {code}\n".encode()
    await send(
        {
            "type": "http.response.start",
            "status": code,
            "headers": [
                (b"content-type", b"text/plain"),
                (b"content-length", str(len(out)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": out})

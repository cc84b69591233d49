"""A WSGI app for gunicorn in burnwatch's end-to-end tests (real_servers).

Run: python3 -m gunicorn --chdir tests/servers wsgi_app:app, with the
environment variable REQUEST_LOG naming the request log.

Every request's body is read to its end (Content-Length or chunked, which
gunicorn decodes; gunicorn answers `Expect: 100-continue` itself), then one
line `<status> <X-Tenant-ID or -> <method> <path>` is appended to the log
(one write on an O_APPEND descriptor, so workers and threads never
interleave) just before the response goes out.

Paths: /status/<code> answers <code>; / answers 200; anything else 404.
"""

import os
import re

LOG_FD = os.open(os.environ["REQUEST_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
STATUS = re.compile(r"^/status/([1-5][0-9][0-9])$")
REASONS = {200: "OK", 201: "Created", 404: "Not Found", 500: "Internal Server Error"}


def app(environ, start_response):
    body = environ["wsgi.input"]
    while body.read(65536):
        pass
    path = environ.get("PATH_INFO", "/")
    m = STATUS.match(path)
    code = int(m.group(1)) if m else (200 if path == "/" else 404)
    tenant = environ.get("HTTP_X_TENANT_ID") or "-"
    method = environ["REQUEST_METHOD"]
    os.write(LOG_FD, f"{code} {tenant} {method} {path}\n".encode())
    out = f"status {code}\n".encode()
    start_response(
        f"{code} {REASONS.get(code, 'Status')}",
        [("Content-Type", "text/plain"), ("Content-Length", str(len(out)))],
    )
    return [out]

"""A real Python http.server for burnwatch's end-to-end tests.

Usage: python3 python_server.py PORT LOG_PATH

ThreadingHTTPServer, HTTP/1.1 (keep-alive), one log line per answered
request, flushed per line: `<status> <X-Tenant-ID or -> <method> <path>`.
The line is written just before the status line goes out, so a request the
server answers is logged even when the client has gone away meanwhile.

Paths:
  /status/<code>  answers <code> (a short body, none for 1xx/204/304)
  /big            200 with a 1 MiB body written in 64 KiB writes
  /chunked        200 with a chunked body of several chunks
  /status-line-body
                  200 whose body (its own send) starts like a status line:
                  "HTTP/1.1 500 Internal Server Error"
  /close          no response: the connection is closed (logged as 000)
  /reset          no response: the connection is reset (logged as 000)
  /hang           no response ever: the handler sleeps (logged as 000 when
                  the request is read; for killing the server mid-request)
  /fetch/<port>   200 after a request of its own: GET / to 127.0.0.1:<port>
                  on a new connection, read to its end and closed (the
                  server as a client, on a descriptor it frees again)
  anything else   200
The tenant is the X-Tenant-ID header, or with the environment variable
TENANT_FROM=host the Host header's first label, or with TENANT_FROM=path the
path segment after /tenants/ (which is then stripped before routing).
Request bodies (Content-Length or chunked) are read and discarded first;
`Expect: 100-continue` is answered with 100 Continue by http.server itself.
"""

import os
import re
import socket
import struct
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOG_LOCK = threading.Lock()
LOG = None

TENANT_FROM = os.environ.get("TENANT_FROM", "header")
PATH_PREFIX = "/tenants/"
BIG = b"x" * (1 << 20)
BIG_WRITE = 64 * 1024
CHUNKS = [b"first chunk\n", b"y" * 3000, b"third\n", b"z" * 70000, b"last\n"]


def log_line(status, tenant, method, path):
    with LOG_LOCK:
        LOG.write(f"{status} {tenant} {method} {path}\n")
        LOG.flush()


def fetch(port):
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: upstream\r\nConnection: close\r\n\r\n")
        while s.recv(65536):
            pass


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Head and body are separate sends: without this, Nagle and delayed
    # ACKs hold every response for 40 ms.
    disable_nagle_algorithm = True
    # Silence the default stderr access log.
    def log_message(self, format, *args):
        pass

    def read_body(self):
        te = self.headers.get("Transfer-Encoding", "")
        if "chunked" in te.lower():
            while True:
                size_line = self.rfile.readline()
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    # trailers, up to the blank line
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return
                self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        while n > 0:
            got = self.rfile.read(min(n, 65536))
            if not got:
                return
            n -= len(got)

    def tenant_and_route(self, path):
        if TENANT_FROM == "host":
            host = (self.headers.get("Host") or "").strip()
            return re.split(r"[.:]", host, maxsplit=1)[0] or "-", path
        if TENANT_FROM == "path":
            if not path.startswith(PATH_PREFIX):
                return "-", path
            seg, _, rest = path[len(PATH_PREFIX):].partition("/")
            return seg or "-", "/" + rest
        return (self.headers.get("X-Tenant-ID") or "").strip() or "-", path

    def answer(self):
        self.read_body()
        tenant, path = self.tenant_and_route(self.path.split("?")[0])
        if path == "/hang":
            log_line("000", tenant, self.command, path)
            threading.Event().wait()
        if path in ("/close", "/reset"):
            log_line("000", tenant, self.command, path)
            self.close_connection = True
            if path == "/reset":
                self.connection.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.connection.close()
            return
        head = self.command == "HEAD"
        status = 200
        body = b"ok\n"
        chunked = False
        if path.startswith("/status/"):
            status = int(path[len("/status/"):])
            body = b"" if status in (204, 304) else f"status {status}\n".encode()
        elif path == "/big":
            body = BIG
        elif path == "/chunked":
            chunked = True
        elif path == "/status-line-body":
            body = b"HTTP/1.1 500 Internal Server Error\r\n\r\n"
        elif path.startswith("/fetch/"):
            fetch(int(path[len("/fetch/"):]))
        log_line(status, tenant, self.command, path)
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        elif status not in (204, 304):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if head:
            return
        if chunked:
            for c in CHUNKS:
                self.wfile.write(b"%x\r\n" % len(c) + c + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
            return
        for i in range(0, len(body), BIG_WRITE):
            self.wfile.write(body[i:i + BIG_WRITE])

    do_GET = answer
    do_HEAD = answer
    do_POST = answer
    do_PUT = answer
    do_DELETE = answer
    do_PATCH = answer
    do_OPTIONS = answer


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128


def main():
    global LOG
    port = int(sys.argv[1])
    LOG = open(sys.argv[2], "a", buffering=1)
    Server(("127.0.0.1", port), Handler).serve_forever()


if __name__ == "__main__":
    main()

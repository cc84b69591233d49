"""A minimal HTTP/1.1 server whose read and write syscalls are chosen on the
command line, for burnwatch's end-to-end tests of each syscall path.

Usage: python3 syscall_server.py PORT LOG_PATH READ WRITE

READ, how request bytes come in:
  read      os.read
  recvfrom  socket.recv (glibc recv() is the recvfrom syscall)
  readv     os.readv into buffers of 64, 4096 and 65536 bytes (a request
            spans several iovecs)
  recvmsg   socket.recvmsg_into into buffers of 64, 4096 and 65536 bytes
  readv_many
            os.readv into 40 buffers of 8 bytes, then one of 65536 (a
            request spans dozens of iovecs)
  peek      before every socket.recv, a peek (recvfrom with MSG_PEEK) at
            what is waiting, and at a new connection's first bytes a
            recvmsg with MSG_PEEK too, as servers that sniff the protocol
            (TLS or HTTP) before reading do
  discard   socket.recv_into one reused buffer, 512 bytes at most, and what
            is left of a request body (Content-Length or chunk data) dropped
            unread by recv with MSG_TRUNC, as servers skip bodies they do not
            want (the buffer then still holds an earlier read's bytes).
            /drain/<code> answers <code> before reading its body, then
            drops everything that follows, pipelined requests too, with
            MSG_TRUNC until the client closes (nothing after it is logged)
WRITE, how a response goes out:
  write     os.write: the head, then the body
  sendto    socket.send: the head, then the body
  writev    os.writev([head, body])
  sendmsg   socket.sendmsg([head, body])
  sendfile  os.write for the head, os.sendfile for the body (from a file)
  writev_fields
            one writev whose iovecs are the status line's fields, as
            Varnish writes them: "HTTP/1.1", " ", "200", " ", "OK", "\\r\\n",
            then the headers and the body
  writev_many
            as `batched`, but the gathered responses go out in one writev
            whose iovecs are each response's status line fields, header
            lines, blank line and body, as Apache writes pipelined answers
            (dozens of iovecs)
  batched   the responses of pipelined requests gathered and written
            together by one os.write once no whole request is left unread
            (as asyncio transports under back-pressure, hyper's
            pipeline_flush and proxies do), with varied framing: paths
            /chunked/<code> answer with a chunked body, 204 and 304 with
            none, `Expect: 100-continue` gets its interim 100 in the batch

One log line per answered request, flushed, written just before the
response: `<status> <X-Tenant-ID or -> <method> <path>`. Paths:
/status/<code> answers <code>; /big 200 with a 1 MiB body; else 200.
Keep-alive and pipelining; Content-Length and chunked request bodies.
"""

import os
import socket
import sys
import tempfile
import threading

LOG_LOCK = threading.Lock()
REASONS = {200: "OK", 201: "Created", 204: "No Content", 404: "Not Found",
           429: "Too Many Requests", 500: "Internal Server Error",
           503: "Service Unavailable"}
BIG = b"x" * (1 << 20)


class Conn:
    def __init__(self, sock, mode_read, mode_write, log, body_dir):
        self.sock = sock
        self.fd = sock.fileno()
        self.mode_read = mode_read
        self.mode_write = mode_write
        self.log = log
        self.body_dir = body_dir
        self.buf = b""
        self.batch = b""
        self.parts = []
        self.peeked = False
        # One read buffer, reused, as C servers do: a dropped read leaves in
        # it the bytes of an earlier one.
        self.rbuf = bytearray(65536)

    # ------------------------------------------------------------ reading
    def fill(self):
        m = self.mode_read
        if m == "read":
            data = os.read(self.fd, 65536)
        elif m == "recvfrom":
            data = self.sock.recv(65536)
        elif m == "peek":
            if not self.peeked:
                # Wait for the first bytes and look at them, as a protocol
                # sniffer does, with recvmsg.
                self.sock.recvmsg(16, 0, socket.MSG_PEEK)
                self.peeked = True
            self.sock.recv(65536, socket.MSG_PEEK)
            data = self.sock.recv(65536)
        elif m == "discard":
            n = self.sock.recv_into(self.rbuf, 512)
            data = bytes(self.rbuf[:n])
        elif m == "readv_many":
            bufs = [bytearray(8) for _ in range(40)] + [bytearray(65536)]
            n = os.readv(self.fd, bufs)
            data = b"".join(bytes(b) for b in bufs)[:n]
        elif m in ("readv", "recvmsg"):
            bufs = [bytearray(64), bytearray(4096), bytearray(65536)]
            if m == "readv":
                n = os.readv(self.fd, bufs)
            else:
                n = self.sock.recvmsg_into(bufs)[0]
            data = b"".join(bytes(b) for b in bufs)[:n]
        else:
            raise SystemExit(f"unknown READ mode {m}")
        if not data:
            raise EOFError
        self.buf += data

    def read_until(self, marker):
        while marker not in self.buf:
            self.fill()
        i = self.buf.index(marker) + len(marker)
        out, self.buf = self.buf[:i], self.buf[i:]
        return out

    def read_exact(self, n):
        while len(self.buf) < n:
            self.fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def skip_body(self, n):
        """Consumes `n` body bytes: read, or in `discard` mode those not
        read yet dropped by the kernel unseen."""
        if self.mode_read != "discard":
            self.read_exact(n)
            return
        have = min(n, len(self.buf))
        self.buf = self.buf[have:]
        n -= have
        while n > 0:
            got = self.sock.recv_into(self.rbuf, min(n, len(self.rbuf)), socket.MSG_TRUNC)
            if got == 0:
                raise EOFError
            n -= got

    def drain(self):
        """Drops everything the client sends until it closes."""
        self.buf = b""
        while self.sock.recv_into(self.rbuf, len(self.rbuf), socket.MSG_TRUNC):
            pass
        raise EOFError

    # ------------------------------------------------------------ writing
    def write_all(self, data, how):
        view = memoryview(data)
        while view:
            n = how(view)
            view = view[n:]

    def respond(self, status, body, head_only):
        reason = REASONS.get(status, "Status")
        fields = [b"HTTP/1.1", b" ", str(status).encode(), b" ",
                  reason.encode(), b"\r\n"]
        headers = b"Content-Type: text/plain\r\n"
        if status not in (204, 304):
            headers += b"Content-Length: %d\r\n" % len(body)
        headers += b"\r\n"
        head = b"".join(fields) + headers
        if head_only or status in (204, 304):
            body = b""
        m = self.mode_write
        if m == "batched":
            self.batch += head + body
            self.flush_batch()
        elif m == "writev_many":
            self.parts += fields + [l + b"\r\n" for l in headers.split(b"\r\n")[:-2]]
            self.parts.append(b"\r\n")
            if body:
                self.parts.append(body)
            self.flush_parts()
        elif m == "write":
            self.write_all(head, lambda v: os.write(self.fd, v))
            self.write_all(body, lambda v: os.write(self.fd, v))
        elif m == "pieces":
            # The status line in pieces of 1 to 5 bytes, the headers, then
            # the body in a write of its own (a short one that starts like
            # a status line: see `serve`).
            line = b"".join(fields)
            at, step = 0, 1
            while at < len(line):
                self.write_all(line[at:at + step], lambda v: os.write(self.fd, v))
                at, step = at + step, step % 5 + 1
            self.write_all(headers, lambda v: os.write(self.fd, v))
            self.write_all(body, lambda v: os.write(self.fd, v))
        elif m == "sendto":
            self.write_all(head, self.sock.send)
            self.write_all(body, self.sock.send)
        elif m in ("writev", "sendmsg", "writev_fields"):
            parts = (fields + [headers] if m == "writev_fields" else [head])
            if body:
                parts.append(body)
            total = sum(len(p) for p in parts)
            if m == "sendmsg":
                n = self.sock.sendmsg(parts)
            else:
                n = os.writev(self.fd, parts)
            rest = b"".join(parts)[n:]
            self.write_all(rest, lambda v: os.write(self.fd, v))
            assert n <= total
        elif m == "sendfile":
            self.write_all(head, lambda v: os.write(self.fd, v))
            if body:
                with tempfile.TemporaryFile(dir=self.body_dir) as f:
                    f.write(body)
                    f.flush()
                    off = 0
                    while off < len(body):
                        off += os.sendfile(self.fd, f.fileno(), off, len(body) - off)
        else:
            raise SystemExit(f"unknown WRITE mode {m}")

    def flush_batch(self, force=False):
        """Writes the gathered responses in one go unless another whole
        request head is already read (its response joins the batch)."""
        if self.batch and (force or b"\r\n\r\n" not in self.buf):
            self.write_all(self.batch, lambda v: os.write(self.fd, v))
            self.batch = b""

    def flush_parts(self):
        """`flush_batch` for `writev_many`: one writev of every part
        gathered (the rest of a short write with plain writes)."""
        if self.parts and b"\r\n\r\n" not in self.buf:
            parts, self.parts = self.parts, []
            n = os.writev(self.fd, parts)
            rest = b"".join(parts)[n:]
            self.write_all(rest, lambda v: os.write(self.fd, v))

    def respond_chunked(self, status, body, head_only):
        head = (b"HTTP/1.1 %d %s\r\nTransfer-Encoding: chunked\r\n"
                b"Content-Type: text/plain\r\n\r\n"
                % (status, REASONS.get(status, "Status").encode()))
        if not head_only and status not in (204, 304):
            half = len(body) // 2
            for part in (body[:half], body[half:]):
                if part:
                    head += b"%x;part=1\r\n%s\r\n" % (len(part), part)
            head += b"0\r\n\r\n"
        self.batch += head
        self.flush_batch()

    # ------------------------------------------------------------ serving
    def serve(self):
        while True:
            head = self.read_until(b"\r\n\r\n").decode("latin-1")
            lines = head.split("\r\n")
            method, target, _version = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                if ":" in line:
                    name, value = line.split(":", 1)
                    headers.setdefault(name.strip().lower(), value.strip())
            if (self.mode_write == "batched"
                    and headers.get("expect", "").lower() == "100-continue"):
                self.batch += b"HTTP/1.1 100 Continue\r\n\r\n"
                if len(self.buf) == 0:
                    # The client waits for it before sending the body.
                    self.flush_batch(force=True)
            path = target.split("?")[0]
            drain = self.mode_read == "discard" and path.startswith("/drain/")
            if drain:
                pass  # answered first, then drained
            elif "chunked" in headers.get("transfer-encoding", "").lower():
                while True:
                    size = int(self.read_until(b"\r\n").split(b";")[0].strip(), 16)
                    if size == 0:
                        while self.read_until(b"\r\n") != b"\r\n":
                            pass
                        break
                    self.skip_body(size)
                    self.read_exact(2)
            else:
                self.skip_body(int(headers.get("content-length", "0")))
            tenant = headers.get("x-tenant-id", "") or "-"
            status, body = 200, b"ok\n"
            chunked = path.startswith("/chunked/")
            if path.startswith("/status/") or chunked or drain:
                status = int(path.rsplit("/", 1)[1])
                body = b"status %d\n" % status
                if self.mode_write == "batched":
                    # Bodies that look like responses: framing must skip them.
                    body = b"HTTP/1.1 %d fake\r\nContent-Length: 0\r\n\r\n" % status
                elif self.mode_write == "pieces":
                    # Like the start of a status line, written alone.
                    body = b"HTTP/1"

            elif path == "/big":
                body = BIG
            with LOG_LOCK:
                self.log.write(f"{status} {tenant} {method} {path}\n")
                self.log.flush()
            if chunked and self.mode_write == "batched":
                self.respond_chunked(status, body, method == "HEAD")
            else:
                self.respond(status, body, method == "HEAD")
            if drain:
                self.drain()


def handle(sock, mode_read, mode_write, log, body_dir):
    try:
        Conn(sock, mode_read, mode_write, log, body_dir).serve()
    except (EOFError, ConnectionError, ValueError):
        pass
    finally:
        sock.close()


def main():
    port, log_path, mode_read, mode_write = sys.argv[1:5]
    log = open(log_path, "a", buffering=1)
    body_dir = os.path.dirname(os.path.abspath(log_path))
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", int(port)))
    srv.listen(128)
    while True:
        sock, _ = srv.accept()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=handle, args=(sock, mode_read, mode_write, log, body_dir),
                         daemon=True).start()


if __name__ == "__main__":
    main()

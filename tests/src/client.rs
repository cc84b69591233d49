//! A small HTTP/1.1 client over raw sockets: full control over what goes on
//! the wire (keep-alive, pipelining, split writes, one byte per write, huge
//! header blocks, request bodies, `Expect: 100-continue`), which curl cannot
//! give; plus [`curl`] and [`wrk`] runners.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

/// One keep-alive connection.
pub struct Conn {
    reader: BufReader<TcpStream>,
}

/// A response's status and body.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Conn {
    pub fn open(port: u16) -> Conn {
        Conn::open_at(("127.0.0.1", port))
    }

    /// A connection to `[::1]:port`.
    pub fn open_v6(port: u16) -> Conn {
        Conn::open_at(("::1", port))
    }

    /// A connection whose responses are read `capacity` bytes per `read`
    /// at most (a buffered reader of that size; a body longer than it may
    /// be read straight into its destination in one go), as clients that
    /// read a line byte by byte, or in small fixed pieces, do.
    pub fn open_reading_by(port: u16, capacity: usize) -> Conn {
        let mut c = Conn::open(port);
        c.reader = BufReader::with_capacity(capacity, c.reader.into_inner());
        c
    }

    fn open_at(addr: (&str, u16)) -> Conn {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.set_nodelay(true).unwrap();
        Conn {
            reader: BufReader::new(s),
        }
    }

    /// Writes raw bytes.
    pub fn send(&mut self, bytes: &[u8]) {
        self.reader.get_mut().write_all(bytes).expect("write");
    }

    /// Writes `bytes` one byte per `write`, sleeping `pause` in between, so
    /// the server's reads see the request in many small pieces.
    pub fn dribble(&mut self, bytes: &[u8], pause: Duration) {
        for b in bytes {
            self.reader.get_mut().write_all(&[*b]).expect("write");
            std::thread::sleep(pause);
        }
    }

    /// Aborts the connection with a RST (SO_LINGER 0, then close), as a
    /// client that gives up on a request does.
    pub fn reset(self) {
        use std::os::fd::AsRawFd;
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        let rc = unsafe {
            libc::setsockopt(
                self.stream().as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                &linger as *const libc::linger as *const libc::c_void,
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "SO_LINGER: {}", std::io::Error::last_os_error());
    }

    /// The socket, for shutdowns and socket options.
    pub fn stream(&self) -> &TcpStream {
        self.reader.get_ref()
    }

    /// Reads whatever the server still sends until it closes (or `timeout`
    /// passes without a byte).
    pub fn drain(&mut self, timeout: Duration) -> Vec<u8> {
        let _ = self.reader.get_ref().set_read_timeout(Some(timeout));
        let mut out = Vec::new();
        let _ = self.reader.read_to_end(&mut out);
        out
    }

    /// Sends `req` and reads its (final) response.
    pub fn send_req(&mut self, req: &Req) -> Response {
        self.send(&req.bytes());
        self.read_final(req.is_head())
    }

    /// Sends every request in one `write`, then reads one response each.
    pub fn pipeline(&mut self, reqs: &[Req]) -> Vec<Response> {
        self.pipeline_read_after(reqs, Duration::ZERO)
    }

    /// [`Conn::pipeline`], starting to read only after `pause` (the
    /// server's writes fill the socket's buffers and come short).
    pub fn pipeline_read_after(&mut self, reqs: &[Req], pause: Duration) -> Vec<Response> {
        let bytes: Vec<u8> = reqs.iter().flat_map(Req::bytes).collect();
        self.send(&bytes);
        std::thread::sleep(pause);
        reqs.iter().map(|r| self.read_final(r.is_head())).collect()
    }

    /// `Expect: 100-continue`: sends the head of `req` (which must have a
    /// Content-Length body), waits for the interim response, then the body.
    /// Returns the interim status (`None` when the server answered finally
    /// at once) and the final response.
    pub fn expect_continue(&mut self, req: &Req) -> (Option<u16>, Response) {
        let Body::Length(body) = &req.body else {
            panic!("expect_continue needs a Content-Length body");
        };
        let req = req.clone().header("Expect: 100-continue");
        let bytes = req.bytes();
        let head_len = bytes.len() - body.len();
        self.send(&bytes[..head_len]);
        let first = self.read_response(req.is_head());
        if (100..200).contains(&first.status) {
            self.send(&bytes[head_len..]);
            (Some(first.status), self.read_final(req.is_head()))
        } else {
            (None, first)
        }
    }

    /// Reads responses until a final (non-1xx) one.
    pub fn read_final(&mut self, head: bool) -> Response {
        loop {
            let r = self.read_response(head);
            if r.status >= 200 {
                return r;
            }
        }
    }

    /// Sends a request; `tenant` goes into X-Tenant-ID when given.
    pub fn request(&mut self, method: &str, path: &str, tenant: Option<&str>) -> Response {
        self.send(&request_bytes(method, path, tenant, &[]));
        self.read_response(method == "HEAD")
    }

    /// Reads one response (Content-Length or chunked framing); panics,
    /// naming the server, when none comes.
    pub fn read_response(&mut self, head: bool) -> Response {
        self.try_read_response(head).unwrap_or_else(|e| {
            let peer = self.reader.get_ref().peer_addr();
            panic!("no response from {peer:?}: {e}")
        })
    }

    /// Reads one response (Content-Length or chunked framing).
    pub fn try_read_response(&mut self, head: bool) -> std::io::Result<Response> {
        let bad = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad(format!("bad status line {line:?}")))?;
        let mut length = 0usize;
        let mut chunked = false;
        loop {
            let mut h = String::new();
            self.reader.read_line(&mut h)?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let lower = h.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                length = v
                    .trim()
                    .parse()
                    .map_err(|_| bad(format!("bad header {h:?}")))?;
            }
            if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
                chunked = true;
            }
        }
        let mut body = Vec::new();
        if head || status == 204 || status == 304 || (100..200).contains(&status) {
            return Ok(Response { status, body });
        }
        if chunked {
            loop {
                let mut size = String::new();
                self.reader.read_line(&mut size)?;
                let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or(""), 16)
                    .map_err(|_| bad(format!("bad chunk size {size:?}")))?;
                let mut chunk = vec![0; n + 2];
                self.reader.read_exact(&mut chunk)?;
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..n]);
            }
        } else {
            body.resize(length, 0);
            self.reader.read_exact(&mut body)?;
        }
        Ok(Response { status, body })
    }
}

/// A request body.
#[derive(Clone, Debug, Default)]
pub enum Body {
    #[default]
    None,
    /// Sent with `Content-Length`.
    Length(Vec<u8>),
    /// Sent with `Transfer-Encoding: chunked`, one chunk per element (empty
    /// elements are skipped: an empty chunk ends the body).
    Chunked(Vec<Vec<u8>>),
}

/// A request to build on the wire.
#[derive(Clone, Debug, Default)]
pub struct Req {
    pub method: String,
    pub path: String,
    pub tenant: Option<String>,
    /// The Host header's value (`localhost` unless set; `None`: no Host).
    pub host: Option<String>,
    /// Extra header lines (without CRLF), after the padding, before the tenant.
    pub headers: Vec<String>,
    /// Bytes of filler headers put before the tenant header.
    pub padding: usize,
    pub body: Body,
}

impl Req {
    pub fn new(method: &str, path: &str) -> Req {
        Req {
            method: method.to_string(),
            path: path.to_string(),
            host: Some("localhost".to_string()),
            ..Req::default()
        }
    }

    /// Sets the Host header (or leaves it out, for `None`).
    pub fn host(mut self, host: Option<&str>) -> Req {
        self.host = host.map(str::to_string);
        self
    }

    pub fn get(path: &str) -> Req {
        Req::new("GET", path)
    }

    /// Sets X-Tenant-ID (or not, for `None`).
    pub fn tenant(mut self, tenant: Option<&str>) -> Req {
        self.tenant = tenant.map(str::to_string);
        self
    }

    /// Adds a header line, e.g. `"Accept-Encoding: gzip"`.
    pub fn header(mut self, line: &str) -> Req {
        self.headers.push(line.to_string());
        self
    }

    /// About `bytes` bytes of filler headers (lines of at most ~1 KiB)
    /// before the tenant header, which so comes near the end of the block.
    pub fn padding(mut self, bytes: usize) -> Req {
        self.padding = bytes;
        self
    }

    pub fn body(mut self, body: &[u8]) -> Req {
        self.body = Body::Length(body.to_vec());
        self
    }

    pub fn chunked(mut self, chunks: Vec<Vec<u8>>) -> Req {
        self.body = Body::Chunked(chunks);
        self
    }

    pub fn is_head(&self) -> bool {
        self.method == "HEAD"
    }

    /// The request's bytes on the wire.
    pub fn bytes(&self) -> Vec<u8> {
        let mut r = format!("{} {} HTTP/1.1\r\n", self.method, self.path);
        if let Some(h) = &self.host {
            r.push_str(&format!("Host: {h}\r\n"));
        }
        r.push_str("User-Agent: burnwatch-e2e\r\n");
        let mut left = self.padding;
        let mut i = 0;
        while left > 0 {
            let n = left.min(1000);
            let name = format!("X-Filler-{i}: ");
            let value = "f".repeat(n.saturating_sub(name.len() + 2).max(1));
            let line = format!("{name}{value}\r\n");
            left = left.saturating_sub(line.len());
            r.push_str(&line);
            i += 1;
        }
        for h in &self.headers {
            r.push_str(h);
            r.push_str("\r\n");
        }
        if let Some(t) = &self.tenant {
            r.push_str(&format!("X-Tenant-ID: {t}\r\n"));
        }
        let mut out = Vec::new();
        match &self.body {
            Body::None => {
                r.push_str("\r\n");
                out.extend_from_slice(r.as_bytes());
            }
            Body::Length(b) => {
                r.push_str(&format!("Content-Length: {}\r\n\r\n", b.len()));
                out.extend_from_slice(r.as_bytes());
                out.extend_from_slice(b);
            }
            Body::Chunked(chunks) => {
                r.push_str("Transfer-Encoding: chunked\r\n\r\n");
                out.extend_from_slice(r.as_bytes());
                for c in chunks.iter().filter(|c| !c.is_empty()) {
                    out.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
                    out.extend_from_slice(c);
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(b"0\r\n\r\n");
            }
        }
        out
    }
}

/// Runs one curl with `args` (options) on `urls`, which it fetches in turn
/// (reusing its connection), and returns each URL's final status code
/// (`-w %{http_code}`; 0 when none came).
pub fn curl(args: &[&str], urls: &[String]) -> Vec<u16> {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-w", "%{http_code}\\n", "--max-time", "20"])
        .args(args);
    for u in urls {
        cmd.args(["-o", "/dev/null"]).arg(u);
    }
    let out = cmd.output().expect("curl is installed (cargo xtask setup)");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().parse().unwrap_or(0))
        .collect()
}

/// Runs `wrk` against `http://127.0.0.1:<port>/` with a Lua script for a
/// bounded `duration`, and returns its report.
pub fn wrk(port: u16, threads: u32, connections: u32, duration: Duration, script: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("script.lua");
    std::fs::write(&path, script).unwrap();
    let out = Command::new("wrk")
        .arg(format!("-t{threads}"))
        .arg(format!("-c{connections}"))
        .arg(format!("-d{}s", duration.as_secs().max(1)))
        .arg("--timeout")
        .arg("5s")
        .arg("-s")
        .arg(&path)
        .arg(format!("http://127.0.0.1:{port}/"))
        .stdin(Stdio::null())
        .output()
        .expect("wrk is not installed: apt-get install -y wrk (cargo xtask setup)");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "wrk failed:\n{report}");
    report
}

/// The bytes of a request with optional tenant header and extra headers.
pub fn request_bytes(method: &str, path: &str, tenant: Option<&str>, extra: &[&str]) -> Vec<u8> {
    let mut r =
        format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: burnwatch-e2e\r\n");
    if let Some(t) = tenant {
        r.push_str(&format!("X-Tenant-ID: {t}\r\n"));
    }
    for h in extra {
        r.push_str(h);
        r.push_str("\r\n");
    }
    r.push_str("\r\n");
    r.into_bytes()
}

/// GET on a fresh connection; the status, or None when nothing answers.
pub fn get_status(port: u16, path: &str) -> Option<u16> {
    get(port, path).map(|r| r.status)
}

/// GET on a fresh connection; the body as text.
pub fn get_body(port: u16, path: &str) -> Option<String> {
    get(port, path).map(|r| String::from_utf8_lossy(&r.body).into_owned())
}

fn get(port: u16, path: &str) -> Option<Response> {
    let s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let mut c = Conn {
        reader: BufReader::new(s),
    };
    c.reader
        .get_mut()
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .ok()?;
    c.try_read_response(false).ok()
}

/// Sends `n` keep-alive requests on one connection to `port`, cycling
/// methods (GET, POST), the statuses `codes` (`/status/<code>`, which the
/// test servers answer with that code) and `tenants` (`None`: no tenant
/// header); asserts each answer's status. Returns `n`.
pub fn send_status_mix(port: u16, n: usize, codes: &[u16], tenants: &[Option<&str>]) -> usize {
    let mut c = Conn::open(port);
    for i in 0..n {
        let code = codes[i % codes.len()];
        let req = Req::new(["GET", "POST"][i % 2], &format!("/status/{code}"))
            .tenant(tenants[i % tenants.len()]);
        assert_eq!(c.send_req(&req).status, code);
    }
    n
}

//! A small HTTP/1.1 client over raw sockets: full control over what goes on
//! the wire (keep-alive, pipelining, split writes), which curl cannot give.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
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
        let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
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

    /// Sends a request; `tenant` goes into X-Tenant-ID when given.
    pub fn request(&mut self, method: &str, path: &str, tenant: Option<&str>) -> Response {
        self.send(&request_bytes(method, path, tenant, &[]));
        self.read_response(method == "HEAD")
    }

    /// Reads one response (Content-Length or chunked framing).
    pub fn read_response(&mut self, head: bool) -> Response {
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("status line");
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {line:?}"));
        let mut length = 0usize;
        let mut chunked = false;
        loop {
            let mut h = String::new();
            self.reader.read_line(&mut h).expect("header");
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let lower = h.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                length = v.trim().parse().unwrap();
            }
            if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
                chunked = true;
            }
        }
        let mut body = Vec::new();
        if head || status == 204 || status == 304 || (100..200).contains(&status) {
            return Response { status, body };
        }
        if chunked {
            loop {
                let mut size = String::new();
                self.reader.read_line(&mut size).unwrap();
                let n = usize::from_str_radix(size.trim().split(';').next().unwrap(), 16).unwrap();
                let mut chunk = vec![0; n + 2];
                self.reader.read_exact(&mut chunk).unwrap();
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..n]);
            }
        } else {
            body.resize(length, 0);
            self.reader.read_exact(&mut body).expect("body");
        }
        Response { status, body }
    }
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
    c.send(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    Some(c.read_response(false))
}

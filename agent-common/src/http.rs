//! A streaming HTTP/1.x request parser and a status-line parser.
//!
//! The kernel sees a connection's inbound bytes one `read` at a time, in
//! pieces of any size: a request line split over three reads, five pipelined
//! requests in one read, a body that arrives in between. So the parser is a
//! byte-at-a-time state machine whose whole state is a small `#[repr(C)]`
//! struct stored per connection in a kernel map, plus a fixed queue of
//! requests that await their response (pipelining). Bodies (Content-Length
//! and chunked) are skipped in O(1) per piece through [`RequestStream::skippable`].
//!
//! Header names are not compared as strings: the parser folds each name,
//! lowercased, into a 64-bit FNV-1a hash ([`header_hash`]) and compares that
//! with the hashes of the few names it cares about. This costs one multiply
//! per byte and needs no per-name state, which keeps the eBPF verifier happy.
//! Most header lines are not even hashed: a line whose first byte cannot
//! start a name the parser uses (`User-Agent`, `Accept`, `Cookie`... next to
//! `Content-Length`, `Transfer-Encoding`, the tenant header) is passed over
//! to its line feed eight bytes at a time ([`find_byte`]), as are ignored
//! header values and request targets that carry no tenant.

use crate::maps::{Method, PENDING_MAX, TENANT_MAX};

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a over the ASCII-lowercased bytes of a header name.
pub const fn header_hash(name: &[u8]) -> u64 {
    let mut h = FNV_OFFSET;
    let mut i = 0;
    while i < name.len() {
        h = fnv_step(h, name[i]);
        i += 1;
    }
    h
}

#[inline(always)]
const fn fnv_step(h: u64, b: u8) -> u64 {
    (h ^ (b.to_ascii_lowercase() as u64)).wrapping_mul(FNV_PRIME)
}

const CONTENT_LENGTH: u64 = header_hash(b"content-length");
const TRANSFER_ENCODING: u64 = header_hash(b"transfer-encoding");
const HOST: u64 = header_hash(b"host");

/// Where the tenant of a request comes from.
pub mod tenant_source {
    /// No tenant: every request gets the `missing` label.
    pub const NONE: u8 = 0;
    /// The value of the header whose name hashes to `tenant_header_hash`.
    pub const HEADER: u8 = 1;
    /// The first label of the Host header (`acme` in `acme.shop.example:8080`).
    pub const HOST_LABEL: u8 = 2;
    /// The path segment after `path_prefix` (`acme` in `/tenants/acme/cart`).
    pub const PATH_SEGMENT: u8 = 3;
}

/// Maximum length of the path prefix before a tenant path segment.
pub const PATH_PREFIX_MAX: usize = 32;

/// What the parser needs to know from the agent's config.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParserConfig {
    /// [`header_hash`] of the tenant header's name (for `tenant_source::HEADER`).
    pub tenant_header_hash: u64,
    /// One of [`tenant_source`].
    pub tenant_source: u8,
    /// Length of `path_prefix` in bytes.
    pub path_prefix_len: u8,
    /// The tenant header name's first byte, lowercased: a header line
    /// starting with any other byte (and not `c`, `t`, or `h` for
    /// `tenant_source::HOST_LABEL`) is skipped without hashing its name.
    pub tenant_header_first: u8,
    pub _pad: [u8; 5],
    /// For `tenant_source::PATH_SEGMENT`: the bytes before the tenant segment,
    /// e.g. `/tenants/`.
    pub path_prefix: [u8; PATH_PREFIX_MAX],
}

impl ParserConfig {
    pub const fn header(name: &[u8]) -> Self {
        ParserConfig {
            tenant_header_hash: header_hash(name),
            tenant_source: tenant_source::HEADER,
            path_prefix_len: 0,
            tenant_header_first: if name.is_empty() {
                0
            } else {
                name[0].to_ascii_lowercase()
            },
            _pad: [0; 5],
            path_prefix: [0; PATH_PREFIX_MAX],
        }
    }
}

/// A request that has been read and awaits its response.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PendingRequest {
    /// `bpf_ktime_get_ns()` when the read holding its first byte returned.
    pub start_ns: u64,
    /// A [`Method`] as u8.
    pub method: u8,
    pub tenant_len: u8,
    /// Set when the tenant value was longer than [`TENANT_MAX`] and was cut.
    pub tenant_truncated: u8,
    /// Length of the tenant up to its last non-blank byte: trailing blanks
    /// are dropped when the value ends (bytes past `tenant_len` may be
    /// non-zero; see [`PendingRequest::tenant`]).
    pub tenant_end: u8,
    pub _pad: [u8; 4],
    pub tenant: [u8; TENANT_MAX],
}

impl PendingRequest {
    pub const EMPTY: PendingRequest = PendingRequest {
        start_ns: 0,
        method: 0,
        tenant_len: 0,
        tenant_truncated: 0,
        tenant_end: 0,
        _pad: [0; 4],
        tenant: [0; TENANT_MAX],
    };

    pub fn tenant(&self) -> &[u8] {
        &self.tenant[..(self.tenant_len as usize).min(TENANT_MAX)]
    }
}

/// Parser states. `u8` constants rather than an enum so a state read back from
/// a kernel map can never be an invalid enum value.
pub mod state {
    /// Waiting for (or inside) a method token. Leading CR/LF is skipped.
    pub const METHOD: u8 = 0;
    /// Inside the request target (path).
    pub const TARGET: u8 = 1;
    /// Inside the HTTP version, until LF.
    pub const VERSION: u8 = 2;
    /// At the first byte of a header line (or of the blank line that ends them).
    pub const HEADER_LINE_START: u8 = 3;
    /// Inside a header name, hashing it.
    pub const HEADER_NAME: u8 = 4;
    /// After the colon, skipping optional white space.
    pub const HEADER_VALUE_WS: u8 = 5;
    /// Inside a header value.
    pub const HEADER_VALUE: u8 = 6;
    /// Saw CR of the blank line; expecting LF.
    pub const HEADERS_END_CR: u8 = 7;
    /// Inside a Content-Length body: `remaining` bytes to skip.
    pub const BODY: u8 = 8;
    /// Inside a chunk-size line (hex digits).
    pub const CHUNK_SIZE: u8 = 9;
    /// Inside chunk extensions, until LF.
    pub const CHUNK_EXT: u8 = 10;
    /// Inside chunk data: `remaining` bytes to skip, then CRLF.
    pub const CHUNK_DATA: u8 = 11;
    /// Skipping the CRLF after chunk data.
    pub const CHUNK_DATA_END: u8 = 12;
    /// At the start of a trailer line (after the last chunk).
    pub const TRAILER_LINE_START: u8 = 13;
    /// Inside a trailer line, until LF.
    pub const TRAILER_LINE: u8 = 14;
    /// The stream is not HTTP/1.x (or we lost sync). Nothing more is parsed on
    /// this connection until a read starts with a request line again.
    pub const INVALID: u8 = 15;
}

/// What one byte did to the stream.
pub mod event {
    pub const NONE: u8 = 0;
    /// A request line's method was recognised: a request was queued.
    pub const REQUEST_STARTED: u8 = 1;
    /// A request's headers ended (its tenant is now final).
    pub const HEADERS_DONE: u8 = 2;
    /// A request started but the pending queue was full: it is not tracked.
    pub const QUEUE_FULL: u8 = 3;
    /// The bytes are not HTTP/1.x; the stream went to `state::INVALID`.
    pub const INVALID: u8 = 4;
    /// A request target ended: the version comes next, which
    /// [`super::RequestStream::take_version`] takes whole at a chunk's start.
    pub const TARGET_DONE: u8 = 5;
}

/// Which header value we are inside.
mod value_kind {
    pub const OTHER: u8 = 0;
    pub const TENANT: u8 = 1;
    pub const CONTENT_LENGTH: u8 = 2;
    pub const TRANSFER_ENCODING: u8 = 3;
    pub const HOST_TENANT: u8 = 4;
}

const CHUNKED: &[u8; 7] = b"chunked";
/// A method token longer than this is not a method (the longest registered
/// one, `UPDATEREDIRECTREF`, has 17 bytes).
const METHOD_MAX: u8 = 20;

/// A byte of a method token. RFC 9110 allows any tchar; registered methods
/// use only uppercase letters, `-` and `_`, and so does everything here,
/// which keeps lowercase text protocols from looking like HTTP.
#[inline(always)]
fn is_method_byte(b: u8) -> bool {
    b.is_ascii_uppercase() || b == b'-' || b == b'_'
}
/// Reject absurd Content-Length / chunk sizes rather than overflow.
const BODY_MAX: u64 = 1 << 48;

/// The inbound (request) side of one HTTP/1.x connection.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestStream {
    /// One of [`state`].
    pub state: u8,
    /// Bytes of the current token seen so far (method, name, value, path).
    pub token_len: u8,
    /// The current header value's meaning.
    pub value_kind: u8,
    /// `chunked` suffix match progress inside a Transfer-Encoding value.
    pub chunked_match: u8,
    /// Whether the current request has `Transfer-Encoding: chunked`.
    pub is_chunked: u8,
    /// Path matching progress for `tenant_source::PATH_SEGMENT`:
    /// 0..=prefix_len matching the prefix, 0xff = no match / done.
    pub path_match: u8,
    /// Index of the oldest pending request.
    pub head: u8,
    /// Number of pending requests (at most [`PENDING_MAX`]).
    pub len: u8,
    /// Set while parsing a request that found the queue full (not tracked).
    pub untracked: u8,
    pub _pad: [u8; 7],
    /// Running hash (header name) or packed method bytes.
    pub acc: u64,
    /// Body bytes to skip (Content-Length, chunk data) or the size being parsed.
    pub remaining: u64,
    /// Requests awaiting their response, oldest at `head`.
    pub pending: [PendingRequest; PENDING_MAX],
}

impl Default for RequestStream {
    fn default() -> Self {
        Self::new()
    }
}

impl RequestStream {
    pub const fn new() -> Self {
        RequestStream {
            state: state::METHOD,
            token_len: 0,
            value_kind: 0,
            chunked_match: 0,
            is_chunked: 0,
            path_match: 0,
            head: 0,
            len: 0,
            untracked: 0,
            _pad: [0; 7],
            acc: 0,
            remaining: 0,
            pending: [PendingRequest::EMPTY; PENDING_MAX],
        }
    }

    /// Bytes that can be skipped without looking at them (body data).
    #[inline(always)]
    pub fn skippable(&self) -> u64 {
        if self.state == state::BODY || self.state == state::CHUNK_DATA {
            self.remaining
        } else {
            0
        }
    }

    /// Skips `n <= skippable()` body bytes.
    #[inline(always)]
    pub fn skip(&mut self, n: u64) {
        let n = if n > self.remaining {
            self.remaining
        } else {
            n
        };
        self.remaining -= n;
        if self.remaining == 0 {
            if self.state == state::BODY {
                self.state = state::METHOD;
                self.token_len = 0;
                self.acc = 0;
            } else if self.state == state::CHUNK_DATA {
                self.state = state::CHUNK_DATA_END;
                self.token_len = 0;
            }
        }
    }

    /// Called at the start of every read: a stream that lost sync gets one
    /// chance per read to find a request line at the read's first byte.
    #[inline(always)]
    pub fn begin_read(&mut self) {
        if self.state == state::INVALID {
            // Sync may have been lost inside a body: nothing is left to skip.
            self.state = state::METHOD;
            self.token_len = 0;
            self.acc = 0;
            self.remaining = 0;
        }
    }

    /// Whether the parser is inside a request line or header block.
    #[inline(always)]
    pub fn in_headers(&self) -> bool {
        self.state >= state::TARGET && self.state <= state::HEADERS_END_CR
    }

    /// Bytes were missed: wait for the next read that starts with a request
    /// line. Queued requests keep waiting for their responses.
    #[inline(always)]
    pub fn lose_sync(&mut self) {
        self.state = state::INVALID;
    }

    /// `n` bytes of the stream went by unseen (a read with `MSG_TRUNC`:
    /// TCP consumed them without copying them out). Body bytes are skipped
    /// by count; past the body, sync is lost. True when this loses sync
    /// (not when it was lost already).
    #[inline(always)]
    pub fn discard(&mut self, n: u64) -> bool {
        let body = self.skippable();
        if n <= body {
            self.skip(n);
            return false;
        }
        if self.state == state::INVALID {
            return false;
        }
        self.lose_sync();
        true
    }

    /// Whether requests await a response.
    #[inline(always)]
    pub fn has_pending(&self) -> bool {
        self.len > 0
    }

    /// Whether the queue is full: the next request line would start an
    /// untracked request ([`event::QUEUE_FULL`]). The kernel checks this when
    /// a request's headers end ([`event::HEADERS_DONE`]) and moves the
    /// oldest request out (`SPILL`, then [`RequestStream::pop`]), so deep
    /// pipelines keep every request; the newest, just parsed, stays.
    #[inline(always)]
    pub fn is_full(&self) -> bool {
        self.len as usize >= PENDING_MAX
    }

    /// The oldest request awaiting a response.
    #[inline(always)]
    pub fn oldest(&self) -> &PendingRequest {
        &self.pending[(self.head as usize) % PENDING_MAX]
    }

    /// Removes the oldest pending request (its response was seen).
    #[inline(always)]
    pub fn pop(&mut self) {
        if self.len > 0 {
            self.len -= 1;
            self.head = ((self.head as usize + 1) % PENDING_MAX) as u8;
        }
    }

    /// The request being parsed (the newest pending one), if any.
    #[inline(always)]
    fn current(&mut self) -> Option<&mut PendingRequest> {
        if self.len == 0 || self.untracked != 0 {
            return None;
        }
        let idx = (self.head as usize + self.len as usize - 1) % PENDING_MAX;
        Some(&mut self.pending[idx])
    }

    fn invalid(&mut self) -> u8 {
        // A line that started like a request but is not one (`EHLO host`,
        // `USER name`): its queued request was never a request.
        if (self.state == state::TARGET || self.state == state::VERSION)
            && self.untracked == 0
            && self.len > 0
        {
            self.len -= 1;
        }
        self.state = state::INVALID;
        event::INVALID
    }

    fn start_value(&mut self, kind: u8) {
        self.value_kind = kind;
        self.token_len = 0;
        self.chunked_match = 0;
        if kind == value_kind::CONTENT_LENGTH {
            self.remaining = 0;
        }
    }

    /// Whether the request being parsed already has a tenant value.
    #[inline(always)]
    fn has_tenant(&self) -> bool {
        if self.len == 0 || self.untracked != 0 {
            return false;
        }
        let idx = (self.head as usize + self.len as usize - 1) % PENDING_MAX;
        self.pending[idx].tenant_len > 0
    }

    /// Appends a byte to the current request's tenant.
    #[inline(always)]
    fn push_tenant(&mut self, b: u8) {
        if let Some(req) = self.current() {
            let len = req.tenant_len as usize;
            if len < TENANT_MAX {
                req.tenant[len % TENANT_MAX] = b;
                req.tenant_len += 1;
                if b != b' ' && b != b'\t' {
                    req.tenant_end = req.tenant_len;
                }
            } else {
                req.tenant_truncated = 1;
            }
        }
    }

    /// Drops trailing white space from the current request's tenant. No
    /// loop (the kernel runs this per byte): the length goes back to the
    /// last non-blank byte; the blanks stay in the array past the length.
    fn trim_tenant(&mut self) {
        if let Some(req) = self.current() {
            req.tenant_len = req.tenant_end;
        }
    }

    /// Headers ended: decide how the body is framed.
    fn headers_done(&mut self) -> u8 {
        self.token_len = 0;
        self.acc = 0;
        if self.is_chunked != 0 {
            self.state = state::CHUNK_SIZE;
            self.remaining = 0;
        } else if self.remaining > 0 {
            self.state = state::BODY;
        } else {
            self.state = state::METHOD;
        }
        event::HEADERS_DONE
    }

    /// Feeds one byte. `now_ns` stamps a request that starts here.
    #[inline(always)]
    pub fn step(&mut self, b: u8, cfg: &ParserConfig, now_ns: u64) -> u8 {
        match self.state {
            state::METHOD => self.step_method(b, cfg, now_ns),
            state::TARGET => self.step_target(b, cfg),
            state::VERSION => {
                if b == b'\n' {
                    self.state = state::HEADER_LINE_START;
                } else if self.token_len < 8 {
                    // "HTTP/1.x": check the fixed part, byte by byte.
                    const V: &[u8; 7] = b"HTTP/1.";
                    let i = self.token_len as usize;
                    if i < 7 && b != V[i % 7] {
                        return self.invalid();
                    }
                    self.token_len += 1;
                }
                event::NONE
            }
            state::HEADER_LINE_START => {
                if b == b'\r' {
                    self.state = state::HEADERS_END_CR;
                    event::NONE
                } else if b == b'\n' {
                    self.headers_done()
                } else if b == b':' || b == b' ' || b == b'\t' {
                    // Empty names and obsolete line folding: not HTTP we trust.
                    self.invalid()
                } else if is_wanted_header_start(b, cfg) {
                    self.state = state::HEADER_NAME;
                    self.acc = fnv_step(FNV_OFFSET, b);
                    event::NONE
                } else {
                    // No header the parser uses starts with this byte:
                    // the whole line is skipped like an ignored value,
                    // without hashing its name (`User-Agent`, `Accept...`).
                    self.state = state::HEADER_VALUE;
                    self.start_value(value_kind::OTHER);
                    event::NONE
                }
            }
            state::HEADER_NAME => {
                if b == b':' {
                    self.state = state::HEADER_VALUE_WS;
                    let h = self.acc;
                    let kind = if h == CONTENT_LENGTH {
                        value_kind::CONTENT_LENGTH
                    } else if h == TRANSFER_ENCODING {
                        value_kind::TRANSFER_ENCODING
                    } else if cfg.tenant_source == crate::http::tenant_source::HEADER
                        && h == cfg.tenant_header_hash
                        && !self.has_tenant()
                    {
                        // The first tenant header wins, as servers read it
                        // (a repeated header is not appended).
                        value_kind::TENANT
                    } else if cfg.tenant_source == crate::http::tenant_source::HOST_LABEL
                        && h == HOST
                    {
                        value_kind::HOST_TENANT
                    } else {
                        value_kind::OTHER
                    };
                    self.start_value(kind);
                    event::NONE
                } else if b == b'\n' || b == b'\r' {
                    self.invalid()
                } else {
                    self.acc = fnv_step(self.acc, b);
                    event::NONE
                }
            }
            state::HEADER_VALUE_WS => {
                if b == b' ' || b == b'\t' {
                    return event::NONE;
                }
                self.state = state::HEADER_VALUE;
                self.step_value(b)
            }
            state::HEADER_VALUE => self.step_value(b),
            state::HEADERS_END_CR => {
                if b == b'\n' {
                    self.headers_done()
                } else {
                    self.invalid()
                }
            }
            state::BODY | state::CHUNK_DATA => {
                // Callers normally skip these bytes; handle them anyway.
                self.skip(1);
                event::NONE
            }
            state::CHUNK_SIZE => {
                if let Some(d) = hex_digit(b) {
                    self.remaining = (self.remaining << 4) | d as u64;
                    if self.remaining > BODY_MAX {
                        return self.invalid();
                    }
                    self.token_len = self.token_len.saturating_add(1);
                    event::NONE
                } else if self.token_len == 0 {
                    self.invalid()
                } else if b == b'\n' {
                    self.chunk_size_done();
                    event::NONE
                } else {
                    self.state = state::CHUNK_EXT;
                    event::NONE
                }
            }
            state::CHUNK_EXT => {
                if b == b'\n' {
                    self.chunk_size_done();
                }
                event::NONE
            }
            state::CHUNK_DATA_END => {
                if b == b'\n' {
                    self.state = state::CHUNK_SIZE;
                    self.remaining = 0;
                    self.token_len = 0;
                } else if b != b'\r' {
                    return self.invalid();
                }
                event::NONE
            }
            state::TRAILER_LINE_START => {
                if b == b'\n' {
                    self.state = state::METHOD;
                    self.token_len = 0;
                    self.acc = 0;
                } else if b != b'\r' {
                    self.state = state::TRAILER_LINE;
                }
                event::NONE
            }
            state::TRAILER_LINE => {
                if b == b'\n' {
                    self.state = state::TRAILER_LINE_START;
                }
                event::NONE
            }
            _ => event::NONE,
        }
    }

    fn chunk_size_done(&mut self) {
        self.token_len = 0;
        if self.remaining == 0 {
            self.state = state::TRAILER_LINE_START;
        } else {
            self.state = state::CHUNK_DATA;
        }
    }

    #[inline(always)]
    fn step_method(&mut self, b: u8, cfg: &ParserConfig, now_ns: u64) -> u8 {
        if is_method_byte(b) {
            if self.token_len >= METHOD_MAX {
                return self.invalid();
            }
            self.acc = (self.acc << 8) | b as u64;
            self.token_len += 1;
            return event::NONE;
        }
        if self.token_len == 0 && (b == b'\r' || b == b'\n') {
            // RFC 9112 2.2: ignore empty lines before a request line.
            return event::NONE;
        }
        if b != b' ' || self.token_len == 0 {
            return self.invalid();
        }
        // Methods outside the nine standard ones (PURGE, PROPFIND, ...) are
        // requests too, counted as method OTHER.
        let method = Method::from_packed(self.acc);
        // A new request: frame state starts clean. `acc` and `remaining`
        // are already 0 here: every way into METHOD clears them (see
        // `begin_read`, `skip`, `headers_done`; tests `no_input_panics`,
        // `no_body_length_survives_lost_sync`). Clearing them again cost a 16-byte `memset` call per
        // request in the eBPF build (two adjacent zero stores become one).
        self.state = state::TARGET;
        self.token_len = 0;
        self.is_chunked = 0;
        self.path_match = if cfg.tenant_source == tenant_source::PATH_SEGMENT {
            0
        } else {
            0xff
        };
        if self.len as usize >= PENDING_MAX {
            self.untracked = 1;
            return event::QUEUE_FULL;
        }
        self.untracked = 0;
        let idx = (self.head as usize + self.len as usize) % PENDING_MAX;
        let req = &mut self.pending[idx];
        // Field by field, not `*req = EMPTY`: in the eBPF build that is an
        // 80-byte memset per request. Stale tenant bytes past `tenant_len`
        // are never read (see `PendingRequest::tenant`).
        req.start_ns = now_ns;
        req.method = method as u8;
        req.tenant_len = 0;
        req.tenant_truncated = 0;
        req.tenant_end = 0;
        self.len += 1;
        event::REQUEST_STARTED
    }

    #[inline(always)]
    fn step_target(&mut self, b: u8, cfg: &ParserConfig) -> u8 {
        if b == b' ' {
            self.state = state::VERSION;
            self.token_len = 0;
            return event::TARGET_DONE;
        }
        if b == b'\r' || b == b'\n' {
            // HTTP/0.9-style request lines are not HTTP/1.x.
            return self.invalid();
        }
        let m = self.path_match;
        if m != 0xff {
            let plen = (cfg.path_prefix_len as usize).min(PATH_PREFIX_MAX);
            if (m as usize) < plen {
                // Masked behind `black_box`: LLVM drops a `% PATH_PREFIX_MAX`
                // it can prove redundant (`m < plen <= 32`), and kernels
                // before 6.2 do not learn that bound from a comparison of
                // two registers, so they refuse the unmasked index.
                let at = core::hint::black_box(m as usize) & (PATH_PREFIX_MAX - 1);
                if b == cfg.path_prefix[at] {
                    self.path_match = m + 1;
                } else {
                    self.path_match = 0xff;
                }
            } else if b == b'/' || b == b'?' || b == b'#' {
                self.path_match = 0xff;
            } else {
                self.push_tenant(b);
            }
        }
        event::NONE
    }

    #[inline(always)]
    fn step_value(&mut self, b: u8) -> u8 {
        if b == b'\n' {
            self.end_value();
            self.state = state::HEADER_LINE_START;
            return event::NONE;
        }
        if b == b'\r' {
            return event::NONE;
        }
        match self.value_kind {
            value_kind::TENANT => self.push_tenant(b),
            value_kind::HOST_TENANT => {
                if b == b'.' || b == b':' {
                    self.value_kind = value_kind::OTHER;
                } else {
                    self.push_tenant(b);
                }
            }
            value_kind::CONTENT_LENGTH => {
                if b.is_ascii_digit() {
                    self.remaining = self.remaining * 10 + (b - b'0') as u64;
                    if self.remaining > BODY_MAX {
                        return self.invalid();
                    }
                } else if b != b' ' && b != b'\t' {
                    return self.invalid();
                }
            }
            value_kind::TRANSFER_ENCODING => {
                self.chunked_match = chunked_step(self.chunked_match, b);
            }
            _ => {}
        }
        event::NONE
    }

    fn end_value(&mut self) {
        match self.value_kind {
            value_kind::TENANT | value_kind::HOST_TENANT => self.trim_tenant(),
            value_kind::TRANSFER_ENCODING => {
                self.is_chunked = (self.chunked_match as usize == CHUNKED.len()) as u8;
            }
            _ => {}
        }
        self.value_kind = value_kind::OTHER;
    }
}

/// The value of a hex digit (chunk sizes).
#[inline(always)]
fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// One byte of a `Transfer-Encoding` value: progress `m` of matching
/// `chunked` as its last coding becomes the returned progress
/// (`CHUNKED.len()` when the value so far ends in `chunked`).
#[inline(always)]
fn chunked_step(m: u8, b: u8) -> u8 {
    let i = m as usize;
    if b == b' ' || b == b'\t' {
        // trailing white space keeps the match
        m
    } else if i < CHUNKED.len() && b.to_ascii_lowercase() == CHUNKED[i % 7] {
        m + 1
    } else if b.eq_ignore_ascii_case(&b'c') {
        1
    } else {
        0
    }
}

/// High bit of every byte of `y` that is zero (and possibly of bytes
/// above a zero byte: the borrow's false positives). The lowest flagged
/// byte is always a true zero byte.
#[inline(always)]
fn zero_bytes(y: u64) -> u64 {
    y.wrapping_sub(0x0101_0101_0101_0101) & !y & 0x8080_8080_8080_8080
}

/// Index (0..8) of the lowest flagged byte of a [`zero_bytes`] mask, or 8.
/// No branches beyond the empty test and no ctz (BPF has none): the
/// isolated bit times a constant whose byte `7 - k` is `k` puts the index
/// in the top byte. Branch-free matters: this runs inside the parser's
/// per-byte loop, whose every branch the eBPF verifier explores.
#[inline(always)]
fn lowest_flagged_byte(m: u64) -> usize {
    if m == 0 {
        return 8;
    }
    let bit = m & m.wrapping_neg();
    ((bit >> 7).wrapping_mul(0x0001_0203_0405_0607) >> 56) as usize
}

/// Bytes `0..k` set (k < 8).
#[inline(always)]
fn low_bytes(k: usize) -> u64 {
    if k == 0 {
        0
    } else {
        (1u64 << (8 * (k & 7))) - 1
    }
}

/// Bytes of `x` equal to `needle` become zero (others non-zero).
#[inline(always)]
fn zero_where(x: u64, needle: u8) -> u64 {
    x ^ 0x0101_0101_0101_0101u64.wrapping_mul(needle as u64)
}

/// Index (0..8) of the lowest byte of `x` equal to one of `needles`, or
/// 8, with the bytes below `from` (< 8) never matching. The three masks
/// are OR-ed before one index search: the lowest flag of the union is the
/// lowest true match of any needle.
#[inline(always)]
fn first_of(x: u64, from: usize, needles: [u8; 3]) -> usize {
    let below = low_bytes(from);
    lowest_flagged_byte(
        zero_bytes(zero_where(x, needles[0]) | below)
            | zero_bytes(zero_where(x, needles[1]) | below)
            | zero_bytes(zero_where(x, needles[2]) | below),
    )
}

/// Position of the first byte in `buf[from..to]` that is one of
/// `needles`, or `to` when there is none: two 8-byte words at a time, for
/// passing over bytes the parser does not need to step (see
/// [`RequestStream::next_needed`]). Repeat a needle to look for fewer.
#[inline(always)]
pub fn find_byte(buf: &[u8; 16], from: usize, to: usize, needles: [u8; 3]) -> usize {
    if from >= to || from >= 16 {
        return to;
    }
    let lo = u64::from_le_bytes([
        buf[0], buf[1], buf[2], buf[3], buf[4], buf[5], buf[6], buf[7],
    ]);
    let hi = u64::from_le_bytes([
        buf[8], buf[9], buf[10], buf[11], buf[12], buf[13], buf[14], buf[15],
    ]);
    let pos = if from >= 8 {
        8 + first_of(hi, from - 8, needles)
    } else {
        let p = first_of(lo, from, needles);
        if p < 8 {
            p
        } else {
            8 + first_of(hi, 0, needles)
        }
    };
    if pos < to { pos } else { to }
}

/// `HTTP/1.` as the low seven bytes of a little-endian word.
const HTTP1_PREFIX: u64 = u64::from_le_bytes(*b"HTTP/1.\0");

impl RequestStream {
    /// At the start of a request line's version (nothing of it seen yet),
    /// `HTTP/1.x` and its line end, whole in `chunk[..n]`, are taken in one
    /// go instead of ten steps: one word compare. Returns the bytes taken
    /// (0: none, step them one by one). The state after is the one the ten
    /// steps leave. The kernel starts a chunk where a version starts (see
    /// [`event::TARGET_DONE`]), so the version is at the chunk's start.
    #[inline(always)]
    pub fn take_version(&mut self, chunk: &[u8; 16], n: usize) -> usize {
        if self.state != state::VERSION || self.token_len != 0 || n < 10 {
            return 0;
        }
        let word = u64::from_le_bytes([
            chunk[0], chunk[1], chunk[2], chunk[3], chunk[4], chunk[5], chunk[6], chunk[7],
        ]);
        if word & 0x00ff_ffff_ffff_ffff != HTTP1_PREFIX || !chunk[7].is_ascii_digit() {
            return 0;
        }
        let taken = if chunk[8] == b'\r' && chunk[9] == b'\n' {
            10
        } else if chunk[8] == b'\n' {
            9
        } else {
            return 0;
        };
        self.state = state::HEADER_LINE_START;
        self.token_len = 8;
        taken
    }
}

/// Whether a header line starting with `b` may be one the parser uses:
/// `Content-Length`, `Transfer-Encoding`, the tenant header, `Host` when
/// the tenant is its first label. One compare per header line instead of
/// hashing every name.
#[inline(always)]
fn is_wanted_header_start(b: u8, cfg: &ParserConfig) -> bool {
    let b = b.to_ascii_lowercase();
    b == b'c'
        || b == b't'
        || (cfg.tenant_source == tenant_source::HEADER && b == cfg.tenant_header_first)
        || (cfg.tenant_source == tenant_source::HOST_LABEL && b == b'h')
}

impl RequestStream {
    /// Whether [`RequestStream::next_needed`] may pass over bytes: a cheap
    /// test before the word search, so the common per-byte path stays
    /// short (and so does the verifier's exploration of it).
    #[inline(always)]
    pub fn may_skip(&self) -> bool {
        self.state == state::HEADER_VALUE
            || self.state == state::TARGET
            || self.state == state::TRAILER_LINE
            || self.state == state::CHUNK_EXT
    }

    /// The position in `chunk[from..to]` of the next byte the parser must
    /// step: `from` itself, or further when the bytes in between carry
    /// nothing it uses (an ignored header value or line, a trailer line, a
    /// chunk extension: up to the line feed; a request target with no
    /// tenant in it: up to the space that ends it, or a CR or LF). `to` when
    /// none of them is needed.
    #[inline(always)]
    pub fn next_needed(&self, chunk: &[u8; 16], from: usize, to: usize) -> usize {
        let needles = if (self.state == state::HEADER_VALUE && self.value_kind == value_kind::OTHER)
            || self.state == state::TRAILER_LINE
            || self.state == state::CHUNK_EXT
        {
            [b'\n'; 3]
        } else if self.state == state::TARGET && self.path_match == 0xff {
            // The space that ends it, or the CR / LF that make the line
            // not a request line (`step_target`).
            *b" \r\n"
        } else {
            return from;
        };
        find_byte(chunk, from, to, needles)
    }

    /// Whether the next step may take more than one byte (a version taken
    /// whole, bytes nobody needs jumped over): [`RequestStream::scan_step`]
    /// then looks at the 16 bytes ahead.
    #[inline(always)]
    pub fn wants_lookahead(&self) -> bool {
        (self.state == state::VERSION && self.token_len == 0) || self.may_skip()
    }

    /// One step of the scan, as the kernel takes it once per `bpf_loop`
    /// iteration (`parse_step` in agent-ebpf calls this very function), with
    /// `n >= 1` bytes of the stream at hand, not inside a body (the caller
    /// skips bodies by count): `byte` is the next one, and `ahead()` gives
    /// the next 16 (the first `n` of them valid), asked for only when
    /// [`RequestStream::wants_lookahead`]. A version at hand is taken whole,
    /// bytes nobody needs (an ignored header line, a request target without
    /// a tenant) are jumped over, else `byte` is stepped. Returns the bytes
    /// consumed (at least 1) and the stepped byte's event.
    ///
    /// One step, with no loop inside, is what keeps the kernel's verifier
    /// cheap: it explores this body once per distinct state rather than
    /// once per byte position of a chunk.
    #[inline(always)]
    pub fn scan_step<'a>(
        &mut self,
        byte: u8,
        ahead: impl FnOnce() -> &'a [u8; 16],
        n: usize,
        cfg: &ParserConfig,
        now_ns: u64,
    ) -> (usize, u8) {
        if self.wants_lookahead() {
            let chunk = ahead();
            let taken = self.take_version(chunk, n);
            if taken > 0 {
                return (taken, event::NONE);
            }
            let j = self.next_needed(chunk, 0, n);
            if j > 0 {
                return (j, event::NONE);
            }
        }
        (1, self.step(byte, cfg, now_ns))
    }

    /// Parses one whole read as the kernel does (`parse_inbound`): body bytes
    /// skipped by count, every other step through
    /// [`RequestStream::scan_step`] with the kernel's read-ahead window
    /// ([`window`]). For the host-side tests (unit, property and fuzz),
    /// which model the kernel with it. Stops at an invalid byte: the rest of
    /// the read is not parsed (the stream stays `INVALID` until the next).
    pub fn walk_read(
        &mut self,
        read: &[u8],
        cfg: &ParserConfig,
        now_ns: u64,
        mut on_event: impl FnMut(&mut Self, u8),
    ) {
        self.begin_read();
        let mut win = window::HostWindow::new(read);
        let mut off = 0usize;
        while off < read.len() {
            let skip = self.skippable();
            if skip > 0 {
                let n = skip.min((read.len() - off) as u64);
                self.skip(n);
                off += n as usize;
                continue;
            }
            let (byte, ahead, n) = win.at(off);
            let (taken, ev) = self.scan_step(byte, || &ahead, n, cfg, now_ns);
            on_event(self, ev);
            if ev == event::INVALID {
                return;
            }
            off += taken;
        }
    }
}

/// The kernel's read-ahead window over a buffer of user memory: the scan
/// reads `WINDOW` bytes (or what is left of the buffer) with one helper
/// call and steps through them, and reads again from the cursor when the
/// window no longer holds the 16 bytes a step may look at (or all that is
/// left). Shared by the kernel (`parse.rs`) and the host's model of it.
pub mod window {
    /// Bytes read from user memory per helper call.
    pub const WINDOW: usize = 128;
    /// Bytes a step may look at ([`super::RequestStream::scan_step`]).
    pub const AHEAD: usize = 16;

    /// Where the byte at `pos` (with `rest` bytes of its buffer left from
    /// it) stands in a window of `len` bytes read at `base`: its offset in
    /// the window and the bytes at hand from it (at most [`AHEAD`]).
    /// `None`: read the window again at `pos`, [`fill_len`] bytes.
    #[inline(always)]
    pub fn place(pos: u64, rest: u64, base: u64, len: u64) -> Option<(u64, u64)> {
        if pos < base || pos >= base + len {
            return None;
        }
        let avail = base + len - pos;
        if avail < AHEAD as u64 && avail < rest {
            return None;
        }
        let n = if avail < rest { avail } else { rest };
        Some((pos - base, if n < AHEAD as u64 { n } else { AHEAD as u64 }))
    }

    /// Bytes to read into the window at a position with `rest` bytes of
    /// its buffer left.
    #[inline(always)]
    pub fn fill_len(rest: u64) -> u64 {
        if rest < WINDOW as u64 {
            rest
        } else {
            WINDOW as u64
        }
    }

    /// The kernel's window over a host buffer, for the tests' model of
    /// the kernel: the same fills at the same places.
    pub struct HostWindow<'a> {
        buf: &'a [u8],
        base: u64,
        len: u64,
        bytes: [u8; WINDOW + AHEAD],
    }

    impl<'a> HostWindow<'a> {
        pub fn new(buf: &'a [u8]) -> Self {
            HostWindow {
                buf,
                base: 0,
                len: 0,
                bytes: [0; WINDOW + AHEAD],
            }
        }

        /// The byte at `off`, the 16 bytes from it (past the window's end,
        /// stale bytes of an earlier fill, as in the kernel's window) and
        /// how many of those are valid.
        pub fn at(&mut self, off: usize) -> (u8, [u8; AHEAD], usize) {
            let rest = (self.buf.len() - off) as u64;
            if place(off as u64, rest, self.base, self.len).is_none() {
                let len = fill_len(rest);
                self.bytes[..len as usize].copy_from_slice(&self.buf[off..off + len as usize]);
                self.base = off as u64;
                self.len = len;
            }
            let (at, n) = place(off as u64, rest, self.base, self.len)
                .expect("a window just read at `off` holds it");
            let at = at as usize;
            let mut ahead = [0u8; AHEAD];
            ahead.copy_from_slice(&self.bytes[at..at + AHEAD]);
            (self.bytes[at], ahead, n as usize)
        }
    }
}

/// Parses the start of a response: `HTTP/1.x NNN`. Returns the status code,
/// or `None` when the bytes are not a status line. `buf` holds the first
/// bytes the server wrote (at least 12 are needed).
#[inline(always)]
pub fn parse_status_line(buf: &[u8; 16], len: usize) -> Option<u16> {
    if len < 12 {
        return None;
    }
    if &buf[..7] != b"HTTP/1." || !buf[7].is_ascii_digit() || buf[8] != b' ' {
        return None;
    }
    let (a, b, c) = (buf[9], buf[10], buf[11]);
    if !(b'1'..=b'5').contains(&a) || !b.is_ascii_digit() || !c.is_ascii_digit() {
        return None;
    }
    if len > 12 && buf[12] != b' ' && buf[12] != b'\r' && buf[12] != b'\n' {
        return None;
    }
    Some((a - b'0') as u16 * 100 + (b - b'0') as u16 * 10 + (c - b'0') as u16)
}

/// Whether a read starting with these bytes (`len` of them, at most 8 seen)
/// can be the start of a request: a method token followed by a space, or
/// only method bytes (a longer method, or a first read cut short by a
/// client that dribbles bytes). A cheap test made before any
/// per-connection state exists, so unrelated reads cost almost nothing.
#[inline(always)]
pub fn looks_like_request(buf: &[u8; 8], len: usize) -> bool {
    let mut i = 0;
    while i < 8 {
        if i >= len {
            return i > 0;
        }
        let b = buf[i];
        if b == b' ' {
            return i > 0;
        }
        if !is_method_byte(b) {
            return false;
        }
        i += 1;
    }
    true
}

pub mod response;

#[cfg(test)]
mod tests;

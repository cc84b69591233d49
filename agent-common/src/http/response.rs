//! Framing the responses inside one write (server side) or one read (client
//! side), so that several responses in one buffer each answer their request.
//!
//! A server that batches the responses of pipelined requests (asyncio
//! transports under back-pressure, hyper with `pipeline_flush`, proxies)
//! writes them in one `write`; a client that pipelines may read them in one
//! `read`. Looking only for a status line at the start of the buffer counts
//! the first response and leaves the others' requests to be counted as 000
//! when the connection closes: false failures.
//!
//! The kernel uses this only when a connection has two or more requests
//! awaiting a response, so the common one-response buffer costs nothing
//! more. The state lives for one buffer (per-CPU scratch memory): a buffer
//! is framed from its first byte, which must start a status line. Bodies
//! are framed as RFC 9112 6.3 says: none for 1xx, 204, 304 and answers to
//! HEAD; chunked; Content-Length; otherwise the body runs to the end of the
//! connection, and framing stops.

use super::{BODY_MAX, CONTENT_LENGTH, TRANSFER_ENCODING, chunked_step, fnv_step, hex_digit};
use super::{FNV_OFFSET, find_byte};

/// Framing states (`u8` constants, like the request parser's).
pub mod state {
    /// Matching `HTTP/1.x NNN` (`token_len` bytes of it seen).
    pub const STATUS: u8 = 0;
    /// The rest of the status line (reason phrase), up to its LF.
    pub const STATUS_REST: u8 = 1;
    /// At the start of a header line (or of the blank line ending them).
    pub const HEADER_LINE_START: u8 = 2;
    /// Inside a header name that may be Content-Length or Transfer-Encoding.
    pub const HEADER_NAME: u8 = 3;
    /// After the colon, skipping optional white space.
    pub const HEADER_VALUE_WS: u8 = 4;
    /// Inside a header value.
    pub const HEADER_VALUE: u8 = 5;
    /// Saw CR of the blank line; expecting LF.
    pub const HEADERS_END_CR: u8 = 6;
    /// Inside a Content-Length body: `remaining` bytes to skip.
    pub const BODY: u8 = 7;
    /// Parsing a chunk-size line (hex digits).
    pub const CHUNK_SIZE: u8 = 8;
    /// Chunk extensions after the size, up to LF.
    pub const CHUNK_EXT: u8 = 9;
    /// Inside chunk data: `remaining` bytes to skip.
    pub const CHUNK_DATA: u8 = 10;
    /// After chunk data: expecting CRLF.
    pub const CHUNK_DATA_END: u8 = 11;
    /// After the last chunk: at the start of a trailer line.
    pub const TRAILER_LINE_START: u8 = 12;
    /// Inside a trailer line.
    pub const TRAILER_LINE: u8 = 13;
    /// Framing stopped: not a response, a body to the end of the connection,
    /// or another protocol (101).
    pub const DONE: u8 = 14;
}

/// What a byte did, returned by [`ResponseStream::step`].
pub mod event {
    pub const NONE: u8 = 0;
    /// A status line's code was read (at its third digit):
    /// [`super::ResponseStream::status`].
    pub const STATUS: u8 = 1;
    /// Framing stopped at this byte (see [`super::state::DONE`]).
    pub const DONE: u8 = 2;
    /// The headers of a final response that says `Connection: close`
    /// ended at this byte: the server takes no request after this one
    /// (RFC 9112 9.6), so requests still queued behind it were never taken.
    /// Framing goes on (the body is framed as usual).
    pub const CLOSE: u8 = 3;
}

/// What a header value means to the framing.
mod value_kind {
    pub const OTHER: u8 = 0;
    pub const CONTENT_LENGTH: u8 = 1;
    pub const TRANSFER_ENCODING: u8 = 2;
    pub const CONNECTION: u8 = 3;
}

/// The fixed start of a status line.
const VERSION: &[u8; 7] = b"HTTP/1.";

const CONNECTION: u64 = super::header_hash(b"connection");
const CLOSE: &[u8; 5] = b"close";

/// One byte of a `Connection` value: progress `m` of matching `close` as
/// its last token becomes the returned progress (`CLOSE.len()` when the
/// value so far ends in `close`), as `chunked_step` does for
/// Transfer-Encoding.
#[inline(always)]
fn close_step(m: u8, b: u8) -> u8 {
    let i = m as usize;
    if b == b' ' || b == b'\t' {
        m
    } else if i < CLOSE.len() && b.to_ascii_lowercase() == CLOSE[i % 5] {
        m + 1
    } else if b.eq_ignore_ascii_case(&b'c') {
        1
    } else {
        0
    }
}

/// Frames a buffer of responses, one byte at a time.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResponseStream {
    /// One of [`state`].
    pub state: u8,
    /// Bytes of the status line matched so far; hex digits of a chunk size.
    pub token_len: u8,
    /// The current header value's meaning.
    pub value_kind: u8,
    /// `chunked` suffix match progress inside a Transfer-Encoding value.
    pub chunked_match: u8,
    /// Whether this response has `Transfer-Encoding: chunked`.
    pub is_chunked: u8,
    /// Whether this response has a Content-Length.
    pub has_length: u8,
    /// Set by the caller when the request this response answers was a HEAD:
    /// the response has no body, whatever its headers say.
    pub no_body: u8,
    /// Whether this response has `Connection: close` (`close` as the last
    /// token of a Connection header). Set by the header; cleared at an
    /// interim response's end and when the next response starts, so after
    /// [`event::CLOSE`] it stays set until the next status line.
    pub closes: u8,
    /// The status code of the current response (valid from [`event::STATUS`]).
    pub status: u16,
    /// `close` suffix match progress inside a Connection value.
    pub close_match: u8,
    pub _pad2: [u8; 5],
    /// Running hash of the current header name.
    pub acc: u64,
    /// Body bytes to skip, or the size being parsed.
    pub remaining: u64,
}

impl Default for ResponseStream {
    fn default() -> Self {
        Self::new()
    }
}

impl ResponseStream {
    /// Expects a status line at the next byte.
    pub const fn new() -> Self {
        ResponseStream {
            state: state::STATUS,
            token_len: 0,
            value_kind: value_kind::OTHER,
            chunked_match: 0,
            is_chunked: 0,
            has_length: 0,
            no_body: 0,
            closes: 0,
            status: 0,
            close_match: 0,
            _pad2: [0; 5],
            acc: 0,
            remaining: 0,
        }
    }

    /// Whether framing has stopped.
    #[inline(always)]
    pub fn is_done(&self) -> bool {
        self.state == state::DONE
    }

    /// Whether the stream is between responses (the next byte starts a
    /// status line), or has lost its place (stopped): either way the next
    /// read is looked at from its first byte, not from inside a response.
    #[inline(always)]
    pub fn between_responses(&self) -> bool {
        (self.state == state::STATUS && self.token_len == 0) || self.state == state::DONE
    }

    /// The stream's place is no longer known (a response was taken from
    /// the start of a read without framing its body): the next read that
    /// starts a status line starts the stream again.
    #[inline(always)]
    pub fn lose_place(&mut self) {
        self.state = state::DONE;
    }

    /// `n` bytes of the stream went by unseen (a client's read with
    /// `MSG_TRUNC`): body bytes are skipped by count; past the body, the
    /// place is lost.
    #[inline(always)]
    pub fn discard(&mut self, n: u64) {
        if n <= self.skippable() {
            self.skip(n);
        } else {
            self.lose_place();
        }
    }

    /// Whether the stream stands inside a Content-Length body, with
    /// `remaining` bytes of it still to come.
    #[inline(always)]
    pub fn in_length_body(&self) -> bool {
        self.state == state::BODY && self.remaining > 0
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
                self.next_response();
            } else if self.state == state::CHUNK_DATA {
                self.state = state::CHUNK_DATA_END;
                self.token_len = 0;
            }
        }
    }

    /// Whether [`ResponseStream::next_needed`] may pass over bytes.
    #[inline(always)]
    pub fn may_skip(&self) -> bool {
        (self.state == state::HEADER_VALUE && self.value_kind == value_kind::OTHER)
            || self.state == state::STATUS_REST
            || self.state == state::TRAILER_LINE
            || self.state == state::CHUNK_EXT
    }

    /// The position in `chunk[from..to]` of the next byte to step: in the
    /// states of [`ResponseStream::may_skip`] only a line feed matters.
    #[inline(always)]
    pub fn next_needed(&self, chunk: &[u8; 16], from: usize, to: usize) -> usize {
        if self.may_skip() {
            find_byte(chunk, from, to, [b'\n'; 3])
        } else {
            from
        }
    }

    /// One step of the framing, as the kernel takes it once per `bpf_loop`
    /// iteration (`frame_step` in agent-ebpf calls this very function), not
    /// inside a body (the caller skips bodies by count): `byte` is the next
    /// byte, `ahead()` the next 16 (the first `n >= 1` valid), asked for only
    /// when [`ResponseStream::may_skip`]. Bytes nobody needs are jumped over,
    /// else `byte` is stepped. Returns the bytes consumed (at least 1) and
    /// the stepped byte's event (`NONE`: none).
    #[inline(always)]
    pub fn scan_step<'a>(
        &mut self,
        byte: u8,
        ahead: impl FnOnce() -> &'a [u8; 16],
        n: usize,
    ) -> (usize, u8) {
        if self.may_skip() {
            let j = self.next_needed(ahead(), 0, n);
            if j > 0 {
                return (j, event::NONE);
            }
        }
        (1, self.step(byte))
    }

    /// The next response starts: its status line is expected.
    #[inline(always)]
    fn next_response(&mut self) {
        self.state = state::STATUS;
        self.token_len = 0;
        self.value_kind = value_kind::OTHER;
        self.is_chunked = 0;
        self.has_length = 0;
        self.no_body = 0;
        self.closes = 0;
        self.close_match = 0;
        self.status = 0;
        self.acc = 0;
        self.remaining = 0;
    }

    #[inline(always)]
    fn done(&mut self) -> u8 {
        self.state = state::DONE;
        event::DONE
    }

    /// The blank line after the headers: how the body is framed, and
    /// [`event::CLOSE`] for a final response that closes the connection
    /// (its `closes` stays set until the next response starts).
    fn headers_done(&mut self) -> u8 {
        let s = self.status;
        if s == 101 {
            // Switching protocols: what follows is not HTTP/1.x.
            return self.done();
        }
        let ev = if s >= 200 && self.closes != 0 {
            event::CLOSE
        } else {
            event::NONE
        };
        if s < 200 || s == 204 || s == 304 || self.no_body != 0 {
            // Interim (the final response follows), or no body by definition.
            self.next_response();
        } else if self.is_chunked != 0 {
            self.state = state::CHUNK_SIZE;
            self.token_len = 0;
            self.remaining = 0;
        } else if self.has_length != 0 {
            if self.remaining > 0 {
                self.state = state::BODY;
            } else {
                self.next_response();
            }
        } else {
            // Delimited by the connection's end: nothing after it is framed
            // (`closes`, when set, stays: the caller reads it at DONE).
            return self.done();
        }
        if ev == event::CLOSE {
            // `next_response` above cleared it; the caller reads it.
            self.closes = 1;
        }
        ev
    }

    /// Feeds one byte.
    #[inline(always)]
    pub fn step(&mut self, b: u8) -> u8 {
        match self.state {
            state::STATUS => self.step_status(b),
            state::STATUS_REST => {
                if b == b'\n' {
                    self.state = state::HEADER_LINE_START;
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
                    self.done()
                } else if b.eq_ignore_ascii_case(&b'c') || b.eq_ignore_ascii_case(&b't') {
                    self.state = state::HEADER_NAME;
                    self.acc = fnv_step(FNV_OFFSET, b);
                    event::NONE
                } else {
                    // Not a header the framing uses: skip the line.
                    self.state = state::HEADER_VALUE;
                    self.value_kind = value_kind::OTHER;
                    event::NONE
                }
            }
            state::HEADER_NAME => {
                if b == b':' {
                    self.state = state::HEADER_VALUE_WS;
                    self.value_kind = if self.acc == CONTENT_LENGTH {
                        // A repeated Content-Length restarts the number.
                        self.has_length = 1;
                        self.remaining = 0;
                        value_kind::CONTENT_LENGTH
                    } else if self.acc == TRANSFER_ENCODING {
                        self.chunked_match = 0;
                        value_kind::TRANSFER_ENCODING
                    } else if self.acc == CONNECTION {
                        self.close_match = 0;
                        value_kind::CONNECTION
                    } else {
                        value_kind::OTHER
                    };
                    event::NONE
                } else if b == b'\n' || b == b'\r' {
                    self.done()
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
                    self.done()
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
                        return self.done();
                    }
                    self.token_len = self.token_len.saturating_add(1);
                    event::NONE
                } else if self.token_len == 0 {
                    self.done()
                } else {
                    if b == b'\n' {
                        self.chunk_size_done();
                    } else {
                        self.state = state::CHUNK_EXT;
                    }
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
                    event::NONE
                } else if b != b'\r' {
                    self.done()
                } else {
                    event::NONE
                }
            }
            state::TRAILER_LINE_START => {
                if b == b'\n' {
                    self.next_response();
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
            _ => event::DONE,
        }
    }

    /// `HTTP/1.x NNN` then a space, CR or LF: the status lines
    /// [`super::parse_status_line`] accepts. The code counts at its third
    /// digit (a buffer may end there); a fourth byte that cannot follow a
    /// code stops the framing.
    #[inline(always)]
    fn step_status(&mut self, b: u8) -> u8 {
        let i = self.token_len as usize;
        let ok = if i < 12 {
            fits_status_line(i, b)
        } else {
            b == b' ' || b == b'\r' || b == b'\n'
        };
        if !ok {
            return self.done();
        }
        if i >= 12 {
            self.state = if b == b'\n' {
                state::HEADER_LINE_START
            } else {
                state::STATUS_REST
            };
            return event::NONE;
        }
        self.token_len += 1;
        if i >= 9 {
            self.status = self.status * 10 + (b - b'0') as u16;
            if i == 11 {
                return event::STATUS;
            }
        }
        event::NONE
    }

    #[inline(always)]
    fn step_value(&mut self, b: u8) -> u8 {
        if b == b'\n' {
            if self.value_kind == value_kind::TRANSFER_ENCODING {
                self.is_chunked = (self.chunked_match as usize == super::CHUNKED.len()) as u8;
            } else if self.value_kind == value_kind::CONNECTION
                && self.close_match as usize == CLOSE.len()
            {
                self.closes = 1;
            }
            self.value_kind = value_kind::OTHER;
            self.state = state::HEADER_LINE_START;
            return event::NONE;
        }
        if b == b'\r' {
            return event::NONE;
        }
        match self.value_kind {
            value_kind::CONTENT_LENGTH => {
                if b.is_ascii_digit() {
                    self.remaining = self.remaining * 10 + (b - b'0') as u64;
                    if self.remaining > BODY_MAX {
                        return self.done();
                    }
                } else if b != b' ' && b != b'\t' {
                    // `Content-Length: 5, 5` and the like: not framed safely.
                    return self.done();
                }
            }
            value_kind::TRANSFER_ENCODING => {
                self.chunked_match = chunked_step(self.chunked_match, b);
            }
            value_kind::CONNECTION => {
                self.close_match = close_step(self.close_match, b);
            }
            _ => {}
        }
        event::NONE
    }

    fn chunk_size_done(&mut self) {
        self.token_len = 0;
        if self.remaining == 0 {
            self.state = state::TRAILER_LINE_START;
        } else {
            self.state = state::CHUNK_DATA;
        }
    }
}

/// Whether `b` may be byte `i` (< 12) of a status line's `HTTP/1.x NNN`.
#[inline(always)]
pub fn fits_status_line(i: usize, b: u8) -> bool {
    if i < 7 {
        b == VERSION[i % 7]
    } else if i == 8 {
        b == b' '
    } else if i == 9 {
        (b'1'..=b'5').contains(&b)
    } else {
        b.is_ascii_digit()
    }
}

/// Whether `buf[..n]`, shorter than a status line's `HTTP/1.x NNN`, may be
/// its start: a client reading a line in small pieces gets one that way.
#[inline(always)]
pub fn may_start_status_line(buf: &[u8; 16], n: usize) -> bool {
    let mut i = 0;
    while i < 12 {
        if i >= n {
            break;
        }
        if !fits_status_line(i, buf[i]) {
            return false;
        }
        i += 1;
    }
    n > 0
}

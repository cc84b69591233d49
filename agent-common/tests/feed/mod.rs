//! The parser fed the way the kernel feeds it, and byte by byte without
//! shortcuts; shared by the property tests and the libFuzzer target
//! (`agent-common/fuzz`).

use burnwatch_common::http::{ParserConfig, RequestStream, event, state};
use burnwatch_common::maps::{Method, PENDING_MAX, TENANT_MAX};

/// What one run of the parser reported.
#[derive(Debug, PartialEq, Eq, Default)]
pub struct Outcome {
    pub requests: Vec<(Method, Vec<u8>)>,
    pub invalid: u32,
    pub queue_full: u32,
}

/// The state must stay within what the kernel side relies on.
pub fn check_invariants(s: &RequestStream) {
    assert!(s.state <= state::INVALID, "state {}", s.state);
    assert!(s.len as usize <= PENDING_MAX, "queue length {}", s.len);
    assert!((s.head as usize) < PENDING_MAX, "head {}", s.head);
    for p in &s.pending {
        assert!(p.tenant_len as usize <= TENANT_MAX);
        assert!(p.tenant_end as usize <= TENANT_MAX);
    }
}

/// Walks `reads` the way the kernel does ([`RequestStream::walk_read`]),
/// handing every event to `on_event` with the stream, and checks the
/// stream's invariants after each event and each read.
fn walk_kernel_like(
    reads: &[&[u8]],
    cfg: &ParserConfig,
    mut on_event: impl FnMut(&mut RequestStream, u8),
) -> RequestStream {
    let mut s = RequestStream::new();
    for read in reads {
        s.walk_read(read, cfg, 1, |s, ev| {
            on_event(s, ev);
            check_invariants(s);
        });
        check_invariants(&s);
    }
    s
}

/// Feeds `reads` like the kernel does. With `respond`, each request gets
/// its response as soon as its headers are done (it is popped).
pub fn feed_kernel_like(cfg: &ParserConfig, reads: &[&[u8]], respond: bool) -> Outcome {
    let mut out = Outcome::default();
    walk_kernel_like(reads, cfg, |s, ev| record(s, ev, &mut out, respond));
    out
}

/// Feeds `reads` like the kernel does, with no responses and the kernel's
/// answer to deep pipelines: when a request's headers end with the queue
/// full, its oldest request moves to a spill list (the `SPILL` map).
/// Returns every request in the order responses answer them (spilled
/// first, then the queue) and the number of QUEUE_FULL events.
#[allow(dead_code)] // not used by the fuzz target
pub fn feed_kernel_spilling(cfg: &ParserConfig, reads: &[&[u8]]) -> (Vec<(Method, Vec<u8>)>, u32) {
    let mut spilled = Vec::new();
    let mut queue_full = 0;
    let mut s = walk_kernel_like(reads, cfg, |s, ev| match ev {
        event::HEADERS_DONE if s.is_full() => {
            let oldest = *s.oldest();
            spilled.push((Method::from_u8(oldest.method), oldest.tenant().to_vec()));
            s.pop();
        }
        event::QUEUE_FULL => queue_full += 1,
        _ => {}
    });
    while s.has_pending() {
        let oldest = *s.oldest();
        spilled.push((Method::from_u8(oldest.method), oldest.tenant().to_vec()));
        s.pop();
    }
    (spilled, queue_full)
}

/// Feeds every byte through `step` (no shortcuts), read boundaries kept.
pub fn feed_bytewise(cfg: &ParserConfig, reads: &[&[u8]], respond: bool) -> Outcome {
    let mut s = RequestStream::new();
    let mut out = Outcome::default();
    for read in reads {
        s.begin_read();
        for &b in *read {
            if s.skippable() > 0 {
                s.skip(1);
                continue;
            }
            let ev = s.step(b, cfg, 1);
            record(&mut s, ev, &mut out, respond);
        }
    }
    out
}

/// Records the event `ev` the last byte stepped had on `s`.
fn record(s: &mut RequestStream, ev: u8, out: &mut Outcome, respond: bool) {
    match ev {
        // An untracked request (queue full) also ends its headers.
        event::HEADERS_DONE if s.has_pending() && s.untracked == 0 => {
            let newest = s.pending[(s.head as usize + s.len as usize - 1) % PENDING_MAX];
            out.requests
                .push((Method::from_u8(newest.method), newest.tenant().to_vec()));
            if respond {
                s.pop();
            }
        }
        event::INVALID => out.invalid += 1,
        event::QUEUE_FULL => out.queue_full += 1,
        _ => {}
    }
    check_invariants(s);
}

/// Splits `bytes` at the given (sorted, deduplicated) cut points.
pub fn split_at<'a>(bytes: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    cuts.sort_unstable();
    cuts.dedup();
    let mut out = Vec::new();
    let mut prev = 0;
    for c in cuts {
        out.push(&bytes[prev..c]);
        prev = c;
    }
    out.push(&bytes[prev..]);
    out.retain(|r| !r.is_empty());
    out
}

/// Frames one buffer of responses the way the kernel does (steps through its read-ahead window,
/// bodies skipped, SWAR jump to the next line feed in skipped lines) and
/// returns the status codes found, in order. `head[k]` says whether the
/// k-th final response answers a HEAD request (the caller of the kernel's
/// framing sets `no_body` from the request it answers).
pub fn frame_kernel_like(buf: &[u8], head: &[bool]) -> Vec<u16> {
    frame_reads(&[buf], head, true)
}

/// The same, stepping every byte (no skipping, no SWAR search).
pub fn frame_bytewise(buf: &[u8], head: &[bool]) -> Vec<u16> {
    frame_reads(&[buf], head, false)
}

/// Frames `reads` one after another with one stream kept between them, as
/// the kernel frames a client's reads (`ConnState::responses`): each read
/// is chunked from its own first byte, and a stream that stopped starts
/// again, fresh, at the next read. `shortcuts` as the kernel takes them.
pub fn frame_reads(reads: &[&[u8]], head: &[bool], shortcuts: bool) -> Vec<u16> {
    use burnwatch_common::http::response::ResponseStream;
    let mut s = ResponseStream::new();
    let mut statuses = Vec::new();
    let mut answered = 0usize;
    for buf in reads {
        frame_one(&mut s, buf, shortcuts, |s| {
            statuses.push(s.status);
            if s.status >= 200 || s.status == 101 {
                if head.get(answered).copied().unwrap_or(false) {
                    s.no_body = 1;
                }
                answered += 1;
            }
        });
    }
    statuses
}

/// Frames one read (or write) `buf` with the stream `s`, calling `on_status`
/// at each status line: with `shortcuts` as the kernel's `frame_step` loop
/// does (bodies skipped by count, steps through `ResponseStream::scan_step`
/// with the kernel's read-ahead window), without them one byte at a time. A
/// stopped stream starts again, fresh, at `buf`'s first byte.
fn frame_one(
    s: &mut burnwatch_common::http::response::ResponseStream,
    buf: &[u8],
    shortcuts: bool,
    mut on_status: impl FnMut(&mut burnwatch_common::http::response::ResponseStream),
) {
    use burnwatch_common::http::response::{ResponseStream, event as rev, state as rstate};
    if s.is_done() {
        *s = ResponseStream::new();
    }
    let mut off = 0usize;
    let mut win = burnwatch_common::http::window::HostWindow::new(buf);
    while off < buf.len() && !s.is_done() {
        let ev = if shortcuts {
            let skip = s.skippable();
            if skip > 0 {
                let n = skip.min((buf.len() - off) as u64);
                s.skip(n);
                off += n as usize;
                continue;
            }
            let (byte, ahead, n) = win.at(off);
            let (taken, ev) = s.scan_step(byte, || &ahead, n);
            off += taken;
            ev
        } else {
            off += 1;
            s.step(buf[off - 1])
        };
        assert!(s.state <= rstate::DONE, "response state {}", s.state);
        if ev == rev::STATUS {
            on_status(s);
        }
    }
}

/// The kernel's client side (`finish_read` and `frame_responses`): the
/// requests a watched client wrote, and its reads, as they happen.
pub struct ClientModel {
    stream: burnwatch_common::http::response::ResponseStream,
    /// Requests awaiting a response, oldest first: whether each is a HEAD.
    pending: std::collections::VecDeque<bool>,
    /// Status lines found: final ones that answered a request, and interim
    /// ones met while framing.
    pub statuses: Vec<u16>,
    /// Status lines found with no request awaiting one.
    pub unmatched: usize,
}

impl Default for ClientModel {
    fn default() -> Self {
        ClientModel {
            stream: burnwatch_common::http::response::ResponseStream::new(),
            pending: Default::default(),
            statuses: Vec::new(),
            unmatched: 0,
        }
    }
}

impl ClientModel {
    /// The client writes requests (`true`: a HEAD).
    pub fn write(&mut self, heads: &[bool]) {
        self.pending.extend(heads);
    }

    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// The client reads `buf`.
    pub fn read(&mut self, buf: &[u8]) {
        use burnwatch_common::http::{parse_status_line, response::may_start_status_line};
        if self.pending.len() >= 2 || !self.stream.between_responses() {
            return self.frame(buf);
        }
        if self.stream.is_done() && self.pending.is_empty() {
            return;
        }
        let n = buf.len().min(16);
        let mut head = [0u8; 16];
        head[..n].copy_from_slice(&buf[..n]);
        match parse_status_line(&head, n) {
            Some(status) if status >= 200 || status == 101 => {
                if self.pending.pop_front().is_some() {
                    self.statuses.push(status);
                } else {
                    self.unmatched += 1;
                }
                self.stream.lose_place();
            }
            Some(_) => self.frame(buf),
            None if n < 12 && may_start_status_line(&head, n) => self.frame(buf),
            None => {}
        }
    }

    fn frame(&mut self, buf: &[u8]) {
        let (pending, statuses, unmatched) =
            (&mut self.pending, &mut self.statuses, &mut self.unmatched);
        frame_one(&mut self.stream, buf, true, |s| {
            if s.status < 200 && s.status != 101 {
                statuses.push(s.status);
                return;
            }
            match pending.pop_front() {
                Some(is_head) => {
                    statuses.push(s.status);
                    if is_head {
                        s.no_body = 1;
                    }
                }
                None => *unmatched += 1,
            }
        });
    }
}

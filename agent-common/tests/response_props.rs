//! Framing several responses in one buffer (`burnwatch_common::http::response`):
//! what the kernel does when a server writes, or a client reads, the
//! responses of pipelined requests together.
//!
//! Invariants:
//! - every status line of a well-framed buffer is found, in order, however
//!   its responses are framed (Content-Length, chunked with extensions and
//!   trailers, none for 1xx, 204, 304 and HEAD), and nothing inside a body
//!   is taken for a status line;
//! - the kernel's shortcuts (body skipping, SWAR line search) find the
//!   same as stepping every byte, on any bytes;
//! - a client's reads, framed one after another with the stream kept
//!   between them, find the same responses however the bytes are cut into
//!   reads (a status line over two reads, a body's end and the next
//!   response in one); and so does the kernel's client side, which takes
//!   the status line at a read's start without framing when one request
//!   awaits its response between responses (`ClientModel`);
//! - framing stops where it cannot go on safely: a body delimited by the
//!   connection's end, 101, bytes that are not a status line.

// Shared with the request parser's tests and the fuzz target.
#[allow(dead_code)]
mod feed;

use feed::{ClientModel, frame_bytewise, frame_kernel_like, frame_reads};
use proptest::prelude::*;

fn cases() -> ProptestConfig {
    ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(512),
    )
}

/// Both ways of framing agree; returns what they found.
fn frame(buf: &[u8], head: &[bool]) -> Vec<u16> {
    let a = frame_kernel_like(buf, head);
    let b = frame_bytewise(buf, head);
    assert_eq!(a, b, "kernel shortcuts changed the framing");
    a
}

#[test]
fn coalesced_responses_with_every_framing_are_each_found() {
    let buf = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhello\
HTTP/1.1 500 Internal Server Error\r\ncontent-length:  17 \r\n\r\nHTTP/1.1 200 OK\r\n\
HTTP/1.1 204 No Content\r\nServer: x\r\n\r\n\
HTTP/1.1 304 Not Modified\r\nContent-Length: 1000\r\nETag: \"a\"\r\n\r\n\
HTTP/1.0 404 Not Found\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n3;ext=1\r\nabc\r\n10\r\nHTTP/1.1 200 OK\n\r\n0\r\nTrailer: x\r\n\r\n\
HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n\
HTTP/1.1 503 Service Unavailable\nContent-Length: 2\n\nno";
    assert_eq!(
        frame(buf, &[]),
        vec![200, 500, 204, 304, 404, 100, 201, 503]
    );
}

/// `buf` cut at `cuts` (sorted positions) into reads.
fn cut<'a>(buf: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut reads = Vec::new();
    let mut at = 0;
    for &c in cuts {
        let c = c.min(buf.len());
        if c > at {
            reads.push(&buf[at..c]);
            at = c;
        }
    }
    reads.push(&buf[at..]);
    reads
}

#[test]
fn a_client_reading_in_pieces_finds_each_response() {
    let buf = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloHTTP/1.1 404 Not Found\r\n\
Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nHTTP/1.1 503 x\r\nContent-Length: 0\r\n\r\n";
    // One byte per read, as a client reading a line byte by byte does.
    let bytes: Vec<&[u8]> = buf.chunks(1).collect();
    for shortcuts in [true, false] {
        assert_eq!(frame_reads(&bytes, &[], shortcuts), vec![200, 404, 503]);
    }
    // A status line split after `HTT`; a body's end with the next response.
    assert_eq!(
        frame_reads(&cut(buf, &[3, 40, 45, 47]), &[], true),
        vec![200, 404, 503]
    );
}

#[test]
fn the_kernel_client_side_counts_a_line_read_byte_by_byte_and_a_100_with_its_final() {
    let one = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
    let mut m = ClientModel::default();
    m.write(&[false]);
    for b in one.chunks(1) {
        m.read(b);
    }
    // An interim response and the final one in one read.
    m.write(&[false]);
    m.read(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n");
    // The usual exchange: a read that starts with the status line.
    m.write(&[false]);
    m.read(b"HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\n\r\n");
    m.read(b"nop");
    assert_eq!(m.statuses, vec![200, 100, 201, 404]);
    assert_eq!((m.pending(), m.unmatched), (0, 0));
}

#[test]
fn a_client_stream_that_stopped_starts_again_at_a_read_that_starts_a_response() {
    // A body delimited by the connection's end stops framing; the next
    // read that starts a status line starts it again.
    let reads: [&[u8]; 3] = [
        b"HTTP/1.1 200 OK\r\n\r\nbody to the end",
        b"more body HTTP/1.1 500 x\r\n",
        b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
    ];
    assert_eq!(frame_reads(&reads, &[], true), vec![200, 201]);
}

#[test]
fn a_response_to_head_has_no_body_whatever_its_length_says() {
    let buf = b"HTTP/1.1 200 OK\r\nContent-Length: 12345\r\n\r\nHTTP/1.1 404 Not Found\r\nContent-Length: 3\r\n\r\nnopHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
    assert_eq!(frame(buf, &[true, false, false]), vec![200, 404, 200]);
    // Not knowing it was a HEAD, the 12345-byte body swallows the rest.
    assert_eq!(frame(buf, &[]), vec![200]);
}

#[test]
fn framing_stops_where_it_cannot_go_on() {
    // A body delimited by the connection's end.
    let unframed = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nHTTP/1.1 200 OK\r\n\r\n";
    assert_eq!(frame(unframed, &[]), vec![200]);
    // Another protocol from here on.
    let upgrade =
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\nHTTP/1.1 200 OK\r\n";
    assert_eq!(frame(upgrade, &[]), vec![101]);
    // Not a status line, or one that is not HTTP/1.x.
    for buf in [
        &b"hello HTTP/1.1 200 OK\r\n"[..],
        b"HTTP/2 200\r\n\r\n",
        b"HTTP/1.1 600 Odd\r\n\r\n",
        b"HTTP/1.1 20x OK\r\n\r\n",
    ] {
        assert_eq!(
            frame(buf, &[]),
            Vec::<u16>::new(),
            "{:?}",
            String::from_utf8_lossy(buf)
        );
    }
    // A fourth digit: counted at the third, then framing stops.
    assert_eq!(
        frame(b"HTTP/1.1 2000 OK\r\n\r\nHTTP/1.1 200 OK\r\n", &[]),
        vec![200]
    );
    // Lists and junk in Content-Length are not framed.
    let list = b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nokHTTP/1.1 200 OK\r\n";
    assert_eq!(frame(list, &[]), vec![200]);
    // A buffer that ends right after the code still counts it.
    assert_eq!(frame(b"HTTP/1.1 503", &[]), vec![503]);
}

/// One generated response: its interim 100, status, framing, extra
/// headers, body; whether it answers a HEAD request.
#[derive(Debug, Clone)]
struct Response {
    interim: bool,
    status: u16,
    chunked: Option<Vec<usize>>,
    headers: Vec<usize>,
    body: Vec<u8>,
    head: bool,
    lf_only: bool,
}

const EXTRA_HEADERS: &[&str] = &[
    "Content-Type: text/html; charset=utf-8",
    "Server: nginx/1.22.1",
    "Date: Mon, 23 Nov 2026 07:00:00 GMT",
    "Connection: keep-alive",
    "cache-control: no-cache",
    "Content-Encoding: identity",
    "Trailer: X-Checksum",
    "ETag: \"33a64df551\"",
    "X-Note: HTTP/1.1 200 OK",
];

/// Bodies full of things that look like status lines and headers.
fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..300),
        Just(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".to_vec()),
        Just(b"0\r\n\r\nHTTP/1.1 500 x\r\n\r\n".to_vec()),
    ]
}

fn response() -> impl Strategy<Value = Response> {
    (
        any::<bool>(),
        prop::sample::select(vec![200u16, 201, 204, 206, 301, 304, 404, 429, 500, 503]),
        proptest::option::of(proptest::collection::vec(1usize..40, 0..4)),
        proptest::collection::vec(0..EXTRA_HEADERS.len(), 0..4),
        body(),
        any::<bool>(),
        any::<u8>(),
    )
        .prop_map(
            |(interim, status, chunked, headers, body, head, lf)| Response {
                interim: interim && !head,
                status,
                chunked,
                headers,
                body,
                head,
                lf_only: lf < 32,
            },
        )
}

/// The bytes of `r` as a server writes them.
fn encode(r: &Response, out: &mut Vec<u8>) {
    let eol: &[u8] = if r.lf_only { b"\n" } else { b"\r\n" };
    if r.interim {
        out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
    }
    out.extend_from_slice(format!("HTTP/1.1 {} Reason Phrase", r.status).as_bytes());
    out.extend_from_slice(eol);
    for &h in &r.headers {
        out.extend_from_slice(EXTRA_HEADERS[h].as_bytes());
        out.extend_from_slice(eol);
    }
    let has_body = !(r.head || r.status == 204 || r.status == 304);
    match &r.chunked {
        Some(sizes) => {
            out.extend_from_slice(b"Transfer-Encoding: chunked");
            out.extend_from_slice(eol);
            out.extend_from_slice(eol);
            if has_body {
                let mut rest = &r.body[..];
                for &size in sizes {
                    let n = size.min(rest.len());
                    if n == 0 {
                        break;
                    }
                    out.extend_from_slice(format!("{n:x};name=val\r\n").as_bytes());
                    out.extend_from_slice(&rest[..n]);
                    out.extend_from_slice(b"\r\n");
                    rest = &rest[n..];
                }
                out.extend_from_slice(b"0\r\nX-Checksum: 1\r\n\r\n");
            }
        }
        None => {
            // Answers to HEAD say how long the body would be.
            out.extend_from_slice(format!("Content-Length: {}", r.body.len()).as_bytes());
            out.extend_from_slice(eol);
            out.extend_from_slice(eol);
            if has_body {
                out.extend_from_slice(&r.body);
            }
        }
    }
}

/// The bytes of `responses` written one after another, the statuses a
/// reader finds in them (interim ones included), and which answer a HEAD.
fn encode_all(responses: &[Response]) -> (Vec<u8>, Vec<u16>, Vec<bool>) {
    let mut buf = Vec::new();
    let mut statuses = Vec::new();
    for r in responses {
        encode(r, &mut buf);
        if r.interim {
            statuses.push(100);
        }
        statuses.push(r.status);
    }
    (buf, statuses, responses.iter().map(|r| r.head).collect())
}

proptest! {
    #![proptest_config(cases())]

    /// Responses written together are each found, in order, interim ones
    /// included; bodies never yield a status line.
    #[test]
    fn every_response_of_a_coalesced_write_is_found(
        responses in proptest::collection::vec(response(), 1..8),
    ) {
        let (buf, want, head) = encode_all(&responses);
        prop_assert_eq!(frame(&buf, &head), want);
    }

    /// A client's reads: however the responses are cut into reads, each is
    /// found, in order, with and without the kernel's shortcuts.
    #[test]
    fn responses_read_in_any_pieces_are_each_found(
        responses in proptest::collection::vec(response(), 1..6),
        cuts in proptest::collection::vec(0usize..4000, 0..12),
    ) {
        let (buf, want, head) = encode_all(&responses);
        let mut cuts = cuts;
        cuts.sort_unstable();
        let reads = cut(&buf, &cuts);
        prop_assert_eq!(frame_reads(&reads, &head, true), want.clone());
        prop_assert_eq!(frame_reads(&reads, &head, false), want);
    }

    /// A client that writes one request or a pipeline, then reads every
    /// response before writing again, in reads cut anywhere, as the
    /// kernel's client side sees it: each final response answers its own
    /// request, in order, and none is left waiting.
    #[test]
    fn a_client_reading_its_exchanges_in_any_pieces_counts_each_response(
        exchanges in proptest::collection::vec(
            (
                proptest::collection::vec(response(), 1..4),
                proptest::collection::vec(0usize..1500, 0..8),
            ),
            1..5,
        ),
    ) {
        let mut m = ClientModel::default();
        let mut want = Vec::new();
        for (responses, cuts) in &exchanges {
            let (buf, statuses, heads) = encode_all(responses);
            want.extend(statuses);
            m.write(&heads);
            let mut cuts = cuts.clone();
            cuts.sort_unstable();
            for read in cut(&buf, &cuts) {
                m.read(read);
            }
        }
        prop_assert_eq!(&m.statuses, &want);
        prop_assert_eq!(m.pending(), 0);
        // Bodies that look like responses are never taken for responses
        // nobody asked for.
        prop_assert_eq!(m.unmatched, 0);
    }

    /// On any bytes: no panic, state in range, shortcuts change nothing.
    #[test]
    fn any_bytes_frame_the_same_with_and_without_shortcuts(
        prefix in proptest::collection::vec(0..3usize, 0..4),
        junk in proptest::collection::vec(any::<u8>(), 0..400),
        head in proptest::collection::vec(any::<bool>(), 0..4),
    ) {
        // A valid start now and then, so framing gets past the first line.
        let mut buf = Vec::new();
        for p in prefix {
            buf.extend_from_slice(
                [&b"HTTP/1.1 200 OK\r\n"[..], b"Transfer-Encoding: chunked\r\n", b"\r\n"][p],
            );
        }
        buf.extend_from_slice(&junk);
        frame(&buf, &head);
    }
}

use super::*;
use crate::maps::Method;

fn cfg() -> ParserConfig {
    ParserConfig::header(b"X-Tenant-ID")
}

/// Feeds `reads` the way [`feed`] does and returns every request that
/// completed its headers, as (method, tenant), the stream, and the number
/// of `INVALID` events.
fn run(cfg: &ParserConfig, reads: &[&[u8]]) -> (Vec<(Method, String)>, RequestStream, u32) {
    let mut s = RequestStream::new();
    let mut done = Vec::new();
    let mut invalid = 0;
    for read in reads {
        invalid += feed(&mut s, cfg, read, &mut done);
    }
    (done, s, invalid)
}

/// Feeds one read into `s` the way the kernel does
/// ([`RequestStream::walk_read`]) and pushes every request that completed
/// its headers onto `done`, as (method, tenant). Returns the number of
/// `INVALID` events.
fn feed(
    s: &mut RequestStream,
    cfg: &ParserConfig,
    read: &[u8],
    done: &mut Vec<(Method, String)>,
) -> u32 {
    let mut invalid = 0;
    s.walk_read(read, cfg, 7, |s, ev| match ev {
        event::HEADERS_DONE if s.has_pending() => {
            let r = *s.pending_newest();
            done.push((
                Method::from_u8(r.method),
                String::from_utf8_lossy(r.tenant()).into_owned(),
            ));
        }
        event::INVALID => invalid += 1,
        _ => {}
    });
    invalid
}

impl RequestStream {
    fn pending_newest(&self) -> &PendingRequest {
        &self.pending[(self.head as usize + self.len as usize - 1) % PENDING_MAX]
    }
}

const REQ: &[u8] =
    b"GET /cart HTTP/1.1\r\nHost: shop\r\nx-tenant-id:  acme  \r\nAccept: */*\r\n\r\n";

#[test]
fn header_hash_is_case_insensitive() {
    assert_eq!(header_hash(b"X-Tenant-ID"), header_hash(b"x-tenant-id"));
    assert_ne!(header_hash(b"x-tenant-id"), header_hash(b"x-tenant-i"));
}

#[test]
fn simple_request_with_tenant() {
    let (done, s, inv) = run(&cfg(), &[REQ]);
    assert_eq!(done, vec![(Method::Get, "acme".to_string())]);
    assert_eq!(inv, 0);
    assert_eq!(s.state, state::METHOD);
    assert_eq!(s.len, 1);
    assert_eq!(s.oldest().start_ns, 7);
}

#[test]
fn every_split_point_gives_the_same_result() {
    for cut in 1..REQ.len() {
        let (done, _, inv) = run(&cfg(), &[&REQ[..cut], &REQ[cut..]]);
        assert_eq!(
            done,
            vec![(Method::Get, "acme".to_string())],
            "cut at {cut}"
        );
        assert_eq!(inv, 0, "cut at {cut}");
    }
    // One byte per read.
    let reads: Vec<&[u8]> = REQ.chunks(1).collect();
    let (done, _, _) = run(&cfg(), &reads);
    assert_eq!(done, vec![(Method::Get, "acme".to_string())]);
}

#[test]
fn missing_header_gives_empty_tenant() {
    let (done, _, _) = run(&cfg(), &[b"POST /x HTTP/1.0\r\nHost: a\r\n\r\n"]);
    assert_eq!(done, vec![(Method::Post, String::new())]);
}

#[test]
fn pipelined_requests_with_bodies() {
    let stream = b"POST /a HTTP/1.1\r\nContent-Length: 10\r\nX-Tenant-ID: t1\r\n\r\nGET / HTTP\
PUT /b HTTP/1.1\r\nTransfer-Encoding: gzip, Chunked\r\nX-Tenant-ID: t2\r\n\r\n\
4;ext=1\r\nGET \r\n0\r\nTrailer: x\r\n\r\n\
HEAD /c HTTP/1.1\r\nX-Tenant-ID: t3\r\n\r\n";
    let expect = vec![
        (Method::Post, "t1".to_string()),
        (Method::Put, "t2".to_string()),
        (Method::Head, "t3".to_string()),
    ];
    let mut s = RequestStream::new();
    let cfg = cfg();
    // All in one read; then at every split point.
    let (done, end, inv) = run(&cfg, &[stream]);
    assert_eq!(done, expect);
    assert_eq!(inv, 0);
    assert_eq!(end.len, 3);
    for cut in 1..stream.len() {
        let (done, _, inv) = run(&cfg, &[&stream[..cut], &stream[cut..]]);
        assert_eq!(done, expect, "cut at {cut}");
        assert_eq!(inv, 0);
    }
    s.begin_read();
}

#[test]
fn queue_full_does_not_touch_other_requests() {
    let one = b"GET / HTTP/1.1\r\nX-Tenant-ID: a\r\n\r\n";
    let extra = b"GET / HTTP/1.1\r\nX-Tenant-ID: zzzz\r\n\r\n";
    let mut stream = Vec::new();
    for _ in 0..PENDING_MAX {
        stream.extend_from_slice(one);
    }
    stream.extend_from_slice(extra);
    let mut s = RequestStream::new();
    let mut full = 0;
    for &b in &stream {
        if s.step(b, &cfg(), 1) == event::QUEUE_FULL {
            full += 1;
        }
    }
    assert_eq!(full, 1);
    assert_eq!(s.len as usize, PENDING_MAX);
    for i in 0..PENDING_MAX {
        assert_eq!(s.pending[i].tenant(), b"a");
    }
    // Responses drain the queue in order.
    for _ in 0..PENDING_MAX {
        assert!(s.has_pending());
        s.pop();
    }
    assert!(!s.has_pending());
}

/// The kernel's answer to deep pipelines: at `HEADERS_DONE` with a full
/// queue, the oldest request moves out (to `SPILL`), so the next request
/// line finds room. Responses then answer the spilled requests first, then
/// the queue: in request order, none lost, at any read split.
#[test]
fn spilling_the_oldest_at_headers_done_keeps_deep_pipelines_in_order() {
    use std::collections::VecDeque;
    let n = 40;
    let mut stream = Vec::new();
    for i in 0..n {
        stream.extend_from_slice(
            format!("GET /{i} HTTP/1.1\r\nHost: x\r\nX-Tenant-ID: t{i}\r\n\r\n").as_bytes(),
        );
    }
    let want: Vec<String> = (0..n).map(|i| format!("t{i}")).collect();
    for cut in [0, 1, 17, 100, stream.len() / 2, stream.len() - 1] {
        let mut s = RequestStream::new();
        let mut spill: VecDeque<PendingRequest> = VecDeque::new();
        for read in [&stream[..cut], &stream[cut..]] {
            s.begin_read();
            for &b in read {
                match s.step(b, &cfg(), 1) {
                    event::HEADERS_DONE if s.is_full() => {
                        spill.push_back(*s.oldest());
                        s.pop();
                    }
                    event::QUEUE_FULL => panic!("queue full at cut {cut}"),
                    _ => {}
                }
            }
        }
        assert_eq!(spill.len(), n - (PENDING_MAX - 1), "cut {cut}");
        let mut answered = Vec::new();
        while let Some(r) = spill.pop_front() {
            answered.push(String::from_utf8_lossy(r.tenant()).into_owned());
        }
        while s.has_pending() {
            answered.push(String::from_utf8_lossy(s.oldest().tenant()).into_owned());
            s.pop();
        }
        assert_eq!(answered, want, "cut {cut}");
    }
}

#[test]
fn long_tenant_is_cut_and_flagged() {
    let long = "x".repeat(100);
    let req = format!("GET / HTTP/1.1\r\nX-Tenant-ID: {long}\r\n\r\n");
    let mut s = RequestStream::new();
    for &b in req.as_bytes() {
        s.step(b, &cfg(), 1);
    }
    assert_eq!(s.oldest().tenant_len as usize, TENANT_MAX);
    assert_eq!(s.oldest().tenant_truncated, 1);
}

#[test]
fn garbage_and_tls_are_invalid_and_resync_on_next_read() {
    let tls = [
        0x16u8, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
    ];
    let (done, s, inv) = run(&cfg(), &[&tls]);
    assert!(done.is_empty());
    assert_eq!(inv, 1);
    assert_eq!(s.state, state::INVALID);
    let (done, _, _) = run(&cfg(), &[b"hello world", REQ]);
    assert_eq!(done, vec![(Method::Get, "acme".to_string())]);
    // A lowercase or over-long method, or the HTTP/2 preface, is not a request.
    for bad in [
        &b"get / HTTP/1.1\r\n\r\n"[..],
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"GET / HTTP/2.0\r\n\r\n",
        b"GETTTTTTTTTTTTTTTTTTTTTT / HTTP/1.1\r\n\r\n",
    ] {
        let (done, _, inv) = run(&cfg(), &[bad]);
        assert!(done.is_empty(), "{:?}", String::from_utf8_lossy(bad));
        assert_eq!(inv, 1);
    }
}

#[test]
fn tenant_from_host_label_and_path_segment() {
    let mut host = ParserConfig::header(b"unused");
    host.tenant_source = tenant_source::HOST_LABEL;
    let (done, _, _) = run(
        &host,
        &[b"GET / HTTP/1.1\r\nHost: acme.shop.example:8080\r\n\r\n"],
    );
    assert_eq!(done, vec![(Method::Get, "acme".to_string())]);

    let mut path = ParserConfig::header(b"unused");
    path.tenant_source = tenant_source::PATH_SEGMENT;
    let prefix = b"/tenants/";
    path.path_prefix[..prefix.len()].copy_from_slice(prefix);
    path.path_prefix_len = prefix.len() as u8;
    let (done, _, _) = run(
        &path,
        &[b"GET /tenants/globex/cart?x=1 HTTP/1.1\r\n\r\nGET /other/acme HTTP/1.1\r\n\r\n"],
    );
    assert_eq!(
        done,
        vec![
            (Method::Get, "globex".to_string()),
            (Method::Get, String::new())
        ]
    );
}

#[test]
fn status_lines() {
    fn st(s: &[u8]) -> Option<u16> {
        let mut buf = [0u8; 16];
        let n = s.len().min(16);
        buf[..n].copy_from_slice(&s[..n]);
        parse_status_line(&buf, n)
    }
    assert_eq!(st(b"HTTP/1.1 200 OK\r\n"), Some(200));
    assert_eq!(st(b"HTTP/1.0 503 Service Unavailable"), Some(503));
    assert_eq!(st(b"HTTP/1.1 100 Continue\r\n"), Some(100));
    assert_eq!(st(b"HTTP/1.1 404\r\n"), Some(404));
    assert_eq!(st(b"HTTP/1.1 204"), Some(204));
    assert_eq!(st(b"HTTP/1.1 20"), None);
    assert_eq!(st(b"HTTP/2 200 OK\r\n\r\n"), None);
    assert_eq!(st(b"HTTP/1.1 600 X\r\n"), None);
    assert_eq!(st(b"HTTP/1.1 2000 X\r\n"), None);
    assert_eq!(st(b"<html>HTTP/1.1 200"), None);
}

#[test]
fn request_prefix_test() {
    fn lk(s: &[u8]) -> bool {
        let mut buf = [0u8; 8];
        let n = s.len().min(8);
        buf[..n].copy_from_slice(&s[..n]);
        looks_like_request(&buf, n)
    }
    assert!(lk(b"GET / HTTP/1.1"));
    assert!(lk(b"OPTIONS * HTTP/1.1"));
    assert!(lk(b"DELETE /x"));
    // Methods outside the standard nine, also longer than the peek.
    assert!(lk(b"PURGE /x"));
    assert!(lk(b"PROPFIND /dav"));
    assert!(lk(b"M-SEARCH * HTTP/1.1"));
    // A first read cut short by a dribbling client.
    assert!(lk(b"G"));
    assert!(lk(b"GET"));
    assert!(!lk(b""));
    assert!(!lk(b"HTTP/1.1 200"));
    assert!(!lk(b"\x16\x03\x01"));
    assert!(!lk(b" GET /"));
    assert!(!lk(b"get / HTTP/1.1"));
    assert!(!lk(b"*1\r\n$4\r\n"));
}

#[test]
fn unknown_methods_are_requests_and_keep_pipelining() {
    let (done, _, inv) = run(
        &cfg(),
        &[b"PURGE /a HTTP/1.1\r\nX-Tenant-ID: t1\r\n\r\n\
PROPFIND /b HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc\
GET /c HTTP/1.1\r\nX-Tenant-ID: t3\r\n\r\n"],
    );
    assert_eq!(inv, 0);
    assert_eq!(
        done,
        vec![
            (Method::Unknown, "t1".to_string()),
            (Method::Unknown, String::new()),
            (Method::Get, "t3".to_string()),
        ]
    );
}

#[test]
fn a_line_that_is_not_a_request_line_is_not_queued() {
    let cfg = ParserConfig::header(b"X-Tenant-ID");
    for line in [
        &b"EHLO mail.example\r\n"[..],
        b"USER anonymous\r\n",
        b"GET /\r\n",
    ] {
        let mut s = RequestStream::new();
        s.begin_read();
        let mut invalid = false;
        for &b in line {
            if s.step(b, &cfg, 1) == event::INVALID {
                invalid = true;
                break;
            }
        }
        assert!(invalid, "{:?}", String::from_utf8_lossy(line));
        assert!(!s.has_pending(), "{:?}", String::from_utf8_lossy(line));
    }
}

#[test]
fn no_input_panics() {
    // A cheap deterministic fuzz: random bytes, random splits, all tenant
    // sources. The parser must never panic and the queue must stay bounded.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut rnd = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let alphabet =
        b"GET POST HTTP/1.1\r\n: X-Tenant-ID content-length 12 chunked transfer-encoding 0a;\t";
    for source in 0..4u8 {
        let mut c = cfg();
        c.tenant_source = source;
        c.path_prefix_len = 200; // hostile: longer than the array
        let mut s = RequestStream::new();
        for _ in 0..20_000 {
            let r = rnd();
            let b = if r % 3 == 0 {
                (r >> 8) as u8
            } else {
                alphabet[(r >> 8) as usize % alphabet.len()]
            };
            if r % 97 == 0 {
                s.begin_read();
            }
            if r % 11 == 0 && s.skippable() > 0 {
                s.skip((r >> 16) % 50);
            }
            s.step(b, &c, 0);
            if r % 5 == 0 {
                s.pop();
            }
            assert!(s.len as usize <= PENDING_MAX);
            assert!(s.oldest().tenant_len as usize <= TENANT_MAX);
            // What `step_method` relies on instead of clearing them.
            if s.state == state::METHOD && s.token_len == 0 {
                assert_eq!((s.acc, s.remaining), (0, 0), "{s:?}");
            }
        }
    }
}

#[test]
fn find_byte_matches_a_naive_search() {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    for _ in 0..200_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let mut buf = [0u8; 16];
        for (k, b) in buf.iter_mut().enumerate() {
            // Mostly '\n', 0x0b (borrow false-positive bait) and zeros.
            *b = match (x >> (k * 4)) & 7 {
                0 => b'\n',
                1 => 0x0b,
                2 => 0,
                3 => 1,
                _ => (x >> (k * 3)) as u8,
            };
        }
        let from = (x >> 40) as usize % 17;
        let to = (x >> 48) as usize % 17;
        let naive = (from..to).find(|&k| buf[k] == b'\n').unwrap_or(to);
        assert_eq!(
            find_byte(&buf, from, to, [b'\n'; 3]),
            naive,
            "{buf:?} {from} {to}"
        );
        let naive2 = (from..to)
            .find(|&k| buf[k] == b'\n' || buf[k] == 0x0b || buf[k] == 1)
            .unwrap_or(to);
        assert_eq!(
            find_byte(&buf, from, to, [0x0b, 1, b'\n']),
            naive2,
            "{buf:?} {from} {to}"
        );
    }
}

#[test]
fn first_tenant_header_wins() {
    let (done, _, _) = run(
        &cfg(),
        &[b"GET / HTTP/1.1\r\nX-Tenant-ID: two\r\nHost: a\r\nx-tenant-id: one\r\n\r\n"],
    );
    assert_eq!(done, vec![(Method::Get, "two".to_string())]);
}

/// Sync lost after a Content-Length was read (here: an invalid header line)
/// must not leave that length behind: the next read's request has no body,
/// and the request after it is a request, not body bytes.
#[test]
fn no_body_length_survives_lost_sync() {
    let c = cfg();
    let (done, s, invalid) = run(
        &c,
        &[
            b"POST /a HTTP/1.1\r\nContent-Length: 12\r\n: x\r\n",
            b"GET /b HTTP/1.1\r\n\r\n",
            b"GET /c HTTP/1.1\r\n\r\n",
        ],
    );
    assert_eq!(invalid, 1);
    assert_eq!(done.len(), 2, "{done:?}");
    assert_eq!((s.state, s.remaining), (state::METHOD, 0));
}

#[test]
fn header_lines_are_skipped_by_their_first_byte_only_when_unused() {
    // A tenant header sharing its first byte with skipped-looking headers,
    // body framing in lower and upper case, and a line with no colon.
    let cfg = ParserConfig::header(b"Acme-Tenant");
    let (done, s, invalid) = run(
        &cfg,
        &[
            b"POST /a/b/c?d=e HTTP/1.1\r\nAccept: */*\r\nUser-Agent: x\r\nnot a header\r\n\
              ACME-TENANT: t1\r\ncontent-length: 3\r\n\r\nabc\
              GET /x HTTP/1.1\r\nTRANSFER-ENCODING: chunked\r\nacme-tenant: t2\r\n\r\n\
              1\r\nz\r\n0\r\n\r\n",
        ],
    );
    assert_eq!(invalid, 0);
    assert_eq!(
        done,
        vec![(Method::Post, "t1".into()), (Method::Get, "t2".into())]
    );
    assert_eq!(s.state, state::METHOD);
    // Host is only looked at when the tenant comes from it.
    let mut host = cfg;
    host.tenant_source = tenant_source::HOST_LABEL;
    let (done, _, _) = run(&host, &[b"GET / HTTP/1.1\r\nhost: globex.example\r\n\r\n"]);
    assert_eq!(done, vec![(Method::Get, "globex".into())]);
}

#[test]
fn a_request_target_cut_by_a_line_end_is_not_a_request() {
    // The target is passed over in words, but CR and LF still end it.
    for read in [&b"GET /abcdefghijklmnopqrstuvwxyz\r"[..], b"GET /abc\n"] {
        let (done, s, invalid) = run(&cfg(), &[read]);
        assert_eq!((done.len(), invalid, s.len), (0, 1, 0), "{read:?}");
    }
}

/// The requests of one read, fed into `s` by [`feed`], that completed
/// their headers.
fn feed_one(s: &mut RequestStream, read: &[u8]) -> usize {
    let mut done = Vec::new();
    feed(s, &cfg(), read, &mut done);
    done.len()
}

#[test]
fn discarded_body_bytes_are_skipped_by_count() {
    let mut s = RequestStream::new();
    let head = b"POST /up HTTP/1.1\r\nContent-Length: 10\r\nX-Tenant-ID: a\r\n\r\n0123";
    assert_eq!(feed_one(&mut s, head), 1);
    assert_eq!(s.skippable(), 6);
    // Dropped unseen: the rest of the body, in two reads.
    assert!(!s.discard(4));
    assert!(!s.discard(2));
    assert_eq!(s.skippable(), 0);
    // The next request parses from its first byte.
    assert_eq!(feed_one(&mut s, REQ), 1);
    assert!(!s.is_full());
    // Chunk data too: a chunk of 8, 3 bytes read, 5 dropped, then its CRLF.
    let chunked = b"PUT /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n8\r\nabc";
    assert_eq!(feed_one(&mut s, chunked), 1);
    assert!(!s.discard(5));
    assert_eq!(feed_one(&mut s, b"\r\n0\r\n\r\n"), 0);
    assert_eq!(feed_one(&mut s, REQ), 1);
}

#[test]
fn bytes_discarded_past_a_body_lose_sync_once() {
    let mut s = RequestStream::new();
    let head = b"POST /up HTTP/1.1\r\nContent-Length: 4\r\n\r\n";
    assert_eq!(feed_one(&mut s, head), 1);
    // The body and a request behind it, dropped: sync is lost, once.
    assert!(s.discard(4 + REQ.len() as u64));
    assert!(!s.discard(100));
    // A read that starts with a request line finds it again.
    assert_eq!(feed_one(&mut s, REQ), 1);
    // Between requests, any dropped byte loses sync.
    assert!(s.discard(1));
    assert_eq!(feed_one(&mut s, REQ), 1);
}

#[test]
fn a_response_body_discarded_by_a_client_is_skipped_by_count() {
    use super::response::{ResponseStream, event as rev};
    let mut s = ResponseStream::new();
    let mut status = 0;
    for &b in b"HTTP/1.1 201 Created\r\nContent-Length: 9\r\n\r\n".iter() {
        if s.step(b) == rev::STATUS {
            status = s.status;
        }
    }
    assert_eq!((status, s.skippable()), (201, 9));
    s.discard(9);
    assert!(!s.is_done());
    assert!(s.between_responses());
    // Past the body: the place is lost.
    s.discard(1 << 20);
    assert!(s.is_done());
}

/// Steps `buf` byte by byte (bodies too): the statuses found, and the
/// statuses of the responses whose headers ended with `event::CLOSE`.
fn closing_statuses(buf: &[u8]) -> (Vec<u16>, Vec<u16>) {
    use super::response::{ResponseStream, event as rev};
    let mut s = ResponseStream::new();
    let (mut found, mut closing) = (Vec::new(), Vec::new());
    for &b in buf {
        match s.step(b) {
            rev::STATUS => found.push(s.status),
            rev::CLOSE => {
                // The status may be cleared already (a response without a
                // body ends with its headers): `closes` stays.
                assert_eq!(s.closes, 1);
                closing.push(*found.last().unwrap());
            }
            rev::DONE => {
                if s.closes != 0 {
                    closing.push(*found.last().unwrap());
                }
                break;
            }
            _ => {}
        }
    }
    (found, closing)
}

#[test]
fn a_final_response_with_connection_close_says_so_at_its_headers_end() {
    let buf = b"HTTP/1.1 100 Continue\r\nConnection: close\r\n\r\n\
HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok\
HTTP/1.1 404 Not Found\r\ncontent-length: 3\r\nCONNECTION:  Upgrade, Close \r\n\r\nnot\
HTTP/1.1 200 OK\r\nConnection: closed\r\nContent-Length: 0\r\n\r\n\
HTTP/1.1 503 x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n\
HTTP/1.1 500 x\r\nConnection: close\r\n\r\nto the end";
    // The interim 100 never closes; `closed` is not `close`; framing goes
    // on past a closing response; one without a length ends the framing.
    assert_eq!(
        closing_statuses(buf),
        (vec![100, 200, 404, 200, 503, 500], vec![404, 503, 500])
    );
}

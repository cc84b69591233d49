//! Property tests of the parser the kernel runs: a corpus of real HTTP/1.x
//! requests and responses, pipelined, split at arbitrary points, mixed with
//! garbage. Bounded: `PROPTEST_CASES` (default 512 per property, about a
//! few seconds); `cargo xtask fuzz` runs the libFuzzer target for longer.
//!
//! Invariants:
//! - no input panics (out-of-bounds indexing would) and the parser's state
//!   stays within its documented ranges (state, queue length, tenant length);
//! - a well-formed stream gives the same requests however it is split into
//!   reads, and the same as feeding it byte by byte without the kernel's
//!   shortcuts (body skipping, SWAR newline search);
//! - the status-line parser and the request-prefix test agree with their
//!   specifications on any bytes.

// Shared with the response framing's tests and the fuzz target.
#[allow(dead_code)]
mod feed;

use burnwatch_common::http::{
    ParserConfig, find_byte, looks_like_request, parse_status_line, tenant_source,
};
use burnwatch_common::maps::{Method, PENDING_MAX, TENANT_MAX};
use feed::{feed_bytewise, feed_kernel_like, feed_kernel_spilling, split_at};
use proptest::prelude::*;

/// Real requests (from curl, browsers, wrk, Go and Python clients) with the
/// (method, tenant) the parser must report for each under `X-Tenant-ID`.
const REQUESTS: &[(&[u8], Method, &str)] = &[
    (
        b"GET / HTTP/1.1\r\nHost: localhost:8080\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\nX-Tenant-ID: acme\r\n\r\n",
        Method::Get,
        "acme",
    ),
    (
        b"GET /index.html HTTP/1.1\r\nHost: shop.example.com\r\nConnection: keep-alive\r\nsec-ch-ua: \"Chromium\";v=\"131\"\r\nUpgrade-Insecure-Requests: 1\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36\r\nAccept: text/html,application/xhtml+xml;q=0.9,*/*;q=0.8\r\nAccept-Encoding: gzip, deflate, br\r\nAccept-Language: en-US,en;q=0.9\r\nCookie: session=4f2a9c; theme=dark\r\n\r\n",
        Method::Get,
        "",
    ),
    (
        b"POST /api/orders HTTP/1.1\r\nHost: api\r\nx-tenant-id:   globex  \r\nContent-Type: application/json\r\nContent-Length: 27\r\n\r\n{\"item\":42,\"qty\":1,\"x\":\"\"}\n",
        Method::Post,
        "globex",
    ),
    (
        b"PUT /v1/blob HTTP/1.1\r\nHost: s3\r\nTransfer-Encoding: chunked\r\nX-TENANT-ID: initech\r\n\r\n5;ext=1\r\nhello\r\n0\r\nX-Checksum: abc\r\n\r\n",
        Method::Put,
        "initech",
    ),
    (
        b"HEAD /health HTTP/1.0\r\n\r\n",
        Method::Head,
        "",
    ),
    (
        b"DELETE /items/7 HTTP/1.1\r\nHost: x\r\nX-Tenant-ID: t\r\nContent-Length: 0\r\n\r\n",
        Method::Delete,
        "t",
    ),
    (
        b"PATCH /u HTTP/1.1\nHost: lf-only\nX-Tenant-ID: lf\nContent-Length: 3\n\nabc",
        Method::Patch,
        "lf",
    ),
    (
        b"OPTIONS * HTTP/1.1\r\nHost: x\r\nX-Tenant-ID: first\r\nX-Tenant-ID: second\r\n\r\n",
        Method::Options,
        "first",
    ),
    (
        b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\nX-Tenant-ID: zip\r\n\r\n1a\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\n\r\n",
        Method::Post,
        "zip",
    ),
    (
        b"GET /search?q=a%20b&x=1 HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 10.0.0.1, 10.0.0.2\r\nX-Tenant-ID:\tws\t\r\nAuthorization: Bearer eyJhbGciOiJIUzI1NiJ9.e30.ZRrHA1JJJW8opsbCGfG_HACGpVUMN_a9IV7pAx_Zmeo\r\n\r\n",
        Method::Get,
        "ws",
    ),
];

/// Real status lines (nginx, Go, Python http.server, Node, HTTP/1.0 servers).
const RESPONSES: &[(&[u8], u16)] = &[
    (b"HTTP/1.1 200 OK\r\nServer: nginx\r\n", 200),
    (b"HTTP/1.1 404 Not Found\r\n", 404),
    (b"HTTP/1.0 500 Internal Server Error\r\n", 500),
    (b"HTTP/1.1 204 No Content\r\n\r\n", 204),
    (b"HTTP/1.1 301 Moved Permanently\r\nLocation: /\r\n", 301),
    (b"HTTP/1.1 503 \r\n\r\n", 503),
    (b"HTTP/1.1 101 Switching Protocols\r\n", 101),
    (b"HTTP/1.1 429\r\n", 429),
];

fn header_cfg() -> ParserConfig {
    ParserConfig::header(b"X-Tenant-ID")
}

/// Any parser config: every tenant source, any header name, any prefix.
fn any_cfg() -> impl Strategy<Value = ParserConfig> {
    (
        0u8..=4,
        proptest::collection::vec(any::<u8>(), 0..24),
        proptest::collection::vec(any::<u8>(), 0..40),
    )
        .prop_map(|(source, name, prefix)| {
            let mut c = ParserConfig::header(&name);
            c.tenant_source = source;
            let n = prefix.len().min(c.path_prefix.len());
            c.path_prefix[..n].copy_from_slice(&prefix[..n]);
            // Out-of-range lengths are tolerated by the parser: test them too.
            c.path_prefix_len = prefix.len() as u8;
            c
        })
}

fn cases() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(512),
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(cases())]

    /// A pipelined stream of corpus requests, split anywhere, gives each
    /// request's method and tenant, in order, as one read does.
    #[test]
    fn pipelined_corpus_split_anywhere(
        picks in proptest::collection::vec(0..REQUESTS.len(), 1..12),
        cuts in proptest::collection::vec(any::<usize>(), 0..24),
    ) {
        let stream: Vec<u8> = picks.iter().flat_map(|&i| REQUESTS[i].0.iter().copied()).collect();
        let want: Vec<(Method, Vec<u8>)> = picks
            .iter()
            .map(|&i| (REQUESTS[i].1, REQUESTS[i].2.as_bytes().to_vec()))
            .collect();
        let cfg = header_cfg();
        let whole = feed_kernel_like(&cfg, &[&stream], true);
        prop_assert_eq!(&whole.requests, &want);
        prop_assert_eq!(whole.invalid, 0);
        let reads = split_at(&stream, &cuts);
        prop_assert_eq!(&feed_kernel_like(&cfg, &reads, true), &whole);
        prop_assert_eq!(&feed_bytewise(&cfg, &reads, true), &whole);
    }

    /// Without responses the queue fills: the first PENDING_MAX requests
    /// are tracked, the rest are reported as QUEUE_FULL, none is lost
    /// silently, and the split does not matter.
    #[test]
    fn unanswered_pipelines_fill_the_queue_the_same_way(
        picks in proptest::collection::vec(0..REQUESTS.len(), 1..10),
        cuts in proptest::collection::vec(any::<usize>(), 0..16),
    ) {
        let stream: Vec<u8> = picks.iter().flat_map(|&i| REQUESTS[i].0.iter().copied()).collect();
        let cfg = header_cfg();
        let whole = feed_kernel_like(&cfg, &[&stream], false);
        prop_assert_eq!(whole.requests.len(), picks.len().min(PENDING_MAX));
        prop_assert_eq!(whole.requests.len() as u32 + whole.queue_full, picks.len() as u32);
        let reads = split_at(&stream, &cuts);
        prop_assert_eq!(&feed_kernel_like(&cfg, &reads, false), &whole);
    }

    /// Unanswered pipelines of any depth, with the kernel's spilling (the
    /// oldest queued request moves out when a request's headers end with
    /// the queue full): no request is untracked, and responses would
    /// answer every one in request order, whatever the split.
    #[test]
    fn deep_unanswered_pipelines_spill_and_keep_every_request_in_order(
        picks in proptest::collection::vec(0..REQUESTS.len(), 1..40),
        cuts in proptest::collection::vec(any::<usize>(), 0..24),
    ) {
        let stream: Vec<u8> = picks.iter().flat_map(|&i| REQUESTS[i].0.iter().copied()).collect();
        let want: Vec<(Method, Vec<u8>)> = picks
            .iter()
            .map(|&i| (REQUESTS[i].1, REQUESTS[i].2.as_bytes().to_vec()))
            .collect();
        let cfg = header_cfg();
        let reads = split_at(&stream, &cuts);
        prop_assert_eq!(feed_kernel_spilling(&cfg, &reads), (want, 0));
    }

    /// Arbitrary bytes, arbitrary reads, any config: no panic, invariants
    /// hold, and the kernel's shortcuts change nothing.
    #[test]
    fn garbage_never_panics(
        cfg in any_cfg(),
        reads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..8),
        respond in any::<bool>(),
    ) {
        let reads: Vec<&[u8]> = reads.iter().map(Vec::as_slice).collect();
        let a = feed_kernel_like(&cfg, &reads, respond);
        let b = feed_bytewise(&cfg, &reads, respond);
        prop_assert_eq!(a, b);
    }

    /// Corpus requests with bytes flipped, inserted or cut: the mutations a
    /// fuzzer makes. No panic, and the kernel's shortcuts change nothing.
    #[test]
    fn mutated_corpus_never_panics(
        picks in proptest::collection::vec(0..REQUESTS.len(), 1..6),
        edits in proptest::collection::vec((any::<usize>(), any::<u8>(), 0u8..3), 0..12),
        cuts in proptest::collection::vec(any::<usize>(), 0..12),
        cfg in any_cfg(),
    ) {
        let mut stream: Vec<u8> = picks.iter().flat_map(|&i| REQUESTS[i].0.iter().copied()).collect();
        for (pos, byte, op) in edits {
            let p = pos % (stream.len() + 1);
            match op {
                0 if p < stream.len() => stream[p] = byte,
                1 => stream.insert(p, byte),
                _ if p < stream.len() => { stream.remove(p); }
                _ => {}
            }
        }
        let reads = split_at(&stream, &cuts);
        prop_assert_eq!(feed_kernel_like(&cfg, &reads, true), feed_bytewise(&cfg, &reads, true));
    }

    /// Header blocks of any size with many headers: no panic, the tenant
    /// is found wherever it is, long values are cut to TENANT_MAX.
    #[test]
    fn many_and_long_headers(
        n_before in 0usize..120,
        value_len in 0usize..4096,
        tenant_len in 1usize..200,
        cuts in proptest::collection::vec(any::<usize>(), 0..8),
    ) {
        let mut req = b"GET /x HTTP/1.1\r\nHost: h\r\n".to_vec();
        for i in 0..n_before {
            req.extend_from_slice(format!("X-Filler-{i}: ").as_bytes());
            req.extend(std::iter::repeat_n(b'v', value_len / (n_before + 1)));
            req.extend_from_slice(b"\r\n");
        }
        let tenant: Vec<u8> = (0..tenant_len).map(|i| b'a' + (i % 26) as u8).collect();
        req.extend_from_slice(b"X-Tenant-ID: ");
        req.extend_from_slice(&tenant);
        req.extend_from_slice(b"\r\n\r\n");
        let reads = split_at(&req, &cuts);
        let out = feed_kernel_like(&header_cfg(), &reads, true);
        prop_assert_eq!(out.requests.len(), 1);
        prop_assert_eq!(&out.requests[0].1[..], &tenant[..tenant_len.min(TENANT_MAX)]);
    }

    /// The status-line parser: any bytes, any length claim (even past the
    /// buffer), never panics; it accepts exactly `HTTP/1.d NNN` with N in
    /// 1xx..5xx followed by end, space, CR or LF.
    #[test]
    fn status_line_matches_its_spec(buf in any::<[u8; 16]>(), len in 0usize..64) {
        let got = parse_status_line(&buf, len);
        let ok = len >= 12
            && &buf[..7] == b"HTTP/1."
            && buf[7].is_ascii_digit()
            && buf[8] == b' '
            && (b'1'..=b'5').contains(&buf[9])
            && buf[10].is_ascii_digit()
            && buf[11].is_ascii_digit()
            && (len == 12 || matches!(buf[12], b' ' | b'\r' | b'\n'));
        prop_assert_eq!(got.is_some(), ok);
        if let Some(code) = got {
            let want = (buf[9] - b'0') as u16 * 100 + (buf[10] - b'0') as u16 * 10 + (buf[11] - b'0') as u16;
            prop_assert_eq!(code, want);
        }
    }

    /// Real status lines with anything after them.
    #[test]
    fn corpus_status_lines(i in 0..RESPONSES.len(), tail in any::<[u8; 16]>()) {
        let (line, code) = RESPONSES[i];
        let mut buf = tail;
        let n = line.len().min(16);
        buf[..n].copy_from_slice(&line[..n]);
        prop_assert_eq!(parse_status_line(&buf, 16.min(line.len().max(n))), Some(code));
    }

    /// `find_byte` equals a naive search on any chunk and range, for one
    /// needle or several.
    #[test]
    fn find_byte_is_a_search(buf in any::<[u8; 16]>(), from in 0usize..20, to in 0usize..17, needles in any::<[u8; 3]>()) {
        let search = |n: [u8; 3]| if from >= to || from >= 16 {
            to
        } else {
            (from..to).find(|&i| n.contains(&buf[i])).unwrap_or(to)
        };
        let one = [needles[0]; 3];
        prop_assert_eq!(find_byte(&buf, from, to, one), search(one));
        prop_assert_eq!(find_byte(&buf, from, to, needles), search(needles));
    }

    /// The request-prefix test never panics and accepts every corpus request.
    #[test]
    fn request_prefix(buf in any::<[u8; 8]>(), len in 0usize..32, i in 0..REQUESTS.len()) {
        let _ = looks_like_request(&buf, len);
        let mut head = [0u8; 8];
        head.copy_from_slice(&REQUESTS[i].0[..8]);
        prop_assert!(looks_like_request(&head, 8));
    }

    /// Tenant from the Host label or a path segment: split anywhere, same.
    #[test]
    fn host_and_path_tenants_split_anywhere(
        label in "[a-z0-9]{1,20}",
        cuts in proptest::collection::vec(any::<usize>(), 0..10),
    ) {
        let mut host = ParserConfig::header(b"unused");
        host.tenant_source = tenant_source::HOST_LABEL;
        let req = format!("GET / HTTP/1.1\r\nHost: {label}.shop.example\r\n\r\n");
        let reads = split_at(req.as_bytes(), &cuts);
        let out = feed_kernel_like(&host, &reads, true);
        prop_assert_eq!(&out.requests, &vec![(Method::Get, label.as_bytes().to_vec())]);

        let mut path = ParserConfig::header(b"unused");
        path.tenant_source = tenant_source::PATH_SEGMENT;
        let prefix = b"/t/";
        path.path_prefix[..prefix.len()].copy_from_slice(prefix);
        path.path_prefix_len = prefix.len() as u8;
        let req = format!("GET /t/{label}/cart HTTP/1.1\r\nHost: x\r\n\r\n");
        let reads = split_at(req.as_bytes(), &cuts);
        let out = feed_kernel_like(&path, &reads, true);
        prop_assert_eq!(&out.requests, &vec![(Method::Get, label.as_bytes().to_vec())]);
    }
}

//! Feeds arbitrary bytes, split into arbitrary reads under an arbitrary
//! parser config, through the kernel's way of driving the parser and the
//! plain byte-by-byte way: neither may panic (out-of-bounds indexing would),
//! the state must stay in range, and both must report the same requests.
//! The stream is also framed as a buffer of responses, both ways.
//!
//! Input layout: byte 0 picks the tenant source and whether requests get
//! their responses, byte 1 the number of read boundaries, then that many
//! boundary bytes, then the stream.
#![no_main]

#[path = "../../tests/feed/mod.rs"]
mod feed;

use burnwatch_common::http::{ParserConfig, looks_like_request, parse_status_line};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let mut cfg = ParserConfig::header(b"X-Tenant-ID");
    cfg.tenant_source = data[0] % 5;
    let respond = data[0] & 0x80 != 0;
    cfg.path_prefix[..3].copy_from_slice(b"/t/");
    cfg.path_prefix_len = 3 + (data[0] >> 3) % 40; // also past the array
    let n_cuts = (data[1] as usize % 16).min(data.len() - 2);
    let cuts: Vec<usize> = data[2..2 + n_cuts].iter().map(|&b| b as usize * 7).collect();
    let stream = &data[2 + n_cuts..];
    let reads = feed::split_at(stream, &cuts);
    let a = feed::feed_kernel_like(&cfg, &reads, respond);
    let b = feed::feed_bytewise(&cfg, &reads, respond);
    assert_eq!(a, b, "kernel shortcuts changed the outcome");
    // The same bytes as a buffer of responses (a coalesced write), with the
    // cut bytes saying which answers are to HEAD requests.
    let head: Vec<bool> = data[2..2 + n_cuts].iter().map(|&b| b & 1 != 0).collect();
    assert_eq!(
        feed::frame_kernel_like(stream, &head),
        feed::frame_bytewise(stream, &head),
        "kernel shortcuts changed the response framing"
    );

    for w in stream.windows(16).take(64) {
        let buf: [u8; 16] = w.try_into().unwrap();
        let _ = parse_status_line(&buf, w[0] as usize % 40);
        let head: [u8; 8] = w[..8].try_into().unwrap();
        let _ = looks_like_request(&head, w[1] as usize % 16);
    }
});

//! A minimal HTTP/1.1 server whose socket I/O all goes through io_uring
//! (`IORING_OP_RECV` / `IORING_OP_SEND`): what the socket capture path
//! cannot parse (the syscall's registers hold no buffer) and must count as
//! `unparsed_io_uring`, never silently.
//!
//! `uring_http PORT [async]`: serves 127.0.0.1:PORT, one connection at a
//! time, answering every request with `200 ok`; logs `200 <tenant> GET
//! <path>` per request on stdout (flushed). `async` sets `IOSQE_ASYNC` on
//! every operation, so io_uring's worker threads (`iou-wrk`) issue them
//! rather than the submitting syscall.

use std::io::Write;
use std::net::TcpListener;
use std::os::fd::AsRawFd;

use io_uring::{IoUring, opcode, squeue, types};

const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let port: u16 = args
        .next()
        .and_then(|p| p.parse().ok())
        .expect("usage: uring_http PORT [async]");
    let flags = if args.next().as_deref() == Some("async") {
        squeue::Flags::ASYNC
    } else {
        squeue::Flags::empty()
    };
    let listener = TcpListener::bind(("127.0.0.1", port))?;
    let mut ring = IoUring::new(8)?;
    let mut out = std::io::stdout();
    for conn in listener.incoming() {
        let conn = conn?;
        let fd = types::Fd(conn.as_raw_fd());
        let mut buf = vec![0u8; 64 * 1024];
        let mut have = 0usize;
        loop {
            // Whole requests in `buf[..have]` first.
            while let Some(end) = find(&buf[..have], b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                let path = head.split(' ').nth(1).unwrap_or("-").to_string();
                let tenant = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("x-tenant-id")
                            .then(|| v.trim().to_string())
                    })
                    .unwrap_or_else(|| "-".into());
                buf.copy_within(end + 4..have, 0);
                have -= end + 4;
                let send = opcode::Send::new(fd, RESPONSE.as_ptr(), RESPONSE.len() as u32)
                    .build()
                    .flags(flags);
                let n = submit(&mut ring, send)?;
                if n != RESPONSE.len() as i32 {
                    return Err(std::io::Error::other(format!("short send: {n}")));
                }
                writeln!(out, "200 {tenant} GET {path}")?;
                out.flush()?;
            }
            let spare = &mut buf[have..];
            let recv = opcode::Recv::new(fd, spare.as_mut_ptr(), spare.len() as u32)
                .build()
                .flags(flags);
            let n = submit(&mut ring, recv)?;
            if n <= 0 {
                break; // closed (or failed): next connection
            }
            have += n as usize;
        }
    }
    Ok(())
}

/// Submits one operation and waits for its result (a byte count, or
/// -errno).
fn submit(ring: &mut IoUring, entry: squeue::Entry) -> std::io::Result<i32> {
    // SAFETY: the buffers the entry points at live until its completion,
    // which is waited for here.
    unsafe { ring.submission().push(&entry) }
        .map_err(|_| std::io::Error::other("submission queue full"))?;
    ring.submit_and_wait(1)?;
    let cqe = ring
        .completion()
        .next()
        .ok_or_else(|| std::io::Error::other("no completion"))?;
    Ok(cqe.result())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

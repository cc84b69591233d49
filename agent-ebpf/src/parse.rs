//! Feeding the bytes of one read (or one readv/recvmsg, up to `MAX_IOV`
//! iovecs) to the connection's request parser, `CHUNK` bytes per
//! `bpf_loop` iteration. Bodies are skipped without being read.

use core::ffi::c_void;

use aya_ebpf::helpers::{
    bpf_ktime_get_ns,
    generated::{bpf_loop, bpf_probe_read_user},
};
use burnwatch_common::{
    http::event,
    maps::{AgentConfig, ConnState, conn_event, counter},
};

use crate::maps::{CHUNK, MAX_CHUNKS, MAX_IOV, Scratch, WINDOW, bump};
use crate::{count, spill};

/// Set as `iov_idx` when parsing stopped on purpose (stream not HTTP).
pub const STOPPED: u64 = u64::MAX;

/// Shared with the `bpf_loop` callback (lives on the caller's stack).
#[repr(C)]
struct ParseCtx {
    conn: *mut ConnState,
    /// The connection's `CONNS` key (for `SPILL`).
    conn_key: u64,
    cfg: *const AgentConfig,
    scratch: *mut Scratch,
    now: u64,
}

/// Parses the iovecs in `scratch` (`iov_base`, `iov_len`, `iov_cnt`).
#[inline(always)]
pub fn parse_inbound(
    conn: *mut ConnState,
    conn_key: u64,
    cfg: &AgentConfig,
    scratch: *mut Scratch,
) {
    unsafe {
        (*conn).requests.begin_read();
        // Volatile: two adjacent zero stores become a memset call otherwise.
        core::ptr::write_volatile(&mut (*scratch).iov_idx, 0);
        (*scratch).off = 0;
        core::ptr::write_volatile(&mut (*scratch).win_len, 0);
    }
    let mut pc = ParseCtx {
        conn,
        conn_key,
        cfg,
        scratch,
        now: unsafe { bpf_ktime_get_ns() },
    };
    unsafe {
        bpf_loop(
            MAX_CHUNKS,
            parse_chunk as *mut c_void,
            &mut pc as *mut ParseCtx as *mut c_void,
            0,
        );
    }
    let (idx, cnt) = unsafe { ((*scratch).iov_idx, (*scratch).iov_cnt) };
    if idx < cnt {
        // More bytes than one syscall may scan: the rest is unseen, so the
        // stream waits for the next request line to resynchronise.
        let c = unsafe { &mut *conn };
        count::conn_event(c.service_id, c.local_port, conn_event::SCAN_LIMIT);
        if c.requests.in_headers() {
            count::conn_event(c.service_id, c.local_port, conn_event::TENANT_NOT_FOUND);
        }
        c.requests.lose_sync();
    }
}

/// Where the scan of a syscall's buffers stands, at the start of a
/// `bpf_loop` iteration.
pub enum Cursor {
    /// Every buffer was scanned (or the scan was stopped).
    Done,
    /// Moved on to the next iovec: nothing to scan this iteration.
    NextIovec,
    /// `rest` bytes of the current iovec are left, from user address `src`.
    At { src: u64, rest: u64 },
}

/// The scan's position in the iovecs of `scratch`.
#[inline(always)]
pub fn cursor(scratch: &mut Scratch) -> Cursor {
    let idx = scratch.iov_idx;
    if idx >= scratch.iov_cnt || idx >= MAX_IOV as u64 {
        return Cursor::Done;
    }
    let base = scratch.iov_base[idx as usize % MAX_IOV];
    let len = scratch.iov_len[idx as usize % MAX_IOV];
    if scratch.off >= len {
        scratch.iov_idx += 1;
        scratch.off = 0;
        return Cursor::NextIovec;
    }
    Cursor::At {
        src: base + scratch.off,
        rest: len - scratch.off,
    }
}

/// Puts the next `n <= CHUNK` bytes, at user address `src` with `rest`
/// left in the iovec, into `scratch.buf`. False when they cannot be read
/// (the scan is then stopped).
#[inline(always)]
pub fn load_chunk(scratch: &mut Scratch, src: u64, rest: u64, n: u64) -> bool {
    // The chunk's bytes: from the window when it holds them, else read a
    // new window. Always constant-size reads: a size derived from `off`
    // would make the verifier track `off` precisely, and the callback's
    // states would never converge.
    let in_window = src >= scratch.win_base && src + n <= scratch.win_base + scratch.win_len;
    let fresh = !in_window
        && unsafe {
            bpf_probe_read_user(
                scratch.win.as_mut_ptr() as *mut c_void,
                WINDOW as u32,
                src as *const c_void,
            )
        } == 0;
    if fresh {
        scratch.win_base = src;
        scratch.win_len = if rest < WINDOW as u64 {
            rest
        } else {
            WINDOW as u64
        };
    }
    if in_window || fresh {
        // `at + n <= WINDOW`; the mask only shows the verifier the bound.
        let at = ((src - scratch.win_base) as usize) % WINDOW;
        copy_chunk(&scratch.win, at, &mut scratch.buf);
        return true;
    }
    // Near the end of a buffer (at a page edge) the window read can
    // fault: read this chunk alone, or its bytes one at a time.
    scratch.win_len = 0;
    if unsafe {
        bpf_probe_read_user(
            scratch.buf.as_mut_ptr() as *mut c_void,
            CHUNK as u32,
            src as *const c_void,
        )
    } == 0
    {
        return true;
    }
    let mut j = 0usize;
    while j < CHUNK {
        if j as u64 >= n {
            break;
        }
        if unsafe {
            bpf_probe_read_user(
                scratch.buf.as_mut_ptr().add(j) as *mut c_void,
                1,
                (src + j as u64) as *const c_void,
            )
        } != 0
        {
            bump(counter::READ_FAULT);
            scratch.iov_idx = STOPPED;
            return false;
        }
        j += 1;
    }
    true
}

/// One `bpf_loop` iteration: skip body bytes, or scan up to `CHUNK` bytes.
/// Returns 1 to stop the loop.
extern "C" fn parse_chunk(_index: u64, ctx: *mut c_void) -> i64 {
    let pc = unsafe { &mut *(ctx as *mut ParseCtx) };
    let scratch = unsafe { &mut *pc.scratch };
    let (src, rest) = match cursor(scratch) {
        Cursor::Done => return 1,
        Cursor::NextIovec => return 0,
        Cursor::At { src, rest } => (src, rest),
    };
    let conn = unsafe { &mut *pc.conn };
    let skip = conn.requests.skippable();
    if skip > 0 {
        let n = if skip < rest { skip } else { rest };
        conn.requests.skip(n);
        scratch.off += n;
        return 0;
    }
    let n = if rest < CHUNK as u64 {
        rest
    } else {
        CHUNK as u64
    };
    if !load_chunk(scratch, src, rest, n) {
        return 1;
    }
    let cfg = unsafe { &(*pc.cfg).parser };
    let (service_id, local_port) = (conn.service_id, conn.local_port);
    let (spilled, spill_head) = (&mut conn.spilled, conn.spill_head);
    let scanned = conn.requests.scan_chunk(
        &scratch.buf,
        n as usize,
        cfg,
        pc.now,
        |requests, ev| match ev {
            // A deep pipeline: make room for the next request.
            event::HEADERS_DONE if requests.is_full() => {
                spill::spill_oldest(requests, spilled, spill_head, pc.conn_key)
            }
            event::QUEUE_FULL => {
                count::conn_event(service_id, local_port, conn_event::PIPELINE_OVERFLOW)
            }
            event::INVALID => count::conn_event(service_id, local_port, conn_event::PARSE_INVALID),
            _ => {}
        },
    );
    let Some(i) = scanned else {
        scratch.iov_idx = STOPPED;
        return 1;
    };
    scratch.off += i as u64;
    0
}

/// Copies `CHUNK` bytes of the window from `at`. Volatile, because a plain
/// copy becomes a call to a byte-at-a-time `memcpy` (see `mem.rs`). Chunks
/// usually start 8-aligned in the window (a window is read where a chunk
/// starts, and chunks follow each other 16 bytes apart): two word moves.
/// After a body skip they start anywhere: byte moves.
#[inline(always)]
fn copy_chunk(win: &[u8; WINDOW + CHUNK], at: usize, out: &mut [u8; CHUNK]) {
    if at.is_multiple_of(8) {
        // `at & (WINDOW - 8)` is `at`, in a form the verifier sees is
        // 8-aligned and below `WINDOW`.
        let src = unsafe { win.as_ptr().add(at & (WINDOW - 8)) } as *const u64;
        let dst = out.as_mut_ptr() as *mut u64;
        unsafe {
            core::ptr::write_volatile(dst, core::ptr::read_volatile(src));
            core::ptr::write_volatile(dst.add(1), core::ptr::read_volatile(src.add(1)));
        }
        return;
    }
    let src = unsafe { win.as_ptr().add(at % WINDOW) };
    let mut j = 0;
    while j < CHUNK {
        unsafe {
            core::ptr::write_volatile(
                out.as_mut_ptr().add(j),
                core::ptr::read_volatile(src.add(j)),
            )
        };
        j += 1;
    }
}

//! Feeding the bytes of one read (or one readv/recvmsg, up to `MAX_IOV`
//! iovecs) to the connection's request parser, one step of it per
//! `bpf_loop` iteration (a byte, or a run of bytes nobody needs). Bodies
//! are skipped without being read.

use core::ffi::c_void;

use aya_ebpf::helpers::{
    bpf_ktime_get_ns,
    generated::{bpf_loop, bpf_probe_read_user},
};
use burnwatch_common::{
    http::{
        event,
        window::{self, AHEAD, WINDOW},
    },
    maps::{AgentConfig, ConnState, conn_event, counter},
};

use crate::maps::{CHUNK, MAX_IOV, MAX_STEPS, Scratch, bump};
use crate::{count, mem, spill};

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
        begin_scan(&mut *scratch);
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
            MAX_STEPS,
            parse_step as *mut c_void,
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

/// Puts the scan's cursor at the first byte of the buffers in `scratch`.
#[inline(always)]
pub fn begin_scan(scratch: &mut Scratch) {
    // Volatile: adjacent zero stores become a memset call otherwise.
    unsafe {
        core::ptr::write_volatile(&mut scratch.iov_idx, 0);
        core::ptr::write_volatile(&mut scratch.off, 0);
        core::ptr::write_volatile(&mut scratch.win_len, 0);
    }
    scratch.left = scratch.left_init;
    scratch.cur_base = scratch.iov_base[0];
    scratch.cur_len = scratch.iov_len[0];
}

/// The scan's position in the iovecs of `scratch`, moving on to the next
/// iovec when the current one is done: one of the first `iov_cached`, or
/// one read from the user's array now (every iovec is walked, up to
/// `IOV_MAX`; none once the bytes the syscall moved are all assigned).
#[inline(always)]
pub fn cursor(scratch: &mut Scratch) -> Cursor {
    let idx = scratch.iov_idx;
    // `STOPPED` is above any count.
    if idx >= scratch.iov_cnt {
        return Cursor::Done;
    }
    if scratch.off < scratch.cur_len {
        return Cursor::At {
            src: scratch.cur_base + scratch.off,
            rest: scratch.cur_len - scratch.off,
        };
    }
    let next = idx + 1;
    scratch.iov_idx = next;
    scratch.off = 0;
    scratch.cur_len = 0;
    if next >= scratch.iov_cnt {
        return Cursor::Done;
    }
    if next < scratch.iov_cached {
        scratch.cur_base = scratch.iov_base[next as usize % MAX_IOV];
        scratch.cur_len = scratch.iov_len[next as usize % MAX_IOV];
        return Cursor::NextIovec;
    }
    if scratch.left == 0 {
        // Every byte moved is in the iovecs walked: the rest are unused.
        scratch.iov_idx = scratch.iov_cnt;
        return Cursor::Done;
    }
    let mut iov = core::mem::MaybeUninit::<[u64; 2]>::uninit();
    let Some(iov) = crate::read_user_into(scratch.iov_addr + 16 * next, &mut iov) else {
        bump(counter::READ_FAULT);
        scratch.iov_idx = STOPPED;
        return Cursor::Done;
    };
    let take = if iov[1] < scratch.left {
        iov[1]
    } else {
        scratch.left
    };
    scratch.left -= take;
    scratch.cur_base = iov[0];
    scratch.cur_len = take;
    Cursor::NextIovec
}

/// The bytes at the scan's cursor (user address `src`, `rest` left in the
/// iovec): their offset in `scratch.win` and how many are at hand there
/// (at most `AHEAD`), reading the window again from `src` when it does not
/// hold them (`window::place`). `None` when user memory cannot be read (the
/// scan is then stopped).
#[inline(always)]
pub fn view(scratch: &mut Scratch, src: u64, rest: u64) -> Option<(usize, usize)> {
    if let Some((at, n)) = window::place(src, rest, scratch.win_base, scratch.win_len) {
        // The mask kept (`mem::bounded`): the window is indexed with it.
        return Some((mem::bounded(at, WINDOW as u64 - 1) as usize, n as usize));
    }
    let len = window::fill_len(rest);
    // Exactly the bytes of the buffer (at most WINDOW): never past its end,
    // so a buffer that ends at a page edge reads like any other.
    if unsafe {
        bpf_probe_read_user(
            scratch.win.as_mut_ptr() as *mut c_void,
            if len >= WINDOW as u64 {
                WINDOW as u32
            } else {
                mem::bounded(len, WINDOW as u64 - 1)
            },
            src as *const c_void,
        )
    } != 0
    {
        bump(counter::READ_FAULT);
        scratch.win_len = 0;
        scratch.iov_idx = STOPPED;
        return None;
    }
    scratch.win_base = src;
    scratch.win_len = len;
    Some((
        0,
        if len < AHEAD as u64 {
            len as usize
        } else {
            AHEAD
        },
    ))
}

/// One `bpf_loop` iteration: skip body bytes, or take one step of the
/// parser (`RequestStream::scan_step`). Returns 1 to stop the loop. The
/// body has no loop of its own: the verifier explores it once per state it
/// can start in, and the parser's state lives in map memory (the
/// connection), so those states are few.
extern "C" fn parse_step(_index: u64, ctx: *mut c_void) -> i64 {
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
    let Some((at, n)) = view(scratch, src, rest) else {
        return 1;
    };
    let cfg = unsafe { &(*pc.cfg).parser };
    let byte = scratch.win[at];
    let win = &scratch.win;
    let (taken, ev) = conn
        .requests
        .scan_step(byte, || ahead_at(win, at), n, cfg, pc.now);
    scratch.off += taken as u64;
    match ev {
        // A deep pipeline: make room for the next request.
        event::HEADERS_DONE if conn.requests.is_full() => spill::spill_oldest(
            &mut conn.requests,
            &mut conn.spilled,
            conn.spill_head,
            pc.conn_key,
        ),
        event::QUEUE_FULL => count::conn_event(
            conn.service_id,
            conn.local_port,
            conn_event::PIPELINE_OVERFLOW,
        ),
        event::INVALID => {
            count::conn_event(conn.service_id, conn.local_port, conn_event::PARSE_INVALID);
            scratch.iov_idx = STOPPED;
            return 1;
        }
        _ => {}
    }
    0
}

/// The `CHUNK` bytes of the window from `at`, for a step that looks ahead,
/// in place: `at` is below `WINDOW` (the mask kept), so the verifier sees
/// every load of them inside `win` (`WINDOW + CHUNK` bytes). No copy: the
/// copy moved 16 bytes one at a time at unaligned offsets, on every step
/// that looked ahead.
#[inline(always)]
pub fn ahead_at(win: &[u8; WINDOW + CHUNK], at: usize) -> &[u8; CHUNK] {
    let at = mem::bounded(at as u64, WINDOW as u64 - 1) as usize;
    unsafe { &*(win.as_ptr().add(at) as *const [u8; CHUNK]) }
}

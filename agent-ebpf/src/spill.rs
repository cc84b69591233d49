//! Deep pipelines. A connection's state queues `PENDING_MAX` requests that
//! await their response; a client may pipeline many more (a batch of 10 or
//! 100 requests in one write). When a request's headers end and the queue
//! is full, its oldest request moves to the `SPILL` map, keyed by
//! (connection, sequence number), so the next request line finds room.
//! Spilled requests are always older than queued ones: a response answers
//! the oldest spilled request first, then the queue.
//!
//! Nothing here runs unless a connection has more than `PENDING_MAX`
//! requests unanswered: the usual cost is one compare per request.

use core::ffi::c_void;

use aya_ebpf::helpers::generated::bpf_loop;
use burnwatch_common::http::RequestStream;
use burnwatch_common::maps::{AgentConfig, ConnState, SPILL_PER_CONN, SpillKey, conn_event};

use crate::count;
use crate::maps::SPILL;

/// A request's headers ended and the queue is full: move its oldest
/// request to `SPILL`. At the per-connection cap (or if the map refuses),
/// the queue stays full and the next request is counted as
/// `pipeline_overflow`, as before spilling existed. Takes a connection's
/// fields (`requests`, `spilled`, `spill_head`), not the connection: its
/// caller is the parser's event handler, which holds `requests` while the
/// other fields are borrowed apart.
#[inline(always)]
pub fn spill_oldest(
    requests: &mut RequestStream,
    spilled: &mut u16,
    spill_head: u32,
    conn_key: u64,
) {
    if *spilled >= SPILL_PER_CONN {
        return;
    }
    let key = SpillKey {
        conn_key,
        seq: spill_head.wrapping_add(*spilled as u32) as u64,
    };
    if SPILL.insert(&key, requests.oldest(), 0).is_err() {
        return;
    }
    requests.pop();
    *spilled += 1;
}

/// Whether any request of `conn` awaits a response.
#[inline(always)]
pub fn has_pending(conn: &ConnState) -> bool {
    conn.spilled > 0 || conn.requests.has_pending()
}

/// Whether two or more requests of `conn` await a response: a buffer of
/// responses may then answer several (see `frame.rs`).
#[inline(always)]
pub fn has_several_pending(conn: &ConnState) -> bool {
    conn.spilled as usize + conn.requests.len as usize >= 2
}

/// Counts the oldest request of `conn` awaiting a response with `status`
/// (0: none came) and removes it. A spilled request the LRU pushed out is
/// counted as `pipeline_overflow`. Returns the request's method (a
/// `Method` as u8; `Method::Unknown` when there was none to count).
#[inline(always)]
pub fn answer_oldest(conn: &mut ConnState, conn_key: u64, cfg: &AgentConfig, status: u16) -> u8 {
    if conn.spilled == 0 {
        if conn.requests.has_pending() {
            let method = conn.requests.oldest().method;
            count::count_request(conn, conn.requests.oldest(), cfg, status);
            conn.requests.pop();
            return method;
        }
        return 0;
    }
    let key = SpillKey {
        conn_key,
        seq: conn.spill_head as u64,
    };
    conn.spill_head = conn.spill_head.wrapping_add(1);
    conn.spilled -= 1;
    match SPILL.get_ptr(&key) {
        Some(req) => {
            let method = unsafe { (*req).method };
            count::count_request(conn, unsafe { &*req }, cfg, status);
            let _ = SPILL.remove(&key);
            method
        }
        None => {
            count::conn_event(
                conn.service_id,
                conn.local_port,
                conn_event::PIPELINE_OVERFLOW,
            );
            0
        }
    }
}

/// Shared with the `bpf_loop` callback of [`abandon_all`].
#[repr(C)]
struct AbandonCtx {
    conn: *mut ConnState,
    cfg: *const AgentConfig,
    conn_key: u64,
}

/// The connection ends: every request still awaiting a response, spilled
/// or queued, is counted with status 000 and as `request_open_at_close`.
/// A `bpf_loop`: up to `SPILL_PER_CONN + PENDING_MAX` of them.
#[inline(always)]
pub fn abandon_all(conn: &mut ConnState, conn_key: u64, cfg: &AgentConfig) {
    let mut ctx = AbandonCtx {
        conn,
        cfg,
        conn_key,
    };
    unsafe {
        bpf_loop(
            SPILL_PER_CONN as u32 + burnwatch_common::maps::PENDING_MAX as u32,
            abandon_one as *mut c_void,
            &mut ctx as *mut AbandonCtx as *mut c_void,
            0,
        );
    }
}

extern "C" fn abandon_one(_index: u64, ctx: *mut c_void) -> i64 {
    let ctx = unsafe { &mut *(ctx as *mut AbandonCtx) };
    let conn = unsafe { &mut *ctx.conn };
    if !has_pending(conn) {
        return 1;
    }
    answer_oldest(conn, ctx.conn_key, unsafe { &*ctx.cfg }, 0);
    count::conn_event(conn.service_id, conn.local_port, conn_event::OPEN_AT_CLOSE);
    0
}

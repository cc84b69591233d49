//! Framing responses: a client's reads, and a server's write that may
//! hold several responses. Each status line answers the oldest request
//! still awaiting one.
//!
//! Client side, a read is framed unless it is the usual exchange's (one
//! request out, the read starting a final response: see `client_read`),
//! and the framing state is kept in the connection (`ConnState::responses`)
//! from one read to the next: a read returns an exact byte count, so the
//! stream can be followed across reads whatever their sizes (a status line
//! split over two reads, the end of a body and the next response in one,
//! responses of a pipeline together).
//!
//! Server side, a write is framed from its first byte when two or more
//! requests await a response, when it starts with an interim response (its
//! final one may follow), or when it is shorter than a status line that it
//! may start. Two places are kept for the next write: a status line cut by
//! the write's end, and a Content-Length body the write ended inside of
//! while more requests still await their responses (a server that writes a
//! response's head and body separately, pipelined). A write's accepted
//! length is only known at its exit, so the body's remaining length is
//! counted from the length asked at its entry: a lower bound, as the bytes
//! a short write left behind come again before anything else, so the bytes
//! taken as body are body whatever the kernel accepted (a short write only
//! ends the body early, and the stream resyncs at the next write that
//! starts a status line). Bodies sent by `sendfile` count too (the
//! `sys_enter_sendfile64` program); a body sent by a path no program sees
//! (`splice`, io_uring) would leave the next pipelined response taken for
//! body. Otherwise a write is taken to start a response (the write programs
//! look at its start when one request waits).
//! Reached by tail call, so the programs on every write stay small.

use core::{ffi::c_void, ptr::write_volatile};

use aya_ebpf::helpers::generated::bpf_loop;
use burnwatch_common::{
    http::response::{ResponseStream, event, fits_status_line, state},
    maps::{AgentConfig, ConnState, Method, conn_event, role},
};

use crate::maps::{MAX_STEPS, Scratch};
use crate::parse::{Cursor, STOPPED, ahead_at, cursor, view};
use crate::{count, spill};

/// Shared with the `bpf_loop` callback (lives on the caller's stack).
#[repr(C)]
struct FrameCtx {
    conn: *mut ConnState,
    conn_key: u64,
    cfg: *const AgentConfig,
    scratch: *mut Scratch,
    /// The client side: the stream goes on after this buffer, so framing
    /// does not stop where nothing is left to answer.
    persist: u64,
}

/// `ResponseStream`'s size in words: it is moved with word stores
/// (volatile, so they do not become `memset`/`memcpy` calls).
const RESP_WORDS: usize = core::mem::size_of::<ResponseStream>() / 8;
const _: () = assert!(core::mem::size_of::<ResponseStream>().is_multiple_of(8));

/// Frames the buffers in `scratch` (`iov_base`, `iov_len`, `iov_cnt`, the
/// whole write or read) as responses of `conn`.
#[inline(always)]
pub fn frame_buffer(conn: *mut ConnState, conn_key: u64, cfg: &AgentConfig, scratch: *mut Scratch) {
    let persist = unsafe { (*conn).role } == role::CLIENT;
    unsafe {
        let to = &mut (*scratch).resp as *mut ResponseStream as *mut u64;
        let from = &(*conn).responses as *const ResponseStream as *const u64;
        // Client: a stream that stopped (lost, or not HTTP) starts again at
        // a read that starts a status line. Server: only a status line the
        // last write ended inside of goes on (see below).
        let resume = if persist {
            !(*conn).responses.is_done()
        } else {
            // A body goes on; a status line only if this write's first byte
            // goes on with it: a short body write that looked like the
            // start of a status line gives way to the next response's.
            (*conn).responses.in_length_body()
                || (!(*conn).responses.between_responses()
                    && continues_status_line(&(*conn).responses, (*scratch).iov_base[0]))
        };
        let mut w = 0;
        while w < RESP_WORDS {
            // A fresh `ResponseStream` is all zeros (state STATUS).
            write_volatile(to.add(w), if resume { *from.add(w) } else { 0 });
            w += 1;
        }
        crate::parse::begin_scan(&mut *scratch);
    }
    let mut fc = FrameCtx {
        conn,
        conn_key,
        cfg,
        scratch,
        persist: persist as u64,
    };
    unsafe {
        bpf_loop(
            MAX_STEPS,
            frame_step as *mut c_void,
            &mut fc as *mut FrameCtx as *mut c_void,
            0,
        );
    }
    unsafe {
        let s = &mut *scratch;
        let keep = if persist {
            // Bytes left unframed (the scan limit, unreadable memory,
            // iovecs past `MAX_IOV`): the stream's place is lost.
            if (s.iov_idx < s.iov_cnt && s.iov_idx != STOPPED) || s.unseen > 0 {
                s.resp.state = state::DONE;
            }
            true
        } else {
            // A server keeps a status line its write ended inside of (a
            // server writing it in pieces), and a body its write ended
            // inside of while requests still wait (see the module's
            // comment), if every byte of the write was framed; otherwise its
            // next write is taken to start a response.
            let framed_whole = s.iov_idx != STOPPED && s.iov_idx >= s.iov_cnt && s.unseen == 0;
            (s.resp.state == state::STATUS && s.iov_idx != STOPPED)
                || (framed_whole && s.resp.in_length_body() && spill::has_pending(&*conn))
        };
        // `closes` is set only by a final response's headers, and cleared
        // when the next response starts (framing stopped before).
        if !persist && s.resp.closes != 0 {
            close_after(&mut *conn);
        }
        let from = &s.resp as *const ResponseStream as *const u64;
        let to = &mut (*conn).responses as *mut ResponseStream as *mut u64;
        let mut w = 0;
        while w < RESP_WORDS {
            write_volatile(to.add(w), if keep { *from.add(w) } else { 0 });
            w += 1;
        }
    }
}

/// Whether the byte at user address `at` is the next one of the status
/// line `held` is inside of (`token_len` bytes of `HTTP/1.x NNN` seen).
#[inline(always)]
fn continues_status_line(held: &ResponseStream, at: u64) -> bool {
    let mut b = 0u8;
    crate::read_user(at, &mut b) && fits_status_line(held.token_len as usize, b)
}

/// One `bpf_loop` iteration: skip body bytes, or take one step of the
/// framing (`ResponseStream::scan_step`), handling its event here. Returns
/// 1 to stop the loop. No loop inside: the verifier explores the body once
/// per state it starts in (see `parse_step`).
extern "C" fn frame_step(_index: u64, ctx: *mut c_void) -> i64 {
    let fc = unsafe { &mut *(ctx as *mut FrameCtx) };
    let scratch = unsafe { &mut *fc.scratch };
    let (src, rest) = match cursor(scratch) {
        Cursor::Done => return 1,
        Cursor::NextIovec => return 0,
        Cursor::At { src, rest } => (src, rest),
    };
    let skip = scratch.resp.skippable();
    if skip > 0 {
        let n = if skip < rest { skip } else { rest };
        scratch.resp.skip(n);
        scratch.off += n;
        return 0;
    }
    let Some((at, n)) = view(scratch, src, rest) else {
        return 1;
    };
    let byte = scratch.win[at];
    let win = &scratch.win;
    let (i, ev) = scratch.resp.scan_step(byte, || ahead_at(win, at), n);
    scratch.off += i as u64;
    if ev == event::DONE || (ev == event::CLOSE && fc.persist == 0) {
        // A server's response closing the connection: `frame_buffer` ends
        // it (`close_after`) once the loop is over.
        return stop(scratch);
    }
    if ev == event::STATUS {
        let status = scratch.resp.status;
        // 1xx other than 101 are interim: the final status follows.
        if status >= 200 || status == 101 {
            let conn = unsafe { &mut *fc.conn };
            if !spill::has_pending(conn) {
                count::conn_event(
                    conn.service_id,
                    conn.local_port,
                    conn_event::UNMATCHED_RESPONSE,
                );
                // A client's stream is still in step: frame this response
                // too, to find where the next one starts.
                return if fc.persist != 0 { 0 } else { stop(scratch) };
            }
            let method = spill::answer_oldest(conn, fc.conn_key, unsafe { &*fc.cfg }, status);
            if method == Method::Head as u8 {
                scratch.resp.no_body = 1;
            }
            if status == 101 {
                // Another protocol from now on.
                conn.role = 0;
                return stop(scratch);
            }
            if fc.persist == 0 && !spill::has_pending(conn) {
                // Nothing left to answer in this write: the rest needs no
                // framing.
                return stop(scratch);
            }
        }
    }
    0
}

/// A server's response said `Connection: close`: the server takes no
/// request after the one it answered (RFC 9112 9.6). Requests still queued
/// behind it were read by the server and dropped, never taken: each counts
/// as `after_close`, not as a request. The connection is ended: what the
/// server still reads (a lingering close discarding what the client sent)
/// is `after_close` too. (A client's pipelined requests behind such a
/// response stay queued: the client saw no answer to them, 000 at close.)
#[inline(always)]
fn close_after(conn: &mut ConnState) {
    let queued = conn.spilled as u64 + conn.requests.len as u64;
    if queued > 0 {
        count::conn_event_n(
            conn.service_id,
            conn.local_port,
            conn_event::AFTER_CLOSE,
            queued,
        );
    }
    // Spilled requests left in `SPILL` are overwritten before they could
    // be read again (a connection's next spill starts at its head).
    conn.requests = burnwatch_common::http::RequestStream::new();
    conn.spilled = 0;
    conn.role = 0;
    conn.ignored = burnwatch_common::maps::ignored::ENDED;
}

#[inline(always)]
fn stop(scratch: &mut Scratch) -> i64 {
    scratch.iov_idx = STOPPED;
    1
}

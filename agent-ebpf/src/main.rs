//! burnwatch's eBPF programs: HTTP/1.x request counting on the syscall
//! tracepoints (this kernel has no kprobes; syscall tracepoints exist
//! everywhere and their argument layout is a stable ABI).
//!
//! Per syscall on a socket that carries HTTP/1.x, server side:
//! - `read`/`recvfrom`/`readv`/`recvmsg` exit: feed the bytes read to the
//!   connection's request parser (`burnwatch_common::http`, shared with the
//!   host tests), which queues each request with method, tenant, start time;
//! - `write`/`sendto`/`writev`/`sendmsg` enter: a status line answers the
//!   oldest queued request; count it in `COUNTS` keyed by (service, tenant,
//!   method, status) with its latency bucket (`sendfile` carries only
//!   bodies, after the status line, so it needs no probe);
//! - `close` enter: requests still queued are counted with status 000;
//! - `accept`/`accept4` exit, `connect` enter: a new socket; stale state for
//!   its descriptor number (left by an fd closed without `close`) is dropped;
//! - `tcp:tcp_send_reset`: resets and refused connections on a service port.
//!
//! A connection is recognised the first time a read returns a request line,
//! so connections opened before the agent started (keep-alive pools) are
//! counted from their next request, and the accept path costs nothing.
//! Reads on anything else cost a map lookup and an 8-byte peek.
//!
//! Modules: `maps` (every map), `socket` (fd -> TCP socket), `parse`
//! (scanning reads), `count` (series and events).
#![no_std]
#![no_main]
// The BPF target has no `AtomicU64::fetch_add` (no CAS); the intrinsic
// lowers to the BPF atomic add instruction.
#![allow(internal_features)]
#![feature(core_intrinsics)]
// Map keys and values are passed by reference on purpose: by value they
// would be copied onto the 512-byte eBPF stack first.
#![allow(clippy::needless_borrows_for_generic_args)]

mod count;
mod maps;
mod parse;
mod socket;

use core::ffi::c_void;

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, generated::bpf_probe_read_user},
    macros::tracepoint,
    programs::TracePointContext,
};
use burnwatch_common::{
    http::{RequestStream, looks_like_request, parse_status_line},
    maps::{
        AgentConfig, ConnState, InflightRead, SERVICE_AUTO, config_flags, conn_event, conn_key,
        counter, inflight_kind, role,
    },
};

use maps::{CONNS, INFLIGHT, MAX_IOV, SCRATCH, SERVER_PORTS, SERVICE_PORTS, Scratch, bump, config};

const BPF_NOEXIST: u64 = 1;

#[inline(always)]
fn arg_u64(ctx: &TracePointContext, n: usize) -> u64 {
    // Syscall tracepoints: 8 bytes of common fields + nr, then one u64 per arg.
    unsafe { ctx.read_at::<u64>(16 + 8 * n).unwrap_or(0) }
}

#[inline(always)]
fn exit_ret(ctx: &TracePointContext) -> i64 {
    unsafe { ctx.read_at::<i64>(16).unwrap_or(-1) }
}

#[inline(always)]
fn read_user<T: Copy>(addr: u64, out: &mut T) -> bool {
    unsafe {
        bpf_probe_read_user(
            out as *mut T as *mut c_void,
            core::mem::size_of::<T>() as u32,
            addr as *const c_void,
        ) == 0
    }
}

// ---------------------------------------------------------------- reads

/// Attached to read and recvfrom (fd and buffer are their first two args).
#[tracepoint]
pub fn sys_enter_read(ctx: TracePointContext) -> u32 {
    stash_read(&ctx, inflight_kind::BUF);
    0
}

#[tracepoint]
pub fn sys_enter_readv(ctx: TracePointContext) -> u32 {
    stash_read(&ctx, inflight_kind::IOVEC);
    0
}

#[tracepoint]
pub fn sys_enter_recvmsg(ctx: TracePointContext) -> u32 {
    stash_read(&ctx, inflight_kind::MSGHDR);
    0
}

/// Attached to the exits of read, recvfrom, readv and recvmsg: the exit
/// layout is the same (`ret`), and one program is verified once, not four
/// times (verifying the parser is most of the agent's start-up time).
#[tracepoint]
pub fn sys_exit_read(ctx: TracePointContext) -> u32 {
    finish_read(&ctx);
    0
}

#[inline(always)]
fn stash_read(ctx: &TracePointContext, kind: u32) {
    let id = bpf_get_current_pid_tgid();
    let fd = arg_u64(ctx, 0) as u32;
    let key = conn_key((id >> 32) as u32, fd);
    if let Some(conn) = unsafe { CONNS.get(&key) }
        && conn.role == 0
    {
        return; // known not to be ours
    }
    let args = InflightRead {
        fd,
        kind,
        buf: arg_u64(ctx, 1),
        vlen: arg_u64(ctx, 2),
    };
    if INFLIGHT.insert(&id, &args, 0).is_err() {
        bump(counter::INFLIGHT_FULL);
    }
}

/// Fills `scratch.iov_*` with the buffers of a read that returned `ret`
/// bytes, each length cut so they add up to `ret`.
#[inline(always)]
fn fill_iovecs(scratch: &mut Scratch, args: &InflightRead, ret: u64) -> bool {
    let (iov_addr, vlen) = match args.kind {
        inflight_kind::BUF => {
            scratch.iov_base[0] = args.buf;
            scratch.iov_len[0] = ret;
            scratch.iov_cnt = 1;
            return true;
        }
        inflight_kind::IOVEC => (args.buf, args.vlen),
        _ => {
            // struct user_msghdr { name, namelen, iov @16, iovlen @24, ... }
            let mut hdr = [0u64; 4];
            if !read_user(args.buf, &mut hdr) {
                return false;
            }
            (hdr[2], hdr[3])
        }
    };
    let mut iov = [0u64; 2 * MAX_IOV]; // struct iovec { base, len } x MAX_IOV
    let cnt = if vlen < MAX_IOV as u64 {
        vlen
    } else {
        MAX_IOV as u64
    };
    if cnt == 0 {
        return false;
    }
    // Read the whole array at once; a short array near a page end falls
    // back to the first iovec.
    if !read_user(iov_addr, &mut iov) {
        let mut first = [0u64; 2];
        if !read_user(iov_addr, &mut first) {
            return false;
        }
        iov[0] = first[0];
        iov[1] = first[1];
    }
    let mut left = ret;
    let mut i = 0;
    while i < MAX_IOV {
        let len = if (i as u64) < cnt { iov[2 * i + 1] } else { 0 };
        let take = if len < left { len } else { left };
        scratch.iov_base[i] = iov[2 * i];
        scratch.iov_len[i] = take;
        left -= take;
        i += 1;
    }
    scratch.iov_cnt = cnt;
    true
}

#[inline(always)]
fn finish_read(ctx: &TracePointContext) {
    let id = bpf_get_current_pid_tgid();
    let args = match unsafe { INFLIGHT.get(&id) } {
        Some(a) => *a,
        None => return,
    };
    let _ = INFLIGHT.remove(&id);
    let ret = exit_ret(ctx);
    if ret <= 0 {
        return;
    }
    let Some(cfg) = config() else { return };
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    if !fill_iovecs(unsafe { &mut *scratch }, &args, ret as u64) {
        return;
    }
    let key = conn_key((id >> 32) as u32, args.fd);
    let conn = match CONNS.get_ptr_mut(&key) {
        Some(c) => c,
        None => {
            let (buf, len) = unsafe { ((*scratch).iov_base[0], (*scratch).iov_len[0]) };
            match new_connection(cfg, key, args.fd, buf, len) {
                Some(c) => c,
                None => return,
            }
        }
    };
    if unsafe { (*conn).role } == role::SERVER {
        parse::parse_inbound(conn, cfg, scratch);
    }
}

/// A read on a descriptor we have no state for. When it starts with a
/// request line on a TCP socket of a watched service, create the state.
#[inline(always)]
fn new_connection(
    cfg: &AgentConfig,
    key: u64,
    fd: u32,
    buf: u64,
    len: u64,
) -> Option<*mut ConnState> {
    let mut head = [0u8; 8];
    if len < 8 || !read_user(buf, &mut head) {
        // A request line is longer than 8 bytes; shorter first reads are
        // rare (byte-dribbling clients) and resync on the next request.
        return None;
    }
    let is_request = looks_like_request(&head, 8);
    // A read that starts with a status line is the client side of an HTTP
    // connection: remember to ignore it (until close/accept/connect), so
    // its later syscalls cost one lookup instead of a stash and a peek.
    if !is_request && &head[..7] != b"HTTP/1." {
        return None;
    }
    let scratch = SCRATCH.get_ptr_mut(0)?;
    let conn = unsafe { &mut (*scratch).conn };
    conn.service_id = 0;
    conn.local_port = 0;
    conn.role = 0;
    conn._pad = 0;
    conn.peer_port = 0;
    conn._pad2 = [0; 6];
    conn.peer_addr = [0; 16];
    conn.requests = RequestStream::new();
    if is_request && let Some(sock) = socket::tcp_socket(&cfg.offsets, fd) {
        if let Some(id) = unsafe { SERVICE_PORTS.get(&sock.local_port) } {
            conn.service_id = *id;
            conn.role = role::SERVER;
        } else if cfg.flags & config_flags::AUTO_SERVICES != 0 {
            conn.service_id = SERVICE_AUTO;
            conn.role = role::SERVER;
        }
        conn.local_port = sock.local_port;
        if conn.role == role::SERVER {
            // Remember the port serves HTTP, for resets and refusals.
            let _ = SERVER_PORTS.insert(&sock.local_port, &conn.service_id, BPF_NOEXIST);
        }
    }
    // Ignored connections are stored too (role 0) so later reads skip them.
    if CONNS.insert(&key, conn, 0).is_err() {
        bump(counter::CONNS_FULL);
        return None;
    }
    CONNS.get_ptr_mut(&key)
}

// --------------------------------------------------------------- writes

/// Attached to write and sendto (fd, buffer, length are their first args).
#[tracepoint]
pub fn sys_enter_write(ctx: TracePointContext) -> u32 {
    on_write(arg_u64(&ctx, 0) as u32, arg_u64(&ctx, 1), arg_u64(&ctx, 2));
    0
}

/// `writev(fd, iov, iovcnt)`: the status line starts the first iovec.
#[tracepoint]
pub fn sys_enter_writev(ctx: TracePointContext) -> u32 {
    if arg_u64(&ctx, 2) == 0 {
        return 0;
    }
    let mut first = [0u64; 2]; // struct iovec { base, len }
    if read_user(arg_u64(&ctx, 1), &mut first) {
        on_write(arg_u64(&ctx, 0) as u32, first[0], first[1]);
    }
    0
}

/// `sendmsg(fd, msg, flags)`: the status line starts the first iovec.
#[tracepoint]
pub fn sys_enter_sendmsg(ctx: TracePointContext) -> u32 {
    let mut hdr = [0u64; 4]; // user_msghdr: name, namelen, iov, iovlen
    if !read_user(arg_u64(&ctx, 1), &mut hdr) || hdr[3] == 0 {
        return 0;
    }
    let mut first = [0u64; 2];
    if read_user(hdr[2], &mut first) {
        on_write(arg_u64(&ctx, 0) as u32, first[0], first[1]);
    }
    0
}

#[inline(always)]
fn on_write(fd: u32, buf: u64, len: u64) {
    if len == 0 {
        return;
    }
    let id = bpf_get_current_pid_tgid();
    let key = conn_key((id >> 32) as u32, fd);
    let Some(conn) = CONNS.get_ptr_mut(&key) else {
        return;
    };
    let conn = unsafe { &mut *conn };
    if conn.role != role::SERVER {
        return;
    }
    let mut head = [0u8; 16];
    let n = if len < 16 { len } else { 16 };
    if unsafe {
        bpf_probe_read_user(
            head.as_mut_ptr() as *mut c_void,
            n as u32,
            buf as *const c_void,
        )
    } != 0
    {
        return;
    }
    let Some(status) = parse_status_line(&head, n as usize) else {
        return;
    };
    if !conn.requests.has_pending() {
        count::conn_event(
            conn.service_id,
            conn.local_port,
            conn_event::UNMATCHED_RESPONSE,
        );
        return;
    }
    // 1xx (100 Continue, 103 Early Hints) are interim: the final status
    // follows. 101 Switching Protocols is final for this request.
    if status < 200 && status != 101 {
        return;
    }
    let Some(cfg) = config() else { return };
    let req = *conn.requests.oldest();
    count::count_request(conn, &req, cfg, status);
    conn.requests.pop();
    if status == 101 {
        // The connection speaks another protocol from now on.
        conn.role = 0;
    }
}

// -------------------------------------------------------------- accept

/// `accept`/`accept4` return a new socket: whatever state an earlier socket
/// with the same descriptor number left behind is stale (descriptors are
/// also closed without `close`: process exit, `close_range`, `dup2`).
#[inline(always)]
fn forget_fd(ctx: &TracePointContext) {
    let fd = exit_ret(ctx);
    if fd < 0 {
        return;
    }
    let id = bpf_get_current_pid_tgid();
    let _ = CONNS.remove(&conn_key((id >> 32) as u32, fd as u32));
}

/// Attached to the exits of accept and accept4.
#[tracepoint]
pub fn sys_exit_accept4(ctx: TracePointContext) -> u32 {
    forget_fd(&ctx);
    0
}

/// `connect(fd, ...)` makes `fd` a new connection too.
#[tracepoint]
pub fn sys_enter_connect(ctx: TracePointContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    let _ = CONNS.remove(&conn_key((id >> 32) as u32, arg_u64(&ctx, 0) as u32));
    0
}

// ---------------------------------------------------------------- close

#[tracepoint]
pub fn sys_enter_close(ctx: TracePointContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    let key = conn_key((id >> 32) as u32, arg_u64(&ctx, 0) as u32);
    if let Some(conn) = CONNS.get_ptr_mut(&key) {
        let conn = unsafe { &mut *conn };
        if conn.role == role::SERVER
            && let Some(cfg) = config()
        {
            count::count_abandoned(conn, cfg);
        }
        let _ = CONNS.remove(&key);
    }
    0
}

// ------------------------------------------------------------ TCP resets

/// `tcp:tcp_send_reset`: this host sends a RST. From a service's port with
/// a socket: the server reset a connection. With no socket: a SYN to a
/// port nobody listens on was refused.
#[tracepoint]
pub fn tcp_send_reset(ctx: TracePointContext) -> u32 {
    // Fields: skbaddr @8, skaddr @16, state @24, reason @28, saddr[28] @32
    // (a sockaddr_in/in6: family, then the local port in network order).
    let skaddr: u64 = unsafe { ctx.read_at(16).unwrap_or(0) };
    let port_be: u16 = unsafe { ctx.read_at(34).unwrap_or(0) };
    let port = u16::from_be(port_be);
    let service = match unsafe { SERVER_PORTS.get(&port) } {
        Some(s) => *s,
        None => match unsafe { SERVICE_PORTS.get(&port) } {
            Some(s) => *s,
            None => return 0,
        },
    };
    let kind = if skaddr == 0 {
        conn_event::FAIL_REFUSED
    } else {
        conn_event::FAIL_RESET
    };
    count::conn_event(service, port, kind);
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable in a verified program; the verifier rejects any path here.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

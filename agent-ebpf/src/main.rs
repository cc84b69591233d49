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
//!   method, status) with its latency bucket;
//! - `sendfile` enter: body bytes, skipped by a server's framing when it
//!   follows a pipelined response's body across writes (`frame.rs`);
//! - `close` enter: requests still queued are counted with status 000;
//! - `accept`/`accept4` exit, `connect` enter: a new socket; stale state for
//!   its descriptor number (left by an fd closed without `close`) is dropped;
//! - `sock:inet_sock_set_state`: a watched socket ends without a `close`
//!   we saw (process killed, peer reset): pending requests count as 000;
//! - `tcp:tcp_send_reset`: resets and refused connections on a service port.
//!
//! A connection is recognised the first time a read returns a request line,
//! so connections opened before the agent started (keep-alive pools) are
//! counted from their next request, and the accept path costs nothing.
//! Reads on anything else cost a map lookup and an 8-byte peek; syscalls on
//! a socket already judged not ours, an array load (`IGNORED`).
//!
//! Modules: `maps` (every map), `socket` (fd -> TCP socket), `parse`
//! (scanning reads), `count` (series and events), `spill` (pipelines
//! deeper than a connection's own queue).
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
mod frame;
mod maps;
mod mem;
mod parse;
mod sock;
mod socket;
mod spill;

use core::{ffi::c_void, mem::MaybeUninit};

use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid,
        generated::{
            bpf_get_current_cgroup_id, bpf_get_current_task_btf, bpf_probe_read_kernel,
            bpf_probe_read_user, bpf_task_pt_regs,
        },
    },
    macros::tracepoint,
    maps::ProgramArray,
    programs::TracePointContext,
};
use burnwatch_common::{
    http::{
        RequestStream, looks_like_request, parse_status_line,
        response::{ResponseStream, may_start_status_line},
    },
    maps::{
        AgentConfig, ConnState, MatchKey, ReadArgs, SERVICE_AUTO, SockOwner, config_flags,
        conn_event, conn_key, counter, ignored, match_kind, read_kind, role,
    },
    offsets::{MSG_PEEK, MSG_TRUNC, X86_64_SYSCALL_ARG_REGS},
};

use maps::{
    CONNS, IOV_MAX, MATCHES, MAX_IOV, SCRATCH, SERVER_PORTS, SERVICE_PORTS, SOCKS, Scratch,
    TAIL_CALLS, TAIL_FRAME_RESPONSES, TAIL_PARSE_WRITE, bump, cache_ignored, cached_ignored,
    config, uncache_ignored,
};

const BPF_NOEXIST: u64 = 1;

/// A field of the tracepoint's record, loaded directly: the verifier allows
/// constant, aligned loads from a tracepoint's context. (`read_at` goes
/// through `bpf_probe_read`, a helper call and a fault-checked copy: four to
/// ten of them per request, a few hundred ns in all.)
#[inline(always)]
fn tp_field<T: Copy>(ctx: &TracePointContext, offset: usize) -> T {
    unsafe { core::ptr::read((ctx.as_ptr() as *const u8).add(offset) as *const T) }
}

#[inline(always)]
fn arg_u64(ctx: &TracePointContext, n: usize) -> u64 {
    // Syscall tracepoints: 8 bytes of common fields + nr, then one u64 per arg.
    tp_field::<u64>(ctx, 16 + 8 * n)
}

#[inline(always)]
fn exit_ret(ctx: &TracePointContext) -> i64 {
    tp_field::<i64>(ctx, 16)
}

#[inline(always)]
fn read_user<T: Copy>(addr: u64, out: &mut T) -> bool {
    // An initialised `T` is a valid `MaybeUninit<T>`.
    read_user_into(addr, unsafe {
        &mut *(out as *mut T as *mut MaybeUninit<T>)
    })
    .is_some()
}

/// Reads a `T` from user memory into uninitialised stack and returns it,
/// `None` if the read faulted. The helper writes every byte (zeros on
/// failure), so nothing is zeroed first: LLVM turns zeroing into `memset`
/// calls (see `mem.rs`).
#[inline(always)]
fn read_user_into<T: Copy>(addr: u64, out: &mut MaybeUninit<T>) -> Option<&T> {
    let ok = unsafe {
        bpf_probe_read_user(
            out.as_mut_ptr() as *mut c_void,
            core::mem::size_of::<T>() as u32,
            addr as *const c_void,
        ) == 0
    };
    ok.then(|| unsafe { &*out.as_ptr() })
}

/// The first bytes (`HEAD` at most) of the `len` at user address `buf`, in
/// a zeroed [`zeroed_head`] buffer, and how many there are; `None` when
/// there are none or they cannot be read.
#[inline(always)]
fn read_head(
    buf: u64,
    len: u64,
    words: &mut MaybeUninit<[u64; 2 * HEAD / 8]>,
) -> Option<(&mut [u8; 2 * HEAD], usize)> {
    let head = zeroed_head(words);
    let n = if len < HEAD as u64 { len } else { HEAD as u64 };
    if n == 0
        || unsafe {
            bpf_probe_read_user(
                head.as_mut_ptr() as *mut c_void,
                // n <= HEAD < 2 * HEAD, the buffer's size.
                mem::bounded(n, 2 * HEAD as u64 - 1),
                buf as *const c_void,
            )
        } != 0
    {
        return None;
    }
    Some((head, n as usize))
}

/// A zeroed `2 * HEAD`-byte buffer for the start of a response, zeroed
/// with 8-byte stores in u64-aligned stack (a `[0u8; 32]` becomes a
/// `memset` call of byte stores). Twice HEAD: the verifier sees that a
/// read of `take <= HEAD` bytes at `n < HEAD` fits.
#[inline(always)]
fn zeroed_head(words: &mut MaybeUninit<[u64; 2 * HEAD / 8]>) -> &mut [u8; 2 * HEAD] {
    mem::zero_words(words);
    unsafe { &mut *(words.as_mut_ptr() as *mut [u8; 2 * HEAD]) }
}

// ---------------------------------------------------------------- reads

/// Attached to the exits of read, recvfrom, readv and recvmsg: the exit
/// layout is the same (`ret`), and one program is verified once, not four
/// times (verifying the parser is most of the agent's start-up time).
///
/// The arguments (fd, buffer) come from the thread's saved user registers,
/// not from an enter probe: one program per read instead of two and no
/// map of syscalls in flight, and a read that was already blocked when the
/// agent started is seen when it returns.
#[tracepoint]
pub fn sys_exit_read(ctx: TracePointContext) -> u32 {
    finish_read(&ctx);
    0
}

/// The arguments of the current thread's read syscall, at its exit. `None`
/// for a read that cannot be followed, and for a peek (`MSG_PEEK`): its
/// bytes are not consumed, they come again in the next read, and parsing
/// them twice would make two requests of one (servers that sniff a
/// connection's first bytes, as Envoy's inspectors do, peek).
#[inline(always)]
fn read_args(ctx: &TracePointContext, cfg: &AgentConfig) -> Option<ReadArgs> {
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as u64;
    let off = &cfg.offsets;
    let (fd, buf, vlen, arg3);
    // The x86_64 layout (the agent's tests check this kernel's BTF gives it).
    if off.regs_arg == X86_64_SYSCALL_ARG_REGS {
        // `regs` is a BTF pointer: the verifier turns loads at constant
        // offsets into fault-safe direct loads, no helper call, no copy.
        let p = regs as *const u64;
        unsafe {
            fd = core::ptr::read(p.add(X86_64_SYSCALL_ARG_REGS[0] as usize / 8));
            buf = core::ptr::read(p.add(X86_64_SYSCALL_ARG_REGS[1] as usize / 8));
            vlen = core::ptr::read(p.add(X86_64_SYSCALL_ARG_REGS[2] as usize / 8));
            arg3 = core::ptr::read(p.add(X86_64_SYSCALL_ARG_REGS[3] as usize / 8));
        }
    } else {
        // Other layouts (arm64: orig_x0, regs[1], regs[2], regs[3]).
        let mut args = [0u64; 4];
        for (dst, at) in args.iter_mut().zip(off.regs_arg) {
            if unsafe {
                bpf_probe_read_kernel(
                    dst as *mut u64 as *mut c_void,
                    8,
                    (regs + at as u64) as *const c_void,
                )
            } != 0
            {
                return None;
            }
        }
        (fd, buf, vlen, arg3) = (args[0], args[1], args[2], args[3]);
    }
    // Syscall tracepoints: 8 bytes of common fields, then the number (int).
    let nr = tp_field::<i32>(ctx, 8) as i64;
    let (kind, flags) = if nr == off.nr_readv as i64 {
        (read_kind::IOVEC, 0)
    } else if nr == off.nr_recvmsg as i64 {
        (read_kind::MSGHDR, vlen)
    } else if nr == off.nr_recvfrom as i64 {
        (read_kind::BUF, arg3)
    } else {
        (read_kind::BUF, 0)
    };
    if flags & MSG_PEEK != 0 {
        return None;
    }
    let kind = if flags & MSG_TRUNC != 0 {
        read_kind::DISCARD
    } else {
        kind
    };
    Some(ReadArgs {
        fd: fd as u32,
        kind,
        buf,
        vlen,
    })
}

/// Fills `scratch.iov_*` with the buffers of a read that returned `ret`
/// bytes (or a write of `ret` bytes; `u64::MAX`: as many as asked): the
/// first `MAX_IOV` iovecs, each length cut so they add up to `ret`; the
/// scan reads the others as it reaches them (`parse::cursor`).
#[inline(always)]
fn fill_iovecs(scratch: &mut Scratch, args: &ReadArgs, ret: u64) -> bool {
    let (iov_addr, vlen) = match args.kind {
        read_kind::BUF => {
            scratch.iov_base[0] = args.buf;
            scratch.iov_len[0] = ret;
            scratch.iov_cnt = 1;
            scratch.iov_cached = 1;
            scratch.iov_addr = 0;
            scratch.left_init = 0;
            scratch.unseen = 0;
            return true;
        }
        read_kind::IOVEC => (args.buf, args.vlen),
        _ => {
            // struct user_msghdr { name, namelen, iov @16, iovlen @24, ... }
            let mut hdr = MaybeUninit::<[u64; 4]>::uninit();
            let Some(hdr) = read_user_into(args.buf, &mut hdr) else {
                return false;
            };
            (hdr[2], hdr[3])
        }
    };
    let cnt = if vlen < IOV_MAX { vlen } else { IOV_MAX };
    if cnt == 0 {
        return false;
    }
    let mut iov_buf = MaybeUninit::uninit();
    let Some((iov, cached)) = read_iovecs(iov_addr, &mut iov_buf) else {
        return false;
    };
    let mut left = ret;
    let mut i = 0;
    while i < MAX_IOV {
        let len = if (i as u64) < cnt && i < cached {
            iov[2 * i + 1]
        } else {
            0
        };
        let take = if len < left { len } else { left };
        scratch.iov_base[i] = iov[2 * i];
        scratch.iov_len[i] = take;
        left -= take;
        i += 1;
    }
    scratch.iov_cnt = cnt;
    scratch.iov_cached = cached as u64;
    scratch.iov_addr = iov_addr;
    scratch.left_init = left;
    scratch.unseen = (vlen > cnt) as u64;
    true
}

/// The first `MAX_IOV` iovecs (`struct iovec { base, len }`) of the array
/// at `iov_addr`, read whole into `buf` (not zeroed first), and how many
/// of them were read. A short array at a page end gives its first iovec
/// alone (the scan reads the others one by one as it reaches them).
#[inline(always)]
fn read_iovecs(
    iov_addr: u64,
    buf: &mut MaybeUninit<[u64; 2 * MAX_IOV]>,
) -> Option<(&[u64; 2 * MAX_IOV], usize)> {
    let ok = read_user_into(iov_addr, buf).is_some();
    let iov = unsafe { &mut *buf.as_mut_ptr() };
    if ok {
        return Some((iov, MAX_IOV));
    }
    let mut first = MaybeUninit::<[u64; 2]>::uninit();
    let first = read_user_into(iov_addr, &mut first)?;
    iov[0] = first[0];
    iov[1] = first[1];
    Some((iov, 1))
}

#[inline(always)]
fn finish_read(ctx: &TracePointContext) {
    let ret = exit_ret(ctx);
    if ret <= 0 {
        return;
    }
    let Some(cfg) = config() else { return };
    let Some(args) = read_args(ctx, cfg) else {
        return;
    };
    let id = bpf_get_current_pid_tgid();
    let key = conn_key((id >> 32) as u32, args.fd);
    if cached_ignored(key, cfg.match_generation).is_some() {
        return; // known not to be ours
    }
    let mut known = CONNS.get_ptr_mut(&key);
    if let Some(c) = known
        && unsafe { (*c).role } == 0
    {
        if unsafe { (*c).ignored } == ignored::ENDED {
            // The server ended the connection (a `Connection: close`
            // response, or it shut down sending): a lingering close reads
            // what the client sent, and never takes it.
            let c = unsafe { &*c };
            count::conn_event(c.service_id, c.local_port, conn_event::AFTER_CLOSE);
            return;
        }
        if unsafe { (*c).generation } == cfg.match_generation {
            // Known not to be ours: the next read of it need not look here.
            cache_ignored(key, unsafe { &*c });
            return;
        }
        // Decided before userspace knew of new matching processes: look
        // again.
        forget_conn(key, unsafe { &*c });
        known = None;
    }
    if args.kind == read_kind::DISCARD {
        // Nothing to look at, and nothing to learn a new connection from.
        if let Some(c) = known {
            discard_read(unsafe { &mut *c }, ret as u64);
        }
        return;
    }
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    if !fill_iovecs(unsafe { &mut *scratch }, &args, ret as u64) {
        return;
    }
    let conn = match known {
        Some(c) => c,
        None => {
            let (buf, len) = unsafe { ((*scratch).iov_base[0], (*scratch).iov_len[0]) };
            match new_connection(cfg, key, args.fd, buf, len) {
                Some(c) => c,
                None => return,
            }
        }
    };
    read_known(ctx, &TAIL_CALLS, unsafe { &mut *conn }, key, cfg, scratch);
}

/// A read on a watched connection (its buffers in `scratch`): a server's
/// requests go to the parser, a client's responses to `client_read`.
#[inline(always)]
fn read_known<C: EbpfContext>(
    ctx: &C,
    tails: &ProgramArray,
    conn: &mut ConnState,
    key: u64,
    cfg: &AgentConfig,
    scratch: *mut Scratch,
) {
    if conn.role == role::SERVER {
        parse::parse_inbound(conn, key, cfg, scratch);
    } else if conn.role == role::CLIENT {
        client_read(ctx, tails, conn, key, scratch);
    }
}

/// A read with `MSG_TRUNC` consumed `n` bytes the program cannot see. A
/// server skipping a request body it does not want (or a client a response
/// body) reads this way: bytes within the body are skipped by count, as a
/// scan skips them. Past the body the stream's place is lost: a server's
/// waits for the next read that starts a request line (requests already
/// queued keep waiting for their responses), a client's for the next
/// status line.
#[inline(always)]
fn discard_read(conn: &mut ConnState, n: u64) {
    if conn.role == role::SERVER {
        let in_headers = conn.requests.in_headers();
        if conn.requests.discard(n) {
            count::conn_event(
                conn.service_id,
                conn.local_port,
                conn_event::DISCARDED_UNSEEN,
            );
            if in_headers {
                count::conn_event(
                    conn.service_id,
                    conn.local_port,
                    conn_event::TENANT_NOT_FOUND,
                );
            }
        }
    } else if conn.role == role::CLIENT {
        conn.responses.discard(n);
    }
}

/// A watched client reads responses. The usual exchange, one request
/// awaiting its response and the stream between responses: the status line
/// at the read's start answers it, and the rest of the response is not
/// followed (the client reads all of it before its next request). Anything
/// else is framed, with the framing state kept in the connection from read
/// to read (a read's length is exact, unlike a write's at its entry):
/// several requests out, a response under way, a read shorter than a status
/// line that may start one (a client reading a line byte by byte), an
/// interim 1xx (its final response may follow in the same read).
#[inline(always)]
fn client_read<C: EbpfContext>(
    ctx: &C,
    tails: &ProgramArray,
    conn: &mut ConnState,
    key: u64,
    scratch: *mut Scratch,
) {
    if spill::has_several_pending(conn) || !conn.responses.between_responses() {
        frame_read(ctx, tails, key, scratch);
    }
    if conn.responses.is_done() && !spill::has_pending(conn) {
        // Nothing to answer, and where the stream stands is not known (the
        // rest of a response taken at a read's start): a status line here
        // is as likely body bytes as a response nobody asked for, so it is
        // not counted as `response_without_request`.
        return;
    }
    let (buf, len) = unsafe { ((*scratch).iov_base[0], (*scratch).iov_len[0]) };
    let mut words = MaybeUninit::uninit();
    let Some((head, n)) = read_head(buf, len, &mut words) else {
        return;
    };
    let head16 = unsafe { &*(head.as_ptr() as *const [u8; HEAD]) };
    match parse_status_line(head16, n) {
        Some(status) if status < 200 && status != 101 => frame_read(ctx, tails, key, scratch),
        Some(status) => {
            answer_status(conn, key, status);
            conn.responses.lose_place();
        }
        None if n < 12 && may_start_status_line(head16, n) => frame_read(ctx, tails, key, scratch),
        None => {}
    }
}

/// Hands a client's read (its buffers in `scratch`) to `frame_responses`.
/// Returns only if the tail call failed.
#[inline(always)]
fn frame_read<C: EbpfContext>(ctx: &C, tails: &ProgramArray, key: u64, scratch: *mut Scratch) {
    unsafe {
        (*scratch).conn_key = key;
        tails.tail_call(ctx, TAIL_FRAME_RESPONSES);
    }
}

/// The service (or client) that a connection of the current process on
/// `port` belongs to by its process attributes (tgid, cgroup, comm), with
/// that port or any.
#[inline(always)]
fn match_process(cfg: &AgentConfig, role: u8, port: u16) -> Option<u32> {
    let flags = cfg.flags;
    let mut key = MatchKey {
        kind: 0,
        role,
        port,
        _pad: 0,
        attr: [0; 16],
    };
    if flags & config_flags::MATCH_TGID != 0 {
        let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
        key.kind = match_kind::TGID;
        key.attr[..4].copy_from_slice(&tgid.to_le_bytes());
        if let Some(id) = lookup_any_port(&mut key) {
            return Some(id);
        }
    }
    if flags & config_flags::MATCH_CGROUP != 0 {
        let cg = unsafe { bpf_get_current_cgroup_id() };
        key.kind = match_kind::CGROUP;
        key.attr = [0; 16];
        key.attr[..8].copy_from_slice(&cg.to_le_bytes());
        if let Some(id) = lookup_any_port(&mut key) {
            return Some(id);
        }
    }
    if flags & config_flags::MATCH_COMM != 0 {
        key.kind = match_kind::COMM;
        key.attr = bpf_get_current_comm().unwrap_or([0; 16]);
        if let Some(id) = lookup_any_port(&mut key) {
            return Some(id);
        }
    }
    if role == role::CLIENT && flags & config_flags::MATCH_PORT != 0 {
        key.kind = match_kind::PORT;
        key.attr = [0; 16];
        key.port = port;
        if let Some(id) = unsafe { MATCHES.get(&key) } {
            return Some(*id);
        }
    }
    None
}

/// Looks `key` up with its port, then with port 0 (any). Leaves the port
/// as it found it.
#[inline(always)]
fn lookup_any_port(key: &mut MatchKey) -> Option<u32> {
    if let Some(id) = unsafe { MATCHES.get(&*key) } {
        return Some(*id);
    }
    let port = key.port;
    key.port = 0;
    let found = unsafe { MATCHES.get(&*key) }.copied();
    key.port = port;
    found
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
    if !read_user(buf, &mut head) {
        return None;
    }
    // A first read shorter than 8 bytes (a client dribbling its request)
    // is judged on the bytes it has: a method's first letters will do.
    let n = if len < 8 { len as usize } else { 8 };
    let is_request = looks_like_request(&head, n);
    // A read that starts with a status line is the client side of an HTTP
    // connection: remember to ignore it (until close/accept/connect), so
    // its later reads cost one lookup instead of a peek.
    if !is_request && (n < 7 || &head[..7] != b"HTTP/1.") {
        return None;
    }
    let conn = blank_conn(cfg)?;
    let sock = if is_request {
        socket::tcp_socket(&cfg.offsets, fd)
    } else {
        None
    };
    judge_first_read(cfg, conn, is_request, sock);
    store_conn(key, conn)
}

/// A connection's first read (one that starts HTTP) decides what it is:
/// a request on a TCP socket (`sock`) of a watched service makes `conn` a
/// server connection; a status line, the client side of an HTTP connection
/// (ignored until a watched client writes a request on it); anything else
/// is not ours.
#[inline(always)]
fn judge_first_read(
    cfg: &AgentConfig,
    conn: &mut ConnState,
    is_request: bool,
    sock: Option<socket::TcpSocket>,
) {
    conn.ignored = if is_request {
        ignored::NOT_OURS
    } else {
        ignored::HTTP_CLIENT
    };
    let Some(sock) = sock else { return };
    if let Some(id) = unsafe { SERVICE_PORTS.get(&sock.local_port) } {
        conn.service_id = *id;
        conn.role = role::SERVER;
    } else if let Some(id) = match_process(cfg, role::SERVER, sock.local_port) {
        conn.service_id = id;
        conn.role = role::SERVER;
    } else if cfg.flags & config_flags::AUTO_SERVICES != 0 {
        conn.service_id = SERVICE_AUTO;
        conn.role = role::SERVER;
    }
    conn.local_port = sock.local_port;
    if conn.role == role::SERVER {
        conn.ignored = ignored::NO;
        conn.sk = sock.addr();
        // Remember the port serves HTTP, for resets and refusals.
        let _ = SERVER_PORTS.insert(&sock.local_port, &conn.service_id, BPF_NOEXIST);
    }
}

/// The per-CPU scratch connection, reset: role 0 (ignored) under the
/// current match generation, until the caller decides otherwise.
#[inline(always)]
fn blank_conn(cfg: &AgentConfig) -> Option<&'static mut ConnState> {
    let scratch = SCRATCH.get_ptr_mut(0)?;
    let conn = unsafe { &mut (*scratch).conn };
    reset_conn(conn, cfg);
    Some(conn)
}

/// `conn` reset to a blank connection: role 0 (ignored) under the current
/// match generation.
#[inline(always)]
fn reset_conn(conn: &mut ConnState, cfg: &AgentConfig) {
    conn.service_id = 0;
    conn.local_port = 0;
    conn.role = 0;
    conn.ignored = ignored::NOT_OURS;
    conn.peer_port = 0;
    conn.spilled = 0;
    conn.spill_head = 0;
    conn._pad3 = 0;
    conn.generation = cfg.match_generation;
    conn.peer_addr = [0; 16];
    conn.sk = 0;
    // Read once per connection, and only when pods are attributed.
    conn.cgroup_id = if cfg.flags & config_flags::KEY_BY_CGROUP != 0 {
        unsafe { bpf_get_current_cgroup_id() }
    } else {
        0
    };
    conn.requests = RequestStream::new();
    conn.responses = ResponseStream::new();
}

/// Stores `conn` as the state of `key` (ignored connections too, so later
/// syscalls skip them) and returns the stored copy. A watched connection
/// (`sk` set) is also registered in `SOCKS`, so `inet_sock_set_state` finds
/// it by its socket. If `SOCKS` still names this very connection, its
/// state was evicted from `CONNS` (nothing else removes one without
/// removing the other, see [`forget_conn`]): counted, once, here.
#[inline(always)]
fn store_conn(key: u64, conn: &ConnState) -> Option<*mut ConnState> {
    if conn.sk != 0
        && let Some(owner) = unsafe { SOCKS.get(&conn.sk) }
        && owner.conn_key == key
    {
        count_evicted(owner);
    }
    if CONNS.insert(&key, conn, 0).is_err() {
        uncache_ignored(key);
        bump(counter::CONNS_FULL);
        return None;
    }
    if conn.role == 0 {
        cache_ignored(key, conn);
    } else {
        uncache_ignored(key);
    }
    if conn.sk != 0 {
        let owner = SockOwner {
            conn_key: key,
            service_id: conn.service_id,
            local_port: conn.local_port,
            _pad: 0,
        };
        let _ = SOCKS.insert(&conn.sk, &owner, 0);
    }
    CONNS.get_ptr_mut(&key)
}

/// Removes the state of `key` (which is `conn`) on purpose, and its
/// socket's `SOCKS` entry with it, so a `SOCKS` entry without its state
/// always means an eviction.
#[inline(always)]
fn forget_conn(key: u64, conn: &ConnState) {
    let sk = conn.sk;
    uncache_ignored(key);
    let _ = CONNS.remove(&key);
    if sk != 0 {
        let _ = SOCKS.remove(&sk);
    }
}

/// [`forget_conn`] for whatever state `key` has, if any.
#[inline(always)]
fn forget_key(key: u64) {
    // A verdict may outlive its state (`CONNS` evicts it): dropped either way.
    uncache_ignored(key);
    if let Some(conn) = CONNS.get_ptr_mut(&key) {
        forget_conn(key, unsafe { &*conn });
    }
}

/// A watched socket's state is gone from `CONNS` while its `SOCKS` entry,
/// `owner`, remains: the map evicted it. +1 `state_evicted` on the service.
#[inline(always)]
fn count_evicted(owner: &SockOwner) {
    count::conn_event(
        owner.service_id,
        owner.local_port,
        conn_event::STATE_EVICTED,
    );
}

// --------------------------------------------------------------- writes

/// Attached to write and sendto (fd, buffer, length are their first args).
#[tracepoint]
pub fn sys_enter_write(ctx: TracePointContext) -> u32 {
    let fd = arg_u64(&ctx, 0) as u32;
    let (buf, len) = (arg_u64(&ctx, 1), arg_u64(&ctx, 2));
    let w = WriteArgs {
        kind: read_kind::BUF,
        buf,
        vlen: len,
        iov: 0,
        cnt: 0,
        total: len,
    };
    match write_conn(fd, w.start(), len) {
        Some(Writer::Server(key, conn)) => server_write(&ctx, &TAIL_CALLS, key, conn, &w),
        Some(Writer::Client(key)) => tail_scan(&ctx, &TAIL_CALLS, key, &w, TAIL_PARSE_WRITE),
        None => {}
    }
    0
}

/// `writev(fd, iov, iovcnt)`: the status line starts the first iovec (and
/// may go on in the next ones).
#[tracepoint]
pub fn sys_enter_writev(ctx: TracePointContext) -> u32 {
    let (iov, cnt) = (arg_u64(&ctx, 1), arg_u64(&ctx, 2));
    // Taken whole: the length accepted is known only at the exit.
    let w = WriteArgs {
        kind: read_kind::IOVEC,
        buf: iov,
        vlen: cnt,
        iov,
        cnt,
        total: u64::MAX,
    };
    match write_conn(arg_u64(&ctx, 0) as u32, w.start(), 8) {
        Some(Writer::Server(key, conn)) => server_write(&ctx, &TAIL_CALLS, key, conn, &w),
        Some(Writer::Client(key)) => tail_scan(&ctx, &TAIL_CALLS, key, &w, TAIL_PARSE_WRITE),
        None => {}
    }
    0
}

/// `sendmsg(fd, msg, flags)`: the status line starts the first iovec.
#[tracepoint]
pub fn sys_enter_sendmsg(ctx: TracePointContext) -> u32 {
    let msg = arg_u64(&ctx, 1);
    // user_msghdr: name, namelen, iov, iovlen (read whole by the helper,
    // so not zeroed first: this runs on every sendmsg of the node).
    let mut hdr = MaybeUninit::<[u64; 4]>::uninit();
    let Some(hdr) = read_user_into(msg, &mut hdr) else {
        return 0;
    };
    let w = WriteArgs {
        kind: read_kind::MSGHDR,
        buf: msg,
        vlen: 0,
        iov: hdr[2],
        cnt: hdr[3],
        total: u64::MAX,
    };
    match write_conn(arg_u64(&ctx, 0) as u32, w.start(), 8) {
        Some(Writer::Server(key, conn)) => server_write(&ctx, &TAIL_CALLS, key, conn, &w),
        Some(Writer::Client(key)) => tail_scan(&ctx, &TAIL_CALLS, key, &w, TAIL_PARSE_WRITE),
        None => {}
    }
    0
}

/// The buffers of a write: as [`ReadArgs`] names them (`kind`, `buf`,
/// `vlen`), the iovec array when there is one (`iov`, `cnt`: the msghdr's,
/// read already), and how many bytes are written (`u64::MAX`: all of them,
/// as asked).
pub struct WriteArgs {
    pub kind: u32,
    pub buf: u64,
    pub vlen: u64,
    pub iov: u64,
    pub cnt: u64,
    pub total: u64,
}

impl WriteArgs {
    /// Where the write's bytes start: its buffer, or its iovec array.
    #[inline(always)]
    pub fn start(&self) -> WriteStart {
        if self.kind == read_kind::BUF {
            WriteStart::Buf(self.buf)
        } else {
            WriteStart::Iovecs(self.iov, self.cnt)
        }
    }
}

/// A watched server writes: frame the write when it may hold several
/// responses (or goes on with a status line or body the last one ended
/// inside of); otherwise its start may be a status line answering the
/// oldest request (framed when it is an interim one, or too short to tell).
#[inline(always)]
fn server_write<C: EbpfContext>(
    ctx: &C,
    tails: &ProgramArray,
    key: u64,
    conn: &mut ConnState,
    w: &WriteArgs,
) {
    if needs_framing(conn) {
        tail_scan(ctx, tails, key, w, TAIL_FRAME_RESPONSES);
    }
    let frame = if w.kind == read_kind::BUF {
        let mut words = MaybeUninit::uninit();
        let len = if w.vlen < w.total { w.vlen } else { w.total };
        match read_head(w.buf, len, &mut words) {
            Some((head, n)) => on_response_head(conn, key, head, n),
            None => false,
        }
    } else {
        iov_response_head(conn, key, w.iov, w.cnt)
    };
    if frame {
        tail_scan(ctx, tails, key, w, TAIL_FRAME_RESPONSES);
    }
}

/// `sendfile(out_fd, in_fd, offset, count)`: body bytes of a response whose
/// head was written before. Only when a server's framing is inside a
/// Content-Length body (see `frame.rs`) do they matter: they are skipped
/// there, `count` of them (the length asked: a lower bound, as for writes).
#[tracepoint]
pub fn sys_enter_sendfile64(ctx: TracePointContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    let key = conn_key((id >> 32) as u32, arg_u64(&ctx, 0) as u32);
    if let Some(conn) = CONNS.get_ptr_mut(&key) {
        let conn = unsafe { &mut *conn };
        if conn.role == role::SERVER && conn.responses.in_length_body() {
            conn.responses.skip(arg_u64(&ctx, 3));
        }
    }
    0
}

/// Where the bytes of a write start: one buffer, or the first iovec of an
/// array (read only when needed: most writes are on sockets already known).
#[derive(Clone, Copy)]
pub enum WriteStart {
    Buf(u64),
    Iovecs(u64, u64),
}

/// Who writes on a descriptor: a watched server (its responses; the
/// connection key and state), or a watched client (its requests, by
/// connection key).
enum Writer {
    Server(u64, &'static mut ConnState),
    Client(u64),
}

/// The connection a write on `fd` of the current process belongs to.
/// `start` is where the bytes written start (`len` of them at least), looked
/// at only when clients are watched and the socket is new to us.
#[inline(always)]
fn write_conn(fd: u32, start: WriteStart, len: u64) -> Option<Writer> {
    let cfg = config()?;
    let id = bpf_get_current_pid_tgid();
    let key = conn_key((id >> 32) as u32, fd);
    let clients = cfg.flags & config_flags::CLIENTS != 0;
    // Ignored, unless it may still become a watched client's connection
    // (see `new_client`).
    if let Some(http_client) = cached_ignored(key, cfg.match_generation)
        && !(clients && http_client)
    {
        return None;
    }
    if let Some(conn) = CONNS.get_ptr_mut(&key) {
        let conn = unsafe { &mut *conn };
        if conn.role == role::SERVER {
            return Some(Writer::Server(key, conn));
        }
        if conn.role == role::CLIENT {
            return Some(Writer::Client(key));
        }
        if conn.generation == cfg.match_generation {
            cache_ignored(key, conn);
        }
    }
    if !clients {
        return None;
    }
    new_client(cfg, key, fd, start, len)
}

/// A write on a socket we have no client state for (or one ignored under
/// an older match generation, or seen only reading responses). When it
/// starts a request to a watched upstream from a watched process, the
/// socket becomes a client connection.
#[inline(always)]
fn new_client(cfg: &AgentConfig, key: u64, fd: u32, start: WriteStart, len: u64) -> Option<Writer> {
    if let Some(c) = unsafe { CONNS.get(&key) }
        && c.ignored != ignored::HTTP_CLIENT
        && c.generation == cfg.match_generation
    {
        return None;
    }
    if !write_starts_request(start, len) {
        return None;
    }
    let sock = socket::tcp_socket(&cfg.offsets, fd)?;
    let conn = blank_conn(cfg)?;
    if judge_client(cfg, conn, &sock)? {
        store_conn(key, conn)?;
        Some(Writer::Client(key))
    } else {
        // Not watched: remember, so later writes cost one lookup.
        store_conn(key, conn);
        None
    }
}

/// A request written on TCP socket `sock`: `conn` (blank) becomes a
/// watched client's connection when the process and upstream port match a
/// client (`true`), or stays ignored. `None` if the peer cannot be read.
#[inline(always)]
fn judge_client(cfg: &AgentConfig, conn: &mut ConnState, sock: &socket::TcpSocket) -> Option<bool> {
    let port = sock.peer(&cfg.offsets, &mut conn.peer_addr)?;
    let id = match match_process(cfg, role::CLIENT, port) {
        Some(id) => id,
        None => return Some(false),
    };
    conn.service_id = id;
    conn.role = role::CLIENT;
    conn.ignored = ignored::NO;
    conn.local_port = port;
    conn.peer_port = port;
    conn.sk = sock.addr();
    Some(true)
}

/// Hands a write's buffers to a tail-called program (`slot` of `tails`):
/// a watched client's requests to the request parser, or a server's write
/// that may hold several responses to the framing. Returns only if the
/// tail call failed (the caller then goes on as if it had not been tried).
#[inline(always)]
fn tail_scan<C: EbpfContext>(ctx: &C, tails: &ProgramArray, key: u64, w: &WriteArgs, slot: u32) {
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    let scratch = unsafe { &mut *scratch };
    let args = ReadArgs {
        fd: 0,
        kind: w.kind,
        buf: w.buf,
        vlen: w.vlen,
    };
    // A write's buffers may be taken whole (`total` unknown at a syscall's
    // entry: the kernel may accept fewer bytes; a short write's rest comes
    // again in the next one, which the parser sees as more bytes of the
    // same stream: rare, and what it costs is a resync on the next
    // request).
    if !fill_iovecs(scratch, &args, w.total) {
        return;
    }
    scratch.conn_key = key;
    unsafe {
        tails.tail_call(ctx, slot);
    }
}

/// Tail-called by the write programs of a server connection when two or
/// more requests await a response, and by the read program on a client
/// connection's reads that need framing (`client_read`): frames the buffer
/// in `SCRATCH` and answers a request per response found (`frame.rs`).
#[tracepoint]
pub fn frame_responses(_ctx: TracePointContext) -> u32 {
    let Some(cfg) = config() else { return 0 };
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    let key = unsafe { (*scratch).conn_key };
    if let Some(conn) = CONNS.get_ptr_mut(&key) {
        frame::frame_buffer(conn, key, cfg, scratch);
    }
    0
}

/// Tail-called by the write programs: parses a watched client's write (in
/// `SCRATCH`) as requests.
#[tracepoint]
pub fn parse_client_write(_ctx: TracePointContext) -> u32 {
    let Some(cfg) = config() else { return 0 };
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    let key = unsafe { (*scratch).conn_key };
    if let Some(conn) = CONNS.get_ptr_mut(&key) {
        parse::parse_inbound(conn, key, cfg, scratch);
    }
    0
}

/// Whether a server's write must be framed rather than looked at from its
/// start: several requests await a response (it may hold several), or the
/// last write ended inside a status line (`ConnState::responses` holds it).
#[inline(always)]
fn needs_framing(conn: &ConnState) -> bool {
    spill::has_several_pending(conn) || !conn.responses.between_responses()
}

/// Bytes of a write's start that are looked at for a status line.
const HEAD: usize = 16;

/// Gathers the first `HEAD` bytes of an iovec array (a status line split
/// over iovecs, as Varnish writes it, is whole again) and looks at them.
/// True as [`on_response_head`] says.
#[inline(always)]
fn iov_response_head(conn: &mut ConnState, conn_key: u64, iov_addr: u64, cnt: u64) -> bool {
    let mut words = MaybeUninit::<[u64; 3 * HEAD / 8]>::uninit();
    let Some((head, n)) = gather_iov_head(iov_addr, cnt, &mut words) else {
        return false;
    };
    on_response_head(
        conn,
        conn_key,
        unsafe { &*(head.as_ptr() as *const [u8; 2 * HEAD]) },
        n,
    )
}

/// The first `HEAD` bytes (or fewer: all there are) of the buffers of an
/// iovec array, gathered from its first `MAX_IOV` iovecs: a status line or
/// a request line written in pieces (Varnish writes each field as its own
/// iovec) is whole again. In `words`, zeroed first.
#[inline(always)]
fn gather_iov_head(
    iov_addr: u64,
    cnt: u64,
    words: &mut MaybeUninit<[u64; 3 * HEAD / 8]>,
) -> Option<(&[u8; 3 * HEAD], usize)> {
    if cnt == 0 {
        return None;
    }
    let mut iov_buf = MaybeUninit::uninit();
    let (iov, cached) = read_iovecs(iov_addr, &mut iov_buf)?;
    // A third HEAD of room: the verifier sees an offset below HEAD plus a
    // length below 2 * HEAD (it cannot tie the length to the offset).
    mem::zero_words(words);
    let head = unsafe { &mut *(words.as_mut_ptr() as *mut [u8; 3 * HEAD]) };
    let mut n = 0usize;
    let mut i = 0;
    while i < MAX_IOV {
        if i as u64 >= cnt || i >= cached || n >= HEAD {
            break;
        }
        // `get`, not indexing: a bounds check would link a panic path the
        // verifier rejects.
        let (Some(&base), Some(&len)) = (iov.get(2 * i), iov.get(2 * i + 1)) else {
            break;
        };
        let want = (HEAD - n) as u64;
        let take = if len < want { len } else { want };
        if take > 0
            && unsafe {
                bpf_probe_read_user(
                    head.as_mut_ptr().add(n % HEAD) as *mut c_void,
                    // take <= HEAD - n.
                    mem::bounded(take, 2 * HEAD as u64 - 1),
                    base as *const c_void,
                )
            } != 0
        {
            return None;
        }
        n += take as usize;
        i += 1;
    }
    Some((head, n))
}

/// Whether the bytes a write starts with (`len` of them at least) start a
/// request: a watched client's connection is recognised by it. An iovec
/// array's first bytes are gathered over its iovecs (Varnish writes the
/// method alone in the first).
#[inline(always)]
fn write_starts_request(start: WriteStart, len: u64) -> bool {
    match start {
        WriteStart::Buf(addr) => {
            let mut head = [0u8; 8];
            len > 0
                && read_user(addr, &mut head)
                && looks_like_request(&head, if len < 8 { len as usize } else { 8 })
        }
        WriteStart::Iovecs(iov, cnt) => {
            let mut words = MaybeUninit::<[u64; 3 * HEAD / 8]>::uninit();
            match gather_iov_head(iov, cnt, &mut words) {
                Some((head, n)) => looks_like_request(
                    unsafe { &*(head.as_ptr() as *const [u8; 8]) },
                    if n < 8 { n } else { 8 },
                ),
                None => false,
            }
        }
    }
}

/// The first `n` bytes a watched server writes: a status line answers the
/// oldest request awaiting one (spilled or queued, see `spill.rs`). True when the buffer needs
/// framing instead, for a request awaiting a response: an interim response
/// (100 Continue, 103 Early Hints), whose final one may follow in the same
/// buffer (a server that queues its 100 and answers before it is flushed);
/// a buffer shorter than a status line that may start one (a server that
/// writes its status line in pieces).
#[inline(always)]
fn on_response_head(conn: &mut ConnState, conn_key: u64, buf: &[u8; 2 * HEAD], n: usize) -> bool {
    let head = unsafe { &*(buf.as_ptr() as *const [u8; HEAD]) };
    match parse_status_line(head, if n < HEAD { n } else { HEAD }) {
        Some(status) => answer_status(conn, conn_key, status),
        None => n < 12 && may_start_status_line(head, n) && spill::has_pending(conn),
    }
}

/// A response's status line, parsed: it answers the oldest request awaiting
/// one. True for an interim response to a request awaiting one (see
/// [`on_response_head`]).
#[inline(always)]
fn answer_status(conn: &mut ConnState, conn_key: u64, status: u16) -> bool {
    if !spill::has_pending(conn) {
        count::conn_event(
            conn.service_id,
            conn.local_port,
            conn_event::UNMATCHED_RESPONSE,
        );
        return false;
    }
    // 1xx are interim: the final status follows. 101 Switching Protocols
    // is final for this request.
    if status < 200 && status != 101 {
        return true;
    }
    let Some(cfg) = config() else {
        return false;
    };
    spill::answer_oldest(conn, conn_key, cfg, status);
    if status == 101 {
        // The connection speaks another protocol from now on.
        conn.role = 0;
    }
    false
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
    let key = conn_key((id >> 32) as u32, fd as u32);
    forget_key(key);
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
    let key = conn_key((id >> 32) as u32, arg_u64(&ctx, 0) as u32);
    forget_key(key);
    0
}

// ---------------------------------------------------------------- close

#[tracepoint]
pub fn sys_enter_close(ctx: TracePointContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    let key = conn_key((id >> 32) as u32, arg_u64(&ctx, 0) as u32);
    // The descriptor number may come back as another socket.
    uncache_ignored(key);
    if let Some(conn) = CONNS.get_ptr_mut(&key) {
        end_connection(key, unsafe { &mut *conn });
    }
    0
}

/// A connection ends (`close`, or its socket's end seen by
/// `inet_sock_set_state`): requests still waiting, server or client side,
/// never got an answer; count them, then forget the connection.
#[inline(always)]
fn end_connection(key: u64, conn: &mut ConnState) {
    if conn.role != 0
        && let Some(cfg) = config()
    {
        count::count_abandoned(conn, key, cfg);
    }
    forget_conn(key, conn);
}

// --------------------------------------------------------- socket state

const TCP_ESTABLISHED: i32 = 1;
const TCP_FIN_WAIT1: i32 = 4;
const TCP_CLOSE: i32 = 7;
const TCP_CLOSE_WAIT: i32 = 8;
const TCP_LAST_ACK: i32 = 9;

/// `sock:inet_sock_set_state`: a watched connection's socket can no longer
/// carry an answer, and no `close` syscall told us: its process exited or
/// was killed (the kernel closes the descriptors without a syscall), the
/// peer reset it, or this side shut down sending. Requests still pending
/// never get a response: count them with status 000 as `close` would, and
/// forget the connection.
///
/// Acts on this side closing (ESTABLISHED -> FIN_WAIT1, CLOSE_WAIT ->
/// LAST_ACK) and on CLOSE (reset, or the end of any close). The peer half-
/// closing (-> CLOSE_WAIT) is not an end: the server may still answer.
/// After a `close` syscall the connection and its `SOCKS` entry are already
/// gone (the syscall runs before the state changes), so the socket's later
/// states find nothing. An entry whose connection state is missing means
/// `CONNS` evicted that state: counted as `state_evicted`.
#[tracepoint]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    // Fields: skaddr @8, oldstate @16, newstate @20.
    let old: i32 = tp_field(&ctx, 16);
    let new: i32 = tp_field(&ctx, 20);
    let ends = new == TCP_CLOSE
        || (old == TCP_ESTABLISHED && new == TCP_FIN_WAIT1)
        || (old == TCP_CLOSE_WAIT && new == TCP_LAST_ACK);
    if !ends {
        return 0;
    }
    let sk: u64 = tp_field(&ctx, 8);
    let Some(&owner) = (unsafe { SOCKS.get(&sk) }) else {
        return 0;
    };
    let _ = SOCKS.remove(&sk);
    let key = owner.conn_key;
    let conn = match CONNS.get_ptr_mut(&key) {
        Some(conn) if unsafe { (*conn).sk } == sk => unsafe { &mut *conn },
        // The state is gone (or its descriptor holds another socket), yet
        // nothing removed it on purpose: `CONNS` evicted it.
        _ => {
            count_evicted(&owner);
            return 0;
        }
    };
    if new == TCP_CLOSE {
        end_connection(key, conn);
    } else {
        // This side shut down sending: the descriptor stays open, and what
        // it still reads (a lingering close) is `after_close`. The state
        // stays, ended (role 0, never cached in `IGNORED`), until `close`
        // or a new socket on the descriptor forgets it.
        if conn.role != 0
            && let Some(cfg) = config()
        {
            count::count_abandoned(conn, key, cfg);
        }
        conn.role = 0;
        conn.ignored = ignored::ENDED;
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
    let skaddr: u64 = tp_field(&ctx, 16);
    let port_be: u16 = tp_field(&ctx, 34);
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

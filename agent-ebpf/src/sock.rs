//! The socket path (kernels 6.4+): capture on the socket layer's own
//! tracepoints, `sock:sock_recv_length` and `sock:sock_send_length`, which
//! fire from `sock_recvmsg`/`sock_sendmsg` for socket I/O only. Nothing
//! else on the node pays: a file, a pipe or any other syscall never runs a
//! program (the syscall path's tracepoints put every syscall of every
//! process on the kernel's traced slow path).
//!
//! - Per-connection state lives in the socket itself (`SOCK_CONNS`, socket
//!   local storage): no table to look up, no cap, no stale state for a
//!   reused descriptor, freed with the socket. A socket with no state pays
//!   one storage lookup and its family (and type) before anything else;
//!   only a TCP socket whose bytes may start HTTP has its user memory read.
//! - The user buffer comes from the syscall's own registers (`orig_ax`
//!   says which syscall, `si` holds the buffer, the iovec array or the
//!   msghdr), and the byte count from the tracepoint: exact for writes too
//!   (the syscall path takes a write's length as asked at its entry).
//! - A connection ends when this side closes or shuts down sending
//!   (`inet_sock_set_state`, as a BTF tracepoint so it reaches the
//!   storage), or when a reset socket is destroyed (`tcp_destroy_sock`):
//!   requests still waiting count as 000, and what the socket reads after
//!   this side ended it (a server's lingering close discarding what the
//!   client had sent) is `after_close`, never a request.
//! - What the registers do not describe is counted, never guessed: I/O
//!   issued through io_uring (`unparsed_io_uring`), `recvmmsg`/`sendmmsg`
//!   and `splice` (`unparsed_syscall`). 32-bit tasks and kernel threads
//!   (no user registers of theirs) are skipped.
//!
//! The parser, framer, spill and counting are the syscall path's (`parse`,
//! `frame`, `spill`, `count`); a connection's key (for `SPILL`) is its
//! socket's address.

use core::{ffi::c_void, mem::MaybeUninit, ptr::null_mut};

use aya_ebpf::{
    btf_maps::SkStorage,
    helpers::generated::{bpf_get_current_task_btf, bpf_sk_storage_get, bpf_task_pt_regs},
    macros::{btf_map, btf_tracepoint, map},
    maps::ProgramArray,
    programs::BtfTracePointContext,
};
use burnwatch_common::{
    http::looks_like_request,
    maps::{
        AgentConfig, ConnState, ReadArgs, config_flags, conn_event, counter, ignored, read_kind,
        role,
    },
    offsets::{
        MSG_PEEK, MSG_TRUNC, X86_64_REGS_CS, X86_64_REGS_IP, X86_64_REGS_ORIG_AX,
        X86_64_SYSCALL_ARG_REGS, X86_64_USER_CS,
    },
};

use crate::maps::{SCRATCH, SERVICE_PORTS, TAIL_PARSE_WRITE, bump, config, nested};
use crate::{WriteArgs, count, frame, parse, socket};

/// Connection state, in each socket's local storage.
#[btf_map]
pub static SOCK_CONNS: SkStorage<ConnState> = SkStorage::new();

/// The socket path's tail-called programs, slots as `TAIL_CALLS`'s
/// (`TAIL_PARSE_WRITE`, `TAIL_FRAME_RESPONSES`). Its own array: the kernel
/// lets a BTF tracepoint program tail-call only programs of its own hook's
/// prototype.
#[map(name = "SOCK_TAILS")]
pub static SOCK_TAILS: ProgramArray = ProgramArray::with_max_entries(2, 0);

const SK_STORAGE_GET_F_CREATE: u64 = 1;

// x86_64 syscall numbers (the socket path runs on x86_64 only; userspace
// checks the register layout before choosing it).
const NR_READ: u64 = 0;
const NR_WRITE: u64 = 1;
const NR_READV: u64 = 19;
const NR_WRITEV: u64 = 20;
const NR_SENDFILE: u64 = 40;
const NR_SENDTO: u64 = 44;
const NR_RECVFROM: u64 = 45;
const NR_SENDMSG: u64 = 46;
const NR_RECVMSG: u64 = 47;
const NR_IO_URING_SETUP: u64 = 425;
const NR_IO_URING_REGISTER: u64 = 427;

/// `sk`'s connection state, created (zeroed) when `create` is set. `sk`
/// must be the tracepoint's own `struct sock *` argument, not a copy that
/// went through memory: the verifier checks it is a socket.
#[inline(always)]
fn storage(sk: *mut c_void, create: bool) -> Option<&'static mut ConnState> {
    let p = unsafe {
        bpf_sk_storage_get(
            &SOCK_CONNS as *const SkStorage<ConnState> as *mut c_void,
            sk,
            null_mut(),
            if create { SK_STORAGE_GET_F_CREATE } else { 0 },
        )
    } as *mut ConnState;
    if p.is_null() {
        None
    } else {
        Some(unsafe { &mut *p })
    }
}

/// The current syscall, from the thread's saved user registers.
struct Syscall {
    nr: u64,
    /// The second argument: the buffer, the iovec array or the msghdr.
    a1: u64,
    /// The third: a length or an iovec count.
    a2: u64,
}

/// How the socket I/O being traced was issued.
enum Issued {
    Syscall(Syscall),
    /// By io_uring (inline in `io_uring_enter`, or by one of its workers):
    /// the registers do not hold the buffer.
    IoUring,
    /// Not by a 64-bit user task (a kernel thread, an in-kernel socket
    /// user, a 32-bit compat task): nothing of ours.
    Other,
}

#[inline(always)]
fn issued() -> Issued {
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as *const u64;
    // BTF pointer loads at constant offsets: fault-safe, no helper call.
    let at = |off: u32| unsafe { core::ptr::read(regs.add(off as usize / 8)) };
    if at(X86_64_REGS_CS) != X86_64_USER_CS {
        return Issued::Other;
    }
    let nr = at(X86_64_REGS_ORIG_AX);
    // io_uring workers carry a copy of their creator's registers (taken in
    // an io_uring syscall) with the instruction pointer cleared.
    if (NR_IO_URING_SETUP..=NR_IO_URING_REGISTER).contains(&nr) || at(X86_64_REGS_IP) == 0 {
        return Issued::IoUring;
    }
    Issued::Syscall(Syscall {
        nr,
        a1: at(X86_64_SYSCALL_ARG_REGS[1]),
        a2: at(X86_64_SYSCALL_ARG_REGS[2]),
    })
}

/// +1 `kind` on `conn`'s service when it is a watched connection.
#[inline(always)]
fn watched_event(conn: &Option<&'static mut ConnState>, kind: u16) {
    if let Some(c) = conn
        && c.role != 0
    {
        count::conn_event(c.service_id, c.local_port, kind);
    }
}

// ---------------------------------------------------------------- reads

/// `sock:sock_recv_length(sk, ret, flags)`: `ret` bytes were read from
/// `sk`, with the recvmsg `flags` (`MSG_PEEK`, `MSG_TRUNC`).
#[btf_tracepoint(function = "sock_recv_length")]
pub fn sock_recv(ctx: BtfTracePointContext) -> u32 {
    let sk: *mut c_void = ctx.arg(0);
    let ret = ctx.arg::<u64>(1) as i32;
    if ret <= 0 {
        return 0;
    }
    on_recv(&ctx, sk, ret as u64, ctx.arg::<u64>(2));
    0
}

#[inline(always)]
fn on_recv(ctx: &BtfTracePointContext, sk: *mut c_void, ret: u64, flags: u64) {
    // Peeked bytes come again in the next read.
    if flags & MSG_PEEK != 0 {
        return;
    }
    let Some(cfg) = config() else { return };
    let mut known = storage(sk, false);
    if let Some(c) = &known
        && c.role == 0
    {
        if c.ignored == ignored::ENDED {
            // This side ended the connection: a lingering close reads what
            // the client sent, and the server never takes it.
            count::conn_event(c.service_id, c.local_port, conn_event::AFTER_CLOSE);
            return;
        }
        if c.generation == cfg.match_generation {
            return; // judged, not ours
        }
    }
    let call = match issued() {
        Issued::Syscall(call) => call,
        Issued::IoUring => {
            match &known {
                Some(c) if c.role != 0 => {
                    count::conn_event(c.service_id, c.local_port, conn_event::UNPARSED_IO_URING)
                }
                Some(_) => {}
                None => {
                    if socket::stream_socket(&cfg.offsets, sk as *const u8).is_some() {
                        bump(counter::IO_URING);
                    }
                }
            }
            return;
        }
        Issued::Other => return,
    };
    let kind = match call.nr {
        NR_READ | NR_RECVFROM => read_kind::BUF,
        NR_READV => read_kind::IOVEC,
        NR_RECVMSG => read_kind::MSGHDR,
        _ => {
            watched_event(&known, conn_event::UNPARSED_SYSCALL);
            return;
        }
    };
    if flags & MSG_TRUNC != 0 {
        // Consumed unseen: a watched connection skips them by count.
        if let Some(c) = known
            && c.role != 0
        {
            crate::discard_read(c, ret);
        }
        return;
    }
    if let Some(c) = &known
        && c.role == 0
    {
        // Judged under an older match generation: judged again.
        known = None;
    }
    // A socket not yet judged: a stream socket that some rule may watch,
    // before any user memory is read.
    let sock = if known.is_none() {
        match judgeable(cfg, sk) {
            Some(sock) => Some(sock),
            None => return,
        }
    } else {
        None
    };
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    let args = ReadArgs {
        fd: 0,
        kind,
        buf: call.a1,
        vlen: call.a2,
    };
    if !crate::fill_iovecs(unsafe { &mut *scratch }, &args, ret) {
        return;
    }
    let conn = match (known, sock) {
        (Some(c), _) => c,
        (None, Some(sock)) => {
            let (buf, len) = unsafe { ((*scratch).iov_base[0], (*scratch).iov_len[0]) };
            match first_read(cfg, sk, sock, buf, len) {
                Some(c) => c,
                None => return,
            }
        }
        (None, None) => return,
    };
    if conn.role != 0 {
        crate::read_known(ctx, &SOCK_TAILS, conn, sk as u64, cfg, scratch);
    }
}

/// A socket with no state (or state judged under an older match
/// generation), before any of its user memory is read: `None` unless it is
/// an IPv4 or IPv6 stream socket that some rule may watch. One that no rule
/// can make a watched server's (no automatic services, no process matchers,
/// not a service port) nor a watched client's is judged not ours at once,
/// so its next reads cost one lookup.
#[inline(always)]
fn judgeable(cfg: &AgentConfig, sk: *mut c_void) -> Option<socket::TcpSocket> {
    let sock = socket::stream_socket(&cfg.offsets, sk as *const u8)?;
    let any_port = config_flags::AUTO_SERVICES
        | config_flags::MATCH_TGID
        | config_flags::MATCH_CGROUP
        | config_flags::MATCH_COMM
        | config_flags::CLIENTS;
    if cfg.flags & any_port == 0 && unsafe { SERVICE_PORTS.get(&sock.local_port) }.is_none() {
        let conn = storage(sk, true)?;
        crate::reset_conn(conn, cfg);
        return None;
    }
    Some(sock)
}

/// A read on a socket [`judgeable`] let through: when it starts HTTP, the
/// socket gets its state, judged as the syscall path judges a connection's
/// first read.
#[inline(always)]
fn first_read(
    cfg: &AgentConfig,
    sk: *mut c_void,
    sock: socket::TcpSocket,
    buf: u64,
    len: u64,
) -> Option<&'static mut ConnState> {
    let mut head = [0u8; 8];
    if !crate::read_user(buf, &mut head) {
        return None;
    }
    let n = if len < 8 { len as usize } else { 8 };
    let is_request = looks_like_request(&head, n);
    if !is_request && (n < 7 || &head[..7] != b"HTTP/1.") {
        return None;
    }
    let conn = storage(sk, true)?;
    crate::reset_conn(conn, cfg);
    crate::judge_first_read(
        cfg,
        conn,
        is_request,
        if is_request { Some(sock) } else { None },
    );
    Some(conn)
}

// --------------------------------------------------------------- writes

const EINTR: i32 = 4;
const EAGAIN: i32 = 11;

/// `sock:sock_send_length(sk, ret, flags)`: `ret` bytes were written to
/// `sk` (after the fact: the count is exact). A send that failed because
/// the peer is gone (`EPIPE`, `ECONNRESET`) still says what the server
/// answered, as its log does: it is looked at whole, as asked. One that
/// will be tried again (`EAGAIN`, `EINTR`: nothing was sent) is not.
#[btf_tracepoint(function = "sock_send_length")]
pub fn sock_send(ctx: BtfTracePointContext) -> u32 {
    let sk: *mut c_void = ctx.arg(0);
    let ret = ctx.arg::<u64>(1) as i32;
    if ret == 0 || ret == -EAGAIN || ret == -EINTR {
        return 0;
    }
    // u64::MAX: failed, take what was asked.
    on_send(&ctx, sk, if ret > 0 { ret as u64 } else { u64::MAX });
    0
}

#[inline(always)]
fn on_send(ctx: &BtfTracePointContext, sk: *mut c_void, ret: u64) {
    let Some(cfg) = config() else { return };
    let clients = cfg.flags & config_flags::CLIENTS != 0;
    let known = storage(sk, false);
    // Ignored, unless it may still become a watched client's connection.
    if let Some(c) = &known
        && c.role == 0
        && !(clients
            && c.ignored != ignored::ENDED
            && (c.ignored == ignored::HTTP_CLIENT || c.generation != cfg.match_generation))
    {
        return;
    }
    if known.is_none() && !clients {
        return;
    }
    let call = match issued() {
        Issued::Syscall(call) => call,
        Issued::IoUring => {
            watched_event(&known, conn_event::UNPARSED_IO_URING);
            return;
        }
        Issued::Other => return,
    };
    let w = match call.nr {
        NR_WRITE | NR_SENDTO => {
            let len = if ret == u64::MAX { call.a2 } else { ret };
            WriteArgs {
                kind: read_kind::BUF,
                buf: call.a1,
                vlen: len,
                iov: 0,
                cnt: 0,
                total: len,
            }
        }
        NR_WRITEV => WriteArgs {
            kind: read_kind::IOVEC,
            buf: call.a1,
            vlen: call.a2,
            iov: call.a1,
            cnt: call.a2,
            total: ret,
        },
        NR_SENDMSG => {
            // user_msghdr: name, namelen, iov @16, iovlen @24.
            let mut hdr = MaybeUninit::<[u64; 4]>::uninit();
            let Some(hdr) = crate::read_user_into(call.a1, &mut hdr) else {
                return;
            };
            WriteArgs {
                kind: read_kind::MSGHDR,
                buf: call.a1,
                vlen: 0,
                iov: hdr[2],
                cnt: hdr[3],
                total: ret,
            }
        }
        NR_SENDFILE => {
            // Body bytes from a file: skipped when a server's framing is
            // inside a Content-Length body (exactly `ret` of them).
            if let Some(c) = known
                && c.role == role::SERVER
                && c.responses.in_length_body()
                && ret != u64::MAX
            {
                c.responses.skip(ret);
            }
            return;
        }
        _ => {
            watched_event(&known, conn_event::UNPARSED_SYSCALL);
            return;
        }
    };
    match known {
        Some(c) if c.role == role::SERVER => {
            crate::server_write(ctx, &SOCK_TAILS, sk as u64, c, &w)
        }
        Some(c) if c.role == role::CLIENT => {
            crate::tail_scan(ctx, &SOCK_TAILS, sk as u64, &w, TAIL_PARSE_WRITE)
        }
        _ => {
            if new_client(cfg, sk, &w) {
                crate::tail_scan(ctx, &SOCK_TAILS, sk as u64, &w, TAIL_PARSE_WRITE);
            }
        }
    }
}

/// A write on a TCP socket not yet a watched client's: when it starts a
/// request from a watched process to a watched upstream, the socket
/// becomes a client connection (true). Otherwise, for a request, the
/// verdict is kept so later writes cost one lookup.
#[inline(always)]
fn new_client(cfg: &AgentConfig, sk: *mut c_void, w: &WriteArgs) -> bool {
    if !crate::write_starts_request(w.start(), w.total) {
        return false;
    }
    let Some(sock) = socket::stream_socket(&cfg.offsets, sk as *const u8) else {
        return false;
    };
    let Some(conn) = storage(sk, true) else {
        return false;
    };
    crate::reset_conn(conn, cfg);
    crate::judge_client(cfg, conn, &sock) == Some(true)
}

// ------------------------------------------------------ tail-called

/// Tail-called by the socket-path programs (slot `TAIL_FRAME_RESPONSES`
/// of `SOCK_TAILS`): frames the buffers in `SCRATCH` as responses of the
/// tracepoint's socket (`frame.rs`).
#[btf_tracepoint(function = "sock_send_length")]
pub fn sock_frame_responses(ctx: BtfTracePointContext) -> u32 {
    let sk: *mut c_void = ctx.arg(0);
    let (Some(cfg), Some(scratch)) = (config(), SCRATCH.get_ptr_mut(0)) else {
        return 0;
    };
    if unsafe { (*scratch).conn_key } != sk as u64 {
        return 0;
    }
    if let Some(conn) = storage(sk, false) {
        frame::frame_buffer(conn, sk as u64, cfg, scratch);
    }
    0
}

/// Tail-called by `sock_send` (slot `TAIL_PARSE_WRITE` of `SOCK_TAILS`):
/// parses a watched client's write (in `SCRATCH`) as requests.
#[btf_tracepoint(function = "sock_send_length")]
pub fn sock_parse_client_write(ctx: BtfTracePointContext) -> u32 {
    let sk: *mut c_void = ctx.arg(0);
    let (Some(cfg), Some(scratch)) = (config(), SCRATCH.get_ptr_mut(0)) else {
        return 0;
    };
    if unsafe { (*scratch).conn_key } != sk as u64 {
        return 0;
    }
    if let Some(conn) = storage(sk, false) {
        parse::parse_inbound(conn, sk as u64, cfg, scratch);
    }
    0
}

// --------------------------------------------------------- socket state

const TCP_ESTABLISHED: i32 = 1;
const TCP_FIN_WAIT1: i32 = 4;
const TCP_CLOSE: i32 = 7;
const TCP_CLOSE_WAIT: i32 = 8;
const TCP_LAST_ACK: i32 = 9;

/// `sock:inet_sock_set_state(sk, oldstate, newstate)`: the connection ends.
///
/// - This side closes or shuts down sending (ESTABLISHED -> FIN_WAIT1,
///   CLOSE_WAIT -> LAST_ACK): requests still waiting never get an answer,
///   each counts with status 000 now. The state stays with the socket,
///   marked ended, so what it reads afterwards is `after_close`.
/// - A reset (-> CLOSE): only marked. On loopback a send's own data
///   draws the peer's reset inside that very send, before the socket path
///   sees the send: the server's answer (its log has it) is then counted
///   by that send when the tracepoint fires, failed or not, and whatever
///   still waits when the socket is destroyed counts as 000
///   ([`sock_destroy`]).
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn sock_state(ctx: BtfTracePointContext) -> u32 {
    let old = ctx.arg::<u64>(1) as i32;
    let new = ctx.arg::<u64>(2) as i32;
    let closing = (old == TCP_ESTABLISHED && new == TCP_FIN_WAIT1)
        || (old == TCP_CLOSE_WAIT && new == TCP_LAST_ACK);
    if !closing && new != TCP_CLOSE {
        return 0;
    }
    let sk: *mut c_void = ctx.arg(0);
    let Some(conn) = storage(sk, false) else {
        return 0;
    };
    if conn.role == 0 {
        return 0;
    }
    if closing {
        end(conn, sk);
    } else {
        conn.ignored = ignored::ENDED;
    }
    0
}

/// `tcp:tcp_destroy_sock(sk)`: the socket is freed. Requests of a watched
/// connection still waiting (one that was reset, see [`sock_state`]) never
/// got an answer: each counts with status 000.
#[btf_tracepoint(function = "tcp_destroy_sock")]
pub fn sock_destroy(ctx: BtfTracePointContext) -> u32 {
    let sk: *mut c_void = ctx.arg(0);
    if let Some(conn) = storage(sk, false)
        && conn.role != 0
    {
        end(conn, sk);
    }
    0
}

/// A watched connection ends: its waiting requests count as 000, and it is
/// ignored from now on (what it still reads is `after_close`).
#[inline(always)]
fn end(conn: &mut ConnState, sk: *mut c_void) {
    if let Some(cfg) = config() {
        nested(|| count::count_abandoned(conn, sk as u64, cfg));
    }
    conn.role = 0;
    conn.ignored = ignored::ENDED;
}

//! burnwatch's eBPF programs: HTTP/1.x request counting on the syscall
//! tracepoints (this kernel has no kprobes; syscall tracepoints exist
//! everywhere and their argument layout is a stable ABI).
//!
//! Per syscall on a socket that carries HTTP/1.x:
//! - `read`/`recvfrom` exit: feed the bytes read to the connection's
//!   request parser (shared with userspace: `burnwatch_common::http`), which
//!   queues each request with its method, tenant and start time;
//! - `write`/`sendto`/`writev` enter: a status line answers the oldest
//!   queued request; count it in `COUNTS` keyed by (service, tenant,
//!   method, status) with its latency bucket;
//! - `close` enter: forget the connection.
//!
//! A connection is recognised the first time a read returns a request line,
//! so connections opened before the agent started are counted from their
//! next request. Reads on anything else cost a map lookup and an 8-byte peek.
#![no_std]
#![no_main]
// The BPF target has no `AtomicU64::fetch_add` (no CAS); the intrinsic
// lowers to the BPF atomic add instruction.
#![allow(internal_features)]
#![feature(core_intrinsics)]
// Map keys and values are passed by reference on purpose: by value they
// would be copied onto the 512-byte eBPF stack first.
#![allow(clippy::needless_borrows_for_generic_args)]

use core::ffi::c_void;
use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_task, bpf_ktime_get_ns, bpf_probe_read_kernel,
        generated::{bpf_loop, bpf_probe_read_user},
    },
    macros::{map, tracepoint},
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
    programs::TracePointContext,
};
use burnwatch_common::{
    http::{RequestStream, event, looks_like_request, parse_status_line},
    maps::{
        AgentConfig, CONNS_MAX, COUNTS_MAX, ConnState, INFLIGHT_MAX, InflightRead, LATENCY_BUCKETS,
        RequestKey, RequestStats, SERVICE_AUTO, TENANT_MAX, config_flags, conn_key, counter, role,
    },
    offsets::KernelOffsets,
};

#[map(name = "COUNTS")]
static COUNTS: HashMap<RequestKey, RequestStats> = HashMap::with_max_entries(COUNTS_MAX, 0);

#[map(name = "CONNS")]
static CONNS: LruHashMap<u64, ConnState> = LruHashMap::with_max_entries(CONNS_MAX, 0);

#[map(name = "INFLIGHT")]
static INFLIGHT: HashMap<u64, InflightRead> = HashMap::with_max_entries(INFLIGHT_MAX, 0);

#[map(name = "CONFIG")]
static CONFIG: Array<AgentConfig> = Array::with_max_entries(1, 0);

/// Local TCP port -> configured service index.
#[map(name = "SERVICE_PORTS")]
static SERVICE_PORTS: HashMap<u16, u32> = HashMap::with_max_entries(1024, 0);

#[map(name = "COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// Bytes scanned per `bpf_loop` iteration. The verifier explores every
/// branch of the parser per byte of a chunk; 64 exceeds its 8192-branch limit.
const CHUNK: usize = 16;
/// Chunks scanned per read at most: 16 KiB of headers per syscall.
const MAX_CHUNKS: u32 = 1024;

/// Per-CPU working memory: the eBPF stack is 512 bytes, too small for a
/// connection's state or a map value.
#[repr(C)]
struct Scratch {
    /// The `bpf_loop` cursor: bytes of the current read consumed, and its
    /// length. Kept in map memory, not on the stack, so the verifier sees
    /// unknown values rather than 0, 16, 32... and the loop's states converge.
    off: u64,
    len: u64,
    conn: ConnState,
    key: RequestKey,
    stats: RequestStats,
    buf: [u8; CHUNK],
}

#[map(name = "SCRATCH")]
static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

const BPF_NOEXIST: u64 = 1;
const EEXIST: i32 = 17;
const S_IFMT: u16 = 0o170000;
const S_IFSOCK: u16 = 0o140000;
const SOCK_STREAM: u16 = 1;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

#[inline(always)]
fn bump(idx: u32) {
    if let Some(v) = COUNTERS.get_ptr_mut(idx) {
        unsafe { *v += 1 };
    }
}

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
fn config() -> Option<&'static AgentConfig> {
    CONFIG.get(0)
}

// ---------------------------------------------------------------- reads

#[tracepoint]
pub fn sys_enter_read(ctx: TracePointContext) -> u32 {
    stash_read(&ctx);
    0
}

#[tracepoint]
pub fn sys_exit_read(ctx: TracePointContext) -> u32 {
    finish_read(&ctx);
    0
}

#[tracepoint]
pub fn sys_enter_recvfrom(ctx: TracePointContext) -> u32 {
    stash_read(&ctx);
    0
}

#[tracepoint]
pub fn sys_exit_recvfrom(ctx: TracePointContext) -> u32 {
    finish_read(&ctx);
    0
}

#[inline(always)]
fn stash_read(ctx: &TracePointContext) {
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
        _pad: 0,
        buf: arg_u64(ctx, 1),
    };
    if INFLIGHT.insert(&id, &args, 0).is_err() {
        bump(counter::INFLIGHT_FULL);
    }
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
    let key = conn_key((id >> 32) as u32, args.fd);
    let conn = match CONNS.get_ptr_mut(&key) {
        Some(c) => c,
        None => match new_connection(cfg, key, args.fd, args.buf, ret as u64) {
            Some(c) => c,
            None => return,
        },
    };
    if unsafe { (*conn).role } == 0 {
        return;
    }
    parse_read(conn, cfg, args.buf, ret as u64);
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
    let n = if len < 8 { len } else { 8 };
    if unsafe {
        bpf_probe_read_user(
            head.as_mut_ptr() as *mut c_void,
            n as u32,
            buf as *const c_void,
        )
    } != 0
    {
        return None;
    }
    if !looks_like_request(&head, n as usize) {
        return None;
    }
    let scratch = SCRATCH.get_ptr_mut(0)?;
    let conn = unsafe { &mut (*scratch).conn };
    conn.service_id = 0;
    conn.local_port = 0;
    conn.role = 0;
    conn._pad = 0;
    conn.requests = RequestStream::new();
    if let Some(port) = unsafe { tcp_local_port(&cfg.offsets, fd) } {
        if let Some(id) = unsafe { SERVICE_PORTS.get(&port) } {
            conn.service_id = *id;
            conn.role = role::SERVER;
        } else if cfg.flags & config_flags::AUTO_SERVICES != 0 {
            conn.service_id = SERVICE_AUTO;
            conn.role = role::SERVER;
        }
        conn.local_port = port;
    }
    // Ignored connections are stored too (role 0) so later reads skip them.
    if CONNS.insert(&key, conn, 0).is_err() {
        bump(counter::CONNS_FULL);
        return None;
    }
    CONNS.get_ptr_mut(&key)
}

/// Walks task->files->fdt->fd[fd] to the socket and returns its local port
/// when `fd` is an IPv4/IPv6 stream socket.
#[inline(always)]
unsafe fn tcp_local_port(off: &KernelOffsets, fd: u32) -> Option<u16> {
    unsafe {
        let task = bpf_get_current_task() as *const u8;
        let files: *const u8 = read_kernel(task, off.task_files)?;
        let fdt: *const u8 = read_kernel(files, off.files_fdt)?;
        let max_fds: u32 = read_kernel(fdt, off.fdt_max_fds)?;
        if fd >= max_fds {
            return None;
        }
        let fd_array: *const *const u8 = read_kernel(fdt, off.fdt_fd)?;
        let file: *const u8 = bpf_probe_read_kernel(fd_array.add(fd as usize)).ok()?;
        if file.is_null() {
            return None;
        }
        let inode: *const u8 = read_kernel(file, off.file_inode)?;
        let mode: u16 = read_kernel(inode, off.inode_mode)?;
        if mode & S_IFMT != S_IFSOCK {
            return None;
        }
        let socket: *const u8 = read_kernel(file, off.file_private_data)?;
        let ty: u16 = read_kernel(socket, off.socket_type)?;
        if ty != SOCK_STREAM {
            return None;
        }
        let sk: *const u8 = read_kernel(socket, off.socket_sk)?;
        let family: u16 = read_kernel(sk, off.skc_family)?;
        if family != AF_INET && family != AF_INET6 {
            return None;
        }
        read_kernel(sk, off.skc_num)
    }
}

#[inline(always)]
unsafe fn read_kernel<T>(base: *const u8, offset: u32) -> Option<T> {
    if base.is_null() {
        return None;
    }
    unsafe { bpf_probe_read_kernel(base.add(offset as usize) as *const T).ok() }
}

/// State shared with the `bpf_loop` callback (lives on this program's stack).
#[repr(C)]
struct ParseCtx {
    conn: *mut ConnState,
    cfg: *const AgentConfig,
    scratch: *mut Scratch,
    buf: u64,
    now: u64,
}

#[inline(always)]
fn parse_read(conn: *mut ConnState, cfg: &AgentConfig, buf: u64, len: u64) {
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    unsafe { (*conn).requests.begin_read() };
    unsafe {
        (*scratch).off = 0;
        (*scratch).len = len;
    }
    let mut pc = ParseCtx {
        conn,
        cfg,
        scratch,
        buf,
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
    if unsafe { (*scratch).off < (*scratch).len } {
        bump(counter::SCAN_LIMIT);
    }
}

/// One `bpf_loop` iteration: skip body bytes, or scan up to `CHUNK` bytes.
/// Returns 1 to stop the loop.
extern "C" fn parse_chunk(_index: u64, ctx: *mut c_void) -> i64 {
    let pc = unsafe { &mut *(ctx as *mut ParseCtx) };
    let scratch = unsafe { &mut *pc.scratch };
    if scratch.off >= scratch.len {
        return 1;
    }
    let stream = unsafe { &mut (*pc.conn).requests };
    let rest = scratch.len - scratch.off;
    let skip = stream.skippable();
    if skip > 0 {
        let n = if skip < rest { skip } else { rest };
        stream.skip(n);
        scratch.off += n;
        return 0;
    }
    let n = if rest < CHUNK as u64 {
        rest
    } else {
        CHUNK as u64
    };
    let src = pc.buf + scratch.off;
    // Always a constant-size read: a size derived from `off` would make the
    // verifier track `off` precisely, and the callback's states would never
    // converge. Near the end of a buffer (at a page edge) the full read can
    // fault; then read the bytes one at a time.
    if unsafe {
        bpf_probe_read_user(
            scratch.buf.as_mut_ptr() as *mut c_void,
            CHUNK as u32,
            src as *const c_void,
        )
    } != 0
    {
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
                return 1;
            }
            j += 1;
        }
    }
    let cfg = unsafe { &(*pc.cfg).parser };
    let mut i = 0usize;
    while i < CHUNK {
        if i as u64 >= n {
            break;
        }
        // A body starts inside this chunk: let the next iteration skip it.
        if stream.skippable() > 0 {
            break;
        }
        match stream.step(scratch.buf[i], cfg, pc.now) {
            event::QUEUE_FULL => bump(counter::PIPELINE_OVERFLOW),
            event::INVALID => {
                bump(counter::PARSE_INVALID);
                scratch.off = scratch.len;
                return 1;
            }
            _ => {}
        }
        i += 1;
    }
    scratch.off += i as u64;
    0
}

// --------------------------------------------------------------- writes

#[tracepoint]
pub fn sys_enter_write(ctx: TracePointContext) -> u32 {
    on_write(arg_u64(&ctx, 0) as u32, arg_u64(&ctx, 1), arg_u64(&ctx, 2));
    0
}

#[tracepoint]
pub fn sys_enter_sendto(ctx: TracePointContext) -> u32 {
    on_write(arg_u64(&ctx, 0) as u32, arg_u64(&ctx, 1), arg_u64(&ctx, 2));
    0
}

/// `writev(fd, iov, iovcnt)`: the status line is at the start of the first
/// iovec.
#[tracepoint]
pub fn sys_enter_writev(ctx: TracePointContext) -> u32 {
    let fd = arg_u64(&ctx, 0) as u32;
    let iov = arg_u64(&ctx, 1);
    if arg_u64(&ctx, 2) == 0 {
        return 0;
    }
    let mut first = [0u64; 2]; // struct iovec { base, len }
    if unsafe { bpf_probe_read_user(first.as_mut_ptr() as *mut c_void, 16, iov as *const c_void) }
        != 0
    {
        return 0;
    }
    on_write(fd, first[0], first[1]);
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
        bump(counter::UNMATCHED_RESPONSE);
        return;
    }
    // 1xx (100 Continue, 103 Early Hints) are interim: the final status
    // follows. 101 Switching Protocols is final for this request.
    if status < 200 && status != 101 {
        return;
    }
    let Some(cfg) = config() else { return };
    count_response(conn, cfg, status);
    conn.requests.pop();
    if status == 101 {
        // The connection speaks another protocol from now on.
        conn.role = 0;
    }
}

#[inline(always)]
fn count_response(conn: &ConnState, cfg: &AgentConfig, status: u16) {
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    let scratch = unsafe { &mut *scratch };
    let req = conn.requests.oldest();
    if req.tenant_truncated != 0 {
        bump(counter::TENANT_TRUNCATED);
    }
    let key = &mut scratch.key;
    key.service_id = conn.service_id;
    key.local_port = conn.local_port;
    key.status = status;
    key.method = req.method;
    key.role = conn.role;
    key.tenant_len = req.tenant_len;
    key._pad = 0;
    key.tenant = req.tenant;
    // Bytes past the length may hold trimmed blanks: zero them so equal
    // tenants make equal keys.
    let len = req.tenant_len as usize;
    let mut j = 0usize;
    while j < TENANT_MAX {
        if j >= len {
            key.tenant[j] = 0;
        }
        j += 1;
    }

    let now = unsafe { bpf_ktime_get_ns() };
    let dur = now.saturating_sub(req.start_ns);
    let mut bucket = LATENCY_BUCKETS - 1;
    let mut i = 0;
    while i < LATENCY_BUCKETS - 1 {
        if dur <= cfg.latency_bounds_ns[i] {
            bucket = i;
            break;
        }
        i += 1;
    }
    if add_stats(key, dur, bucket) {
        return;
    }
    let stats = &mut scratch.stats;
    *stats = RequestStats::ZERO;
    stats.count = 1;
    stats.duration_sum_ns = dur;
    stats.buckets[bucket] = 1;
    match COUNTS.insert(&scratch.key, stats, BPF_NOEXIST) {
        Ok(()) => {}
        // Another CPU created the series first: add to it.
        Err(e) if e == -EEXIST => {
            add_stats(&scratch.key, dur, bucket);
        }
        Err(_) => bump(counter::COUNTS_FULL),
    }
}

#[inline(always)]
fn add_stats(key: &RequestKey, dur: u64, bucket: usize) -> bool {
    let Some(v) = COUNTS.get_ptr_mut(key) else {
        return false;
    };
    unsafe {
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&mut (*v).count, 1);
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&mut (*v).duration_sum_ns, dur);
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(
            &mut (*v).buckets[bucket % LATENCY_BUCKETS],
            1,
        );
    }
    true
}

// ---------------------------------------------------------------- close

#[tracepoint]
pub fn sys_enter_close(ctx: TracePointContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    let key = conn_key((id >> 32) as u32, arg_u64(&ctx, 0) as u32);
    if let Some(conn) = unsafe { CONNS.get(&key) } {
        if conn.role != 0 && conn.requests.has_pending() {
            bump(counter::CLOSED_WITH_PENDING);
        }
        let _ = CONNS.remove(&key);
    }
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

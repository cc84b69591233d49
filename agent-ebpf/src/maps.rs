//! Every map the programs use. Layouts are in `burnwatch_common::maps`;
//! userspace opens the same maps by these names.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, ProgramArray},
};
use burnwatch_common::{
    http::PendingRequest,
    maps::{
        AgentConfig, CONN_EVENTS_MAX, CONNS_MAX, COUNTS_MAX, ConnEventKey, ConnState, MATCHES_MAX,
        MatchKey, RequestKey, RequestStats, SOCKS_MAX, SPILL_MAX, SockOwner, SpillKey, counter,
        ignored, ignored_cache,
    },
};

/// Requests per (service, tenant, method, status): the product.
#[map(name = "COUNTS")]
pub static COUNTS: HashMap<RequestKey, RequestStats> = HashMap::with_max_entries(COUNTS_MAX, 0);

/// Per-connection state, keyed by (tgid, fd). LRU: a full map evicts the
/// least recently used connection rather than refusing new ones.
#[map(name = "CONNS")]
pub static CONNS: LruHashMap<u64, ConnState> = LruHashMap::with_max_entries(CONNS_MAX, 0);

/// Pipelined requests that did not fit in their connection's queue
/// (`ConnState::requests`), oldest first per connection (see `spill.rs`).
/// LRU: one connection's deep pipeline cannot fill it for good.
#[map(name = "SPILL")]
pub static SPILL: LruHashMap<SpillKey, PendingRequest> = LruHashMap::with_max_entries(SPILL_MAX, 0);

/// `struct sock` address -> owner (`CONNS` key, service) of a watched
/// connection (server or client), so a socket that closes without a `close`
/// syscall (its process was killed, the peer reset it) still has its
/// pending requests counted. Every deliberate removal from `CONNS` removes
/// the socket's entry here too, so an entry whose connection state is gone
/// tells that `CONNS` evicted it.
#[map(name = "SOCKS")]
pub static SOCKS: LruHashMap<u64, SockOwner> = LruHashMap::with_max_entries(SOCKS_MAX, 0);

/// The agent's config (one entry), rewritten by userspace on reload.
/// Verdicts of ignored connections, in front of `CONNS`: see
/// `burnwatch_common::maps::ignored_cache`.
#[map(name = "IGNORED")]
pub static IGNORED: Array<u64> = Array::with_max_entries(ignored_cache::SLOTS, 0);

#[map(name = "CONFIG")]
pub static CONFIG: Array<AgentConfig> = Array::with_max_entries(1, 0);

/// Local TCP port -> configured service index (server side).
#[map(name = "SERVICE_PORTS")]
pub static SERVICE_PORTS: HashMap<u16, u32> = HashMap::with_max_entries(1024, 0);

/// Local TCP port -> service id of every port seen serving HTTP, so TCP
/// failures on the port (resets, refusals) are attributed to the service.
#[map(name = "SERVER_PORTS")]
pub static SERVER_PORTS: HashMap<u16, u32> = HashMap::with_max_entries(4096, 0);

/// Process matchers: (kind, role, port, attribute) -> service or client id.
#[map(name = "MATCHES")]
pub static MATCHES: HashMap<MatchKey, u32> = HashMap::with_max_entries(MATCHES_MAX, 0);

/// Programs reached by tail call, each in its own program so it is
/// verified once, not once per program that calls it. Slot
/// [`TAIL_PARSE_WRITE`]: the request parser run on a watched client's
/// writes. Slot [`TAIL_FRAME_RESPONSES`]: framing a buffer that may hold
/// several responses (`frame.rs`).
#[map(name = "TAIL_CALLS")]
pub static TAIL_CALLS: ProgramArray = ProgramArray::with_max_entries(2, 0);
pub const TAIL_PARSE_WRITE: u32 = 0;
pub const TAIL_FRAME_RESPONSES: u32 = 1;

/// (service id << 16 | local port) -> series in `COUNTS`, for the
/// per-service series cap.
#[map(name = "SERIES")]
pub static SERIES: HashMap<u64, u64> = HashMap::with_max_entries(4096, 0);

/// Events lost before attribution (`counter::*`), per CPU.
#[map(name = "COUNTERS")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// Per-service connection events: anomalies and TCP failures.
#[map(name = "CONN_EVENTS")]
pub static CONN_EVENTS: HashMap<ConnEventKey, u64> = HashMap::with_max_entries(CONN_EVENTS_MAX, 0);

/// Bytes a parser step may look at (`burnwatch_common::http::window::AHEAD`).
pub const CHUNK: usize = burnwatch_common::http::window::AHEAD;
/// Bytes of user memory read ahead per helper call: a 400-byte header
/// block costs 4 helper calls, not one per step.
pub const WINDOW: usize = burnwatch_common::http::window::WINDOW;
/// Parser steps per syscall at most: a step takes one byte or more, so this
/// scans at least 64 KiB of headers (or of chunk-size lines) per read.
/// Reads with bodies cost little more: body bytes are skipped, not scanned.
pub const MAX_STEPS: u32 = 1 << 16;
/// iovecs of a readv/writev/recvmsg/sendmsg read in one helper call when
/// the syscall is first looked at (a status line or a request's start are
/// in them). The scans walk every iovec (`parse::cursor`): those past
/// these are read one at a time, as the scan reaches them.
pub const MAX_IOV: usize = 4;
/// iovecs of one syscall walked at most: the kernel's `UIO_MAXIOV`, so a
/// syscall that succeeded never has more. Servers commonly pass 16 to 64
/// (Apache's pipelined answers, Varnish's requests, nginx up to 64).
pub const IOV_MAX: u64 = 1024;

/// Per-CPU working memory: the eBPF stack is 512 bytes, too small for a
/// connection's state or a map value.
#[repr(C)]
pub struct Scratch {
    /// The `bpf_loop` cursor: the iovec being scanned, bytes of it consumed.
    /// Kept in map memory, not on the stack, so the verifier sees unknown
    /// values rather than 0, 16, 32... and the loop's states converge.
    pub iov_idx: u64,
    pub off: u64,
    pub iov_cnt: u64,
    /// The first `iov_cached` iovecs, each cut so that all add up to the
    /// bytes the syscall moved.
    pub iov_base: [u64; MAX_IOV],
    pub iov_len: [u64; MAX_IOV],
    pub iov_cached: u64,
    /// The user address of the iovec array (0: one buffer), for iovecs
    /// past `iov_cached`.
    pub iov_addr: u64,
    /// Bytes the syscall moved past the cached iovecs (`u64::MAX` on: a
    /// write taken whole), and what of them the scan has not yet assigned
    /// to an iovec (`left`, from `left_init` at the scan's start).
    pub left_init: u64,
    pub left: u64,
    /// The iovec at the scan's cursor (`iov_idx`), cut as the others.
    pub cur_base: u64,
    pub cur_len: u64,
    /// 1 when the syscall has more iovecs than `IOV_MAX` (only a failed
    /// write, taken whole, can): those past it are never scanned, so a
    /// stream framed across writes loses its place.
    pub unseen: u64,
    pub conn: ConnState,
    /// The connection whose write the tail-called parser scans.
    pub conn_key: u64,
    /// Framing the responses of one buffer (`frame.rs`).
    pub resp: burnwatch_common::http::response::ResponseStream,
    /// The user bytes last read: `win_len` bytes of the iovec being scanned
    /// from user address `win_base` (0: none). Emptied at the start of every
    /// syscall, whose buffer may reuse the memory of the last one. `CHUNK`
    /// spare bytes: the 16 bytes ahead of any offset below `WINDOW` fit.
    pub win_base: u64,
    pub win_len: u64,
    pub win: [u8; WINDOW + CHUNK],
}

#[map(name = "SCRATCH")]
pub static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// A series key and value being built by `count::count_request`.
#[repr(C)]
pub struct CountBuf {
    pub key: RequestKey,
    pub stats: RequestStats,
}

/// `count::count_request`'s working memory, per CPU: slot 0 for programs
/// in process context, slot 1 for the socket-state program while
/// [`NESTED`] says it runs. BTF tracepoint programs nest (the kernel's
/// recursion guard is per program): a connection reset in a softirq runs
/// the socket-state program on top of a socket I/O program of the same
/// CPU, and must not build its series in the memory the other is using.
#[map(name = "COUNT_BUF")]
pub static COUNT_BUF: PerCpuArray<CountBuf> = PerCpuArray::with_max_entries(2, 0);

/// 1 while the socket-state program runs on this CPU (see [`COUNT_BUF`]).
#[map(name = "NESTED")]
pub static NESTED: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// Runs `f` with [`NESTED`] set, so the counting it does uses its own slot
/// of [`COUNT_BUF`].
#[inline(always)]
pub fn nested<R>(f: impl FnOnce() -> R) -> R {
    let flag = NESTED.get_ptr_mut(0);
    if let Some(p) = flag {
        unsafe { core::ptr::write_volatile(p, 1) };
    }
    let r = f();
    if let Some(p) = flag {
        unsafe { core::ptr::write_volatile(p, 0) };
    }
    r
}

#[inline(always)]
pub fn bump(idx: u32) {
    if let Some(v) = COUNTERS.get_ptr_mut(idx) {
        unsafe { *v += 1 };
    }
}

#[inline(always)]
pub fn config() -> Option<&'static AgentConfig> {
    CONFIG.get(0)
}

/// `Some(reason is HTTP_CLIENT)` when `IGNORED` says connection `key` is
/// ignored under `generation` (then `CONNS` holds that verdict: no need to
/// look).
#[inline(always)]
pub fn cached_ignored(key: u64, generation: u32) -> Option<bool> {
    let word = IGNORED.get_ptr(ignored_cache::slot(key))?;
    // One aligned 8-byte load: a whole verdict, never half of two.
    ignored_cache::lookup(unsafe { core::ptr::read_volatile(word) }, key, generation)
}

/// Records in `IGNORED` the verdict of `conn`, the ignored (role 0) state
/// `CONNS` holds for `key` (written only when the slot says something else,
/// so a hit leaves its cache line clean).
#[inline(always)]
pub fn cache_ignored(key: u64, conn: &ConnState) {
    if conn.ignored == ignored::ENDED {
        // Its reads are counted as `after_close`: they must find the state.
        return;
    }
    let http_client = conn.ignored == ignored::HTTP_CLIENT;
    let (Some(verdict), Some(word)) = (
        ignored_cache::verdict(key, conn.generation, http_client),
        IGNORED.get_ptr_mut(ignored_cache::slot(key)),
    ) else {
        return;
    };
    unsafe {
        if core::ptr::read_volatile(word) != verdict {
            core::ptr::write_volatile(word, verdict);
        }
    }
}

/// Drops `key`'s verdict from `IGNORED`, if its slot holds one: the key's
/// state in `CONNS` changes or goes.
#[inline(always)]
pub fn uncache_ignored(key: u64) {
    let Some(word) = IGNORED.get_ptr_mut(ignored_cache::slot(key)) else {
        return;
    };
    unsafe {
        if ignored_cache::holds(core::ptr::read_volatile(word), key) {
            core::ptr::write_volatile(word, 0);
        }
    }
}

//! Layouts of the kernel maps, shared by both sides.
//!
//! Map names are constants here so the loader and the programs cannot
//! disagree. Sizes are chosen so the kernel's memory use is fixed and known
//! at load time (see [`crate::maps::COUNTS_MAX`] and friends).

use crate::http::{ParserConfig, RequestStream, response::ResponseStream};
use crate::offsets::KernelOffsets;

/// Longest tenant id kept (bytes); longer values are cut and flagged.
pub const TENANT_MAX: usize = 64;
/// Requests per connection that await a response in the connection's own
/// state. Deeper pipelines move their oldest requests to `SPILL`.
pub const PENDING_MAX: usize = 4;
/// Pipelined requests of one connection kept in `SPILL` at most (beyond
/// its own [`PENDING_MAX`]): a pipeline deeper than `PENDING_MAX +
/// SPILL_PER_CONN` counts the excess as `pipeline_overflow`.
pub const SPILL_PER_CONN: u16 = 1024;
/// Entries of the `SPILL` LRU map, shared by every connection (~1.6 MiB).
/// A spilled request pushed out before its response is counted as
/// `pipeline_overflow`.
pub const SPILL_MAX: u32 = 16_384;
/// Latency histogram buckets; the last one is +Inf.
pub const LATENCY_BUCKETS: usize = 16;

/// Distinct (service, tenant, method, status) series the kernel can count.
pub const COUNTS_MAX: u32 = 65_536;
/// Series past which every new tenant's requests fold into `__overflow__`
/// whatever the per-service cap: the last entries of `COUNTS` are kept for
/// the `__overflow__` series themselves, so a full map folds requests
/// instead of dropping them (`tenant.max_per_service` times the services
/// can exceed what the map holds).
pub const COUNTS_SOFT_MAX: u64 = COUNTS_MAX as u64 - 4096;
/// Key of the `SERIES` entry that counts every series in `COUNTS` (the
/// others are `service_id << 16 | local_port`, below 2^48).
pub const SERIES_ALL: u64 = u64::MAX;
/// Connections tracked at once (LRU: the least recently used is evicted;
/// an eviction is counted as the `state_evicted` capture anomaly).
pub const CONNS_MAX: u32 = 65_536;
/// Watched sockets remembered in `SOCKS` (LRU): twice `CONNS_MAX`, so a
/// socket still has its entry after its connection state was evicted from
/// `CONNS`, which is how the eviction is noticed (small entries: ~10 MiB
/// of kernel memory).
pub const SOCKS_MAX: u32 = 2 * CONNS_MAX;

/// Map names.
pub mod names {
    pub const COUNTS: &str = "COUNTS";
    pub const CONNS: &str = "CONNS";
    pub const CONFIG: &str = "CONFIG";
    pub const SERVICE_PORTS: &str = "SERVICE_PORTS";
    pub const COUNTERS: &str = "COUNTERS";
    pub const SCRATCH: &str = "SCRATCH";
    pub const CONN_EVENTS: &str = "CONN_EVENTS";
    pub const SERVER_PORTS: &str = "SERVER_PORTS";
    pub const SERIES: &str = "SERIES";
    pub const MATCHES: &str = "MATCHES";
    pub const TAIL_CALLS: &str = "TAIL_CALLS";
    pub const SPILL: &str = "SPILL";
}

/// Entries of the `MATCHES` map (process, cgroup, comm and client-port
/// matchers).
pub const MATCHES_MAX: u32 = 16_384;

/// Distinct (service, port, kind) connection-event series.
pub const CONN_EVENTS_MAX: u32 = 8_192;

/// `service_id` for services found automatically (no configured match): the
/// agent names them `<comm>:<port>` from the local port.
pub const SERVICE_AUTO: u32 = u32::MAX;

/// Ids of configured clients (`clients:` in the config) start here, so a
/// client and a service never share an id in `COUNTS` or `CONN_EVENTS`.
pub const CLIENT_ID_BASE: u32 = 0x4000_0000;

/// Key of the `MATCHES` map: "a process with this attribute, on this port,
/// in this role, belongs to service (or client) N". Userspace writes one
/// entry per configured matcher and process attribute; the kernel looks a
/// new connection up by its process's attributes, with the connection's
/// port and then with port 0 (any port).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MatchKey {
    /// A [`match_kind`].
    pub kind: u8,
    /// A [`role`].
    pub role: u8,
    /// Server: the local port. Client: the upstream's port. 0: any.
    pub port: u16,
    pub _pad: u32,
    /// The attribute, zero-padded: tgid (u32, little-endian), cgroup v2 id
    /// (u64, little-endian), comm (16 bytes), nothing for `PORT`.
    pub attr: [u8; 16],
}

/// Kinds of [`MatchKey`].
pub mod match_kind {
    /// A process, by tgid (exe and combined matchers, resolved in userspace
    /// from /proc).
    pub const TGID: u8 = 1;
    /// Every process of a cgroup (v2 id): containers, systemd units.
    pub const CGROUP: u8 = 2;
    /// Every process whose thread name (`comm`) is this.
    pub const COMM: u8 = 3;
    /// Client side: any process calling this upstream port.
    pub const PORT: u8 = 4;
}

/// Why a connection in `CONNS` is ignored ([`ConnState::ignored`]).
pub mod ignored {
    /// Not ignored: a server or client connection.
    pub const NO: u8 = 0;
    /// Not a watched TCP server connection.
    pub const NOT_OURS: u8 = 1;
    /// A read started with a status line: the client side of an HTTP
    /// connection; a watched client adopts it at its next request.
    pub const HTTP_CLIENT: u8 = 2;
    /// Socket path: this side ended the connection (closed it, or shut its
    /// sending side). What it still reads is counted as `after_close`, never
    /// as requests; judged again by no match generation.
    pub const ENDED: u8 = 3;
}

/// HTTP request methods. `#[repr(u8)]`; 0 is "unknown".
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Method {
    Unknown = 0,
    Get = 1,
    Head = 2,
    Post = 3,
    Put = 4,
    Delete = 5,
    Connect = 6,
    Options = 7,
    Trace = 8,
    Patch = 9,
}

const fn pack(s: &[u8]) -> u64 {
    let mut acc = 0u64;
    let mut i = 0;
    while i < s.len() {
        acc = (acc << 8) | s[i] as u64;
        i += 1;
    }
    acc
}

impl Method {
    pub const ALL: [Method; 9] = [
        Method::Get,
        Method::Head,
        Method::Post,
        Method::Put,
        Method::Delete,
        Method::Connect,
        Method::Options,
        Method::Trace,
        Method::Patch,
    ];

    /// The method whose ASCII bytes, packed big-endian into a u64, are `acc`.
    #[inline(always)]
    pub fn from_packed(acc: u64) -> Method {
        const GET: u64 = pack(b"GET");
        const HEAD: u64 = pack(b"HEAD");
        const POST: u64 = pack(b"POST");
        const PUT: u64 = pack(b"PUT");
        const DELETE: u64 = pack(b"DELETE");
        const CONNECT: u64 = pack(b"CONNECT");
        const OPTIONS: u64 = pack(b"OPTIONS");
        const TRACE: u64 = pack(b"TRACE");
        const PATCH: u64 = pack(b"PATCH");
        match acc {
            GET => Method::Get,
            HEAD => Method::Head,
            POST => Method::Post,
            PUT => Method::Put,
            DELETE => Method::Delete,
            CONNECT => Method::Connect,
            OPTIONS => Method::Options,
            TRACE => Method::Trace,
            PATCH => Method::Patch,
            _ => Method::Unknown,
        }
    }

    pub fn from_u8(v: u8) -> Method {
        match v {
            1 => Method::Get,
            2 => Method::Head,
            3 => Method::Post,
            4 => Method::Put,
            5 => Method::Delete,
            6 => Method::Connect,
            7 => Method::Options,
            8 => Method::Trace,
            9 => Method::Patch,
            _ => Method::Unknown,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Method::Unknown => "OTHER",
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
            Method::Connect => "CONNECT",
            Method::Options => "OPTIONS",
            Method::Trace => "TRACE",
            Method::Patch => "PATCH",
        }
    }
}

/// Which side of the connection the watched process is.
pub mod role {
    pub const SERVER: u8 = 1;
    pub const CLIENT: u8 = 2;
}

/// Key of the `COUNTS` hash map: one series of requests.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RequestKey {
    /// Index of the configured service, or [`SERVICE_AUTO`].
    pub service_id: u32,
    /// Local TCP port of the connection.
    pub local_port: u16,
    /// Response status code; 0 when no response came (printed "000").
    pub status: u16,
    /// A [`Method`].
    pub method: u8,
    /// A [`role`].
    pub role: u8,
    pub tenant_len: u8,
    pub _pad: u8,
    /// Client side: the upstream's TCP port (0 on the server side).
    pub peer_port: u16,
    pub _pad2: u16,
    /// Client side: the upstream's address, IPv4-mapped IPv6 for IPv4
    /// (zero on the server side).
    pub peer_addr: [u8; 16],
    /// The cgroup v2 id of the process that made the connection's state,
    /// with [`config_flags::KEY_BY_CGROUP`] (Kubernetes: userspace turns it
    /// into namespace, pod and workload); 0 otherwise.
    pub cgroup_id: u64,
    pub tenant: [u8; TENANT_MAX],
}

// The eBPF side copies these byte arrays as u64 words.
const _: () = assert!(core::mem::offset_of!(RequestKey, peer_addr) % 8 == 0);
const _: () = assert!(core::mem::offset_of!(RequestKey, tenant) % 8 == 0);
const _: () = assert!(core::mem::offset_of!(ConnState, peer_addr) % 8 == 0);
const _: () = assert!(core::mem::offset_of!(crate::http::PendingRequest, tenant) % 8 == 0);

impl RequestKey {
    pub fn tenant(&self) -> &[u8] {
        &self.tenant[..(self.tenant_len as usize).min(TENANT_MAX)]
    }
}

/// Value of the `COUNTS` map. Counters only grow; userspace turns them into
/// rates and deltas. Updated with atomic adds (several CPUs share a series).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestStats {
    pub count: u64,
    /// Sum of request durations (first request byte read to first response
    /// byte written), nanoseconds.
    pub duration_sum_ns: u64,
    /// Requests per latency bucket (not cumulative); bounds in
    /// [`AgentConfig::latency_bounds_ns`], the last bucket is +Inf.
    pub buckets: [u64; LATENCY_BUCKETS],
}

impl RequestStats {
    pub const ZERO: RequestStats = RequestStats {
        count: 0,
        duration_sum_ns: 0,
        buckets: [0; LATENCY_BUCKETS],
    };
}

/// Per-connection state, in the `CONNS` LRU map keyed by [`conn_key`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnState {
    pub service_id: u32,
    pub local_port: u16,
    /// A [`role`], or 0 for a connection we decided to ignore (not TCP, not
    /// a watched service): later syscalls on it return at once.
    pub role: u8,
    /// With role 0: an [`ignored`] reason.
    pub ignored: u8,
    /// Client side: the upstream (see [`RequestKey::peer_addr`]).
    pub peer_port: u16,
    /// Requests of this connection moved to `SPILL` (all older than those
    /// in `requests`), at sequence numbers `spill_head..spill_head + spilled`.
    pub spilled: u16,
    /// With role 0: the [`AgentConfig::match_generation`] the decision was
    /// made under. When userspace learns of new matching processes it bumps
    /// the generation, and ignored connections are looked at again.
    pub generation: u32,
    pub peer_addr: [u8; 16],
    /// See [`RequestKey::cgroup_id`].
    pub cgroup_id: u64,
    /// The kernel's `struct sock` behind the descriptor (0 for ignored
    /// connections): `sock:inet_sock_set_state` finds the connection by it
    /// (`SOCKS`) and checks here that the descriptor still holds that socket.
    pub sk: u64,
    /// Sequence number of the oldest spilled request (see `spilled`).
    pub spill_head: u32,
    pub _pad3: u32,
    pub requests: RequestStream,
    /// Client side: where the responses read so far stand, framed across
    /// reads, so a response split anywhere (a status line over two reads, a
    /// body and the next response in one) answers its own request. Server
    /// side, only a status line cut by a write's end is kept here: a write
    /// is otherwise taken to start a response, as its accepted length is
    /// only known at its exit (see `frame.rs`).
    pub responses: ResponseStream,
}

/// Key of the `SPILL` map: a pipelined request that did not fit in its
/// connection's queue, by connection ([`conn_key`]) and sequence number.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpillKey {
    pub conn_key: u64,
    pub seq: u64,
}

/// Value of `SOCKS` (keyed by `struct sock` address): whose connection
/// state the socket has in `CONNS`, and the service to blame if that state
/// is found missing (evicted).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockOwner {
    /// The `CONNS` key ([`conn_key`]).
    pub conn_key: u64,
    pub service_id: u32,
    pub local_port: u16,
    pub _pad: u16,
}

/// Key of a connection: the process (tgid) and the file descriptor.
#[inline(always)]
pub const fn conn_key(tgid: u32, fd: u32) -> u64 {
    ((tgid as u64) << 32) | fd as u64
}

/// `IGNORED`: a direct-mapped cache in front of `CONNS` for the connections
/// the programs ignore (role 0), which are most of a node's socket syscalls
/// (every client, every unwatched server).
///
/// Why: at low request rates every map a program touches has left the CPU
/// caches between requests, and a hash map lookup then costs ~0.5-1.2 us
/// (hashing, the bucket, the element, their page-table entries; measured
/// on this project's VMs), while an array lookup is inlined by the verifier
/// into an address computation and one load (35-100 ns above an empty
/// program at 1000 req/s: `cargo xtask bench`'s floor). So the verdict
/// "ignored under this match generation" is kept in one `u64` per slot of
/// a small array (16 KiB: small enough for `bpf_map_area_alloc` to take it
/// from kmalloc, directly mapped memory, where the big hash maps get
/// vmalloc's 4 KiB pages), and a hit skips the `CONNS` lookup.
///
/// It is only a cache: a slot holds the verdict of one key at a time, a
/// miss falls back to `CONNS`, and a verdict is set only when `CONNS`
/// holds that very verdict. Every change of a key's `CONNS` state (stored,
/// forgotten, a descriptor accepted, connected or closed) clears its slot,
/// so a hit says what `CONNS` would say. (One difference: after `CONNS`
/// evicts an ignored entry its verdict may live on here until its slot is
/// reused, its descriptor is closed or the generation changes.) Packing the
/// whole verdict into one word makes its loads and stores atomic: two CPUs
/// writing a slot at once leave one verdict or the other, never a mix.
pub mod ignored_cache {
    /// Slots (a power of two).
    pub const SLOTS: u32 = 2048;
    /// Bits of each packed field: tgids are below 2^22 (the kernel's
    /// `PID_MAX_LIMIT`); descriptors below 2^20 are cached (others always
    /// miss); the match generation is kept modulo 2^20.
    const TGID_BITS: u32 = 22;
    const FD_BITS: u32 = 20;
    const GEN_BITS: u32 = 20;
    /// The verdict's `ignored::HTTP_CLIENT` flag.
    const HTTP_CLIENT: u64 = 1 << 1;
    /// Set in every verdict, so an empty slot (0) never matches.
    const VALID: u64 = 1;

    /// The slot of connection key `key` ([`super::conn_key`]): Fibonacci
    /// hashing, so neighbouring descriptors of one process spread out.
    #[inline(always)]
    pub const fn slot(key: u64) -> u32 {
        (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - SLOTS.trailing_zeros())) as u32
    }

    /// The packed verdict "`key` is ignored under `generation`" (with the
    /// `ignored::HTTP_CLIENT` reason or not), or `None` when the key does
    /// not fit (it is then never cached).
    #[inline(always)]
    pub const fn verdict(key: u64, generation: u32, http_client: bool) -> Option<u64> {
        let tgid = key >> 32;
        let fd = key & 0xffff_ffff;
        if tgid >> TGID_BITS != 0 || fd >> FD_BITS != 0 {
            return None;
        }
        let generation = generation as u64 & ((1 << GEN_BITS) - 1);
        let flag = if http_client { HTTP_CLIENT } else { 0 };
        Some(
            (tgid << (64 - TGID_BITS))
                | (fd << (64 - TGID_BITS - FD_BITS))
                | (generation << 2)
                | flag
                | VALID,
        )
    }

    /// What slot word `word` says of `key` under `generation`: `Some(reason
    /// is HTTP_CLIENT)` when it holds that key's verdict under that
    /// generation, `None` otherwise (a miss: ask `CONNS`).
    #[inline(always)]
    pub const fn lookup(word: u64, key: u64, generation: u32) -> Option<bool> {
        match verdict(key, generation, false) {
            Some(want) if word & !HTTP_CLIENT == want => Some(word & HTTP_CLIENT != 0),
            _ => None,
        }
    }

    /// Whether slot word `word` holds a verdict of `key`, whatever its
    /// generation (the slot to clear when the key's state changes).
    #[inline(always)]
    pub const fn holds(word: u64, key: u64) -> bool {
        const KEY_MASK: u64 = !((1 << (64 - TGID_BITS - FD_BITS)) - 1);
        match verdict(key, 0, false) {
            Some(v) => word & KEY_MASK == v & KEY_MASK && word & VALID != 0,
            None => false,
        }
    }
}

/// The arguments of a finished read syscall, taken from the thread's saved
/// user registers at the syscall's exit.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadArgs {
    pub fd: u32,
    /// A [`read_kind`]: how to find the bytes.
    pub kind: u32,
    /// `read`/`recvfrom`: the buffer. `readv`: the iovec array. `recvmsg`:
    /// the msghdr.
    pub buf: u64,
    /// `readv`: the number of iovecs.
    pub vlen: u64,
}

/// How a [`ReadArgs`] names its buffer.
pub mod read_kind {
    pub const BUF: u32 = 0;
    pub const IOVEC: u32 = 1;
    pub const MSGHDR: u32 = 2;
    /// A `recvfrom`/`recvmsg` with `MSG_TRUNC`: TCP consumed the bytes
    /// without copying them to the buffer, which holds anything.
    pub const DISCARD: u32 = 3;
}

/// Key of the `CONN_EVENTS` map: per-service counts of connection-level
/// events, anomalies and TCP failures alike.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnEventKey {
    pub service_id: u32,
    pub local_port: u16,
    /// A [`conn_event`].
    pub kind: u16,
}

/// Kinds of [`ConnEventKey`].
pub mod conn_event {
    // Capture anomalies: what the capture could not see or match.
    /// A response was written with no request pending.
    pub const UNMATCHED_RESPONSE: u16 = 0;
    /// Requests were still awaiting a response when the connection closed
    /// (each is also counted with status 000).
    pub const OPEN_AT_CLOSE: u16 = 1;
    /// The tenant header was not found in the scanned bytes.
    pub const TENANT_NOT_FOUND: u16 = 2;
    /// A pipelined request that could not be kept: deeper than
    /// `PENDING_MAX + SPILL_PER_CONN`, or pushed out of the full `SPILL`
    /// map before its response.
    pub const PIPELINE_OVERFLOW: u16 = 3;
    /// A watched connection's state was evicted from the full `CONNS` map
    /// (more connections than [`super::CONNS_MAX`] at once). Its pending
    /// requests, if any, were lost; the connection is counted again from
    /// its next request line.
    pub const STATE_EVICTED: u16 = 4;
    /// Bytes on an HTTP connection stopped parsing as HTTP/1.x.
    pub const PARSE_INVALID: u16 = 5;
    /// A read was longer than one syscall may scan; the rest was not parsed.
    pub const SCAN_LIMIT: u16 = 6;
    /// A tenant value longer than the kept length was cut.
    pub const TENANT_TRUNCATED: u16 = 7;
    /// A read with `MSG_TRUNC` dropped bytes past a body unseen; the rest
    /// of the stream waits for the next request line.
    pub const DISCARDED_UNSEEN: u16 = 8;
    /// Socket I/O issued through io_uring on a watched connection: the
    /// socket path sees its byte count, not its buffer (the syscall's
    /// registers do not hold it), so its requests are not counted.
    pub const UNPARSED_IO_URING: u16 = 9;
    /// Bytes read on a connection after this side ended it (closed, or shut
    /// its sending side): a server's lingering close reads and discards
    /// whatever the client had already sent. Not requests: the server never
    /// took them.
    pub const AFTER_CLOSE: u16 = 10;
    /// Socket I/O on a watched connection by a syscall whose buffers the
    /// socket path does not follow (`recvmmsg`, `sendmmsg`, `splice`).
    pub const UNPARSED_SYSCALL: u16 = 11;
    // TCP failures the application never reports.
    /// The server reset an established connection.
    pub const FAIL_RESET: u16 = 16;
    /// A connection to the service's port was refused (no listener).
    pub const FAIL_REFUSED: u16 = 17;
    /// A connection closed while requests awaited a response.
    pub const FAIL_CLOSED_WITHOUT_RESPONSE: u16 = 18;

    /// Label value of an anomaly kind, if it is one.
    pub fn anomaly_name(kind: u16) -> Option<&'static str> {
        Some(match kind {
            UNMATCHED_RESPONSE => "response_without_request",
            OPEN_AT_CLOSE => "request_open_at_close",
            TENANT_NOT_FOUND => "tenant_not_found",
            PIPELINE_OVERFLOW => "pipeline_overflow",
            STATE_EVICTED => "state_evicted",
            PARSE_INVALID => "not_http",
            SCAN_LIMIT => "scan_limit",
            DISCARDED_UNSEEN => "discarded_unseen",
            UNPARSED_IO_URING => "unparsed_io_uring",
            AFTER_CLOSE => "after_close",
            UNPARSED_SYSCALL => "unparsed_syscall",
            TENANT_TRUNCATED => "tenant_truncated",
            _ => return None,
        })
    }

    /// Label value of a TCP failure kind, if it is one.
    pub fn failure_name(kind: u16) -> Option<&'static str> {
        Some(match kind {
            FAIL_RESET => "reset",
            FAIL_REFUSED => "refused",
            FAIL_CLOSED_WITHOUT_RESPONSE => "closed_without_response",
            _ => return None,
        })
    }
}

/// Flags in [`AgentConfig::flags`].
pub mod config_flags {
    /// Count every HTTP server on the node, not only configured services.
    pub const AUTO_SERVICES: u32 = 1;
    /// Clients are configured: requests written on unknown sockets are
    /// looked at.
    pub const CLIENTS: u32 = 2;
    /// `MATCHES` holds entries of this [`super::match_kind`] (lookups of
    /// absent kinds are skipped).
    pub const MATCH_TGID: u32 = 4;
    pub const MATCH_CGROUP: u32 = 8;
    pub const MATCH_COMM: u32 = 16;
    pub const MATCH_PORT: u32 = 32;
    /// Series are keyed by the serving process's cgroup id too (set when
    /// pods are attributed; without it every key's `cgroup_id` is 0).
    pub const KEY_BY_CGROUP: u32 = 64;
}

/// The single entry of the `CONFIG` array map. Userspace may rewrite it at
/// any time (config reload) without reloading programs.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AgentConfig {
    pub offsets: KernelOffsets,
    /// [`config_flags`].
    pub flags: u32,
    /// New series of one service past this many go to tenant `__overflow__`.
    pub max_series_per_service: u32,
    pub parser: ParserConfig,
    /// Upper bounds (inclusive, ns) of the first `LATENCY_BUCKETS - 1`
    /// buckets, ascending.
    pub latency_bounds_ns: [u64; LATENCY_BUCKETS - 1],
    /// Bumped by userspace when `MATCHES` gains entries (see
    /// [`ConnState::generation`]).
    pub match_generation: u32,
    pub _pad: u32,
}

/// Indexes of the `COUNTERS` per-CPU array: events lost before they could
/// be attributed to a service.
pub mod counter {
    /// A new series could not be added: `COUNTS` is full.
    pub const COUNTS_FULL: u32 = 0;
    /// A connection could not be added: `CONNS` update failed.
    pub const CONNS_FULL: u32 = 1;
    /// A user buffer could not be read.
    pub const READ_FAULT: u32 = 2;
    /// A connection event could not be counted: `CONN_EVENTS` is full.
    pub const CONN_EVENTS_FULL: u32 = 3;
    /// Socket I/O through io_uring on a TCP socket the agent had not yet
    /// judged (no connection state): its bytes could not be looked at.
    pub const IO_URING: u32 = 4;
    pub const COUNT: u32 = 5;

    /// Label value of each counter, indexed by the constants above.
    pub const NAMES: [&str; COUNT as usize] = [
        "counts_map_full",
        "conns_map_full",
        "read_fault",
        "conn_events_map_full",
        "unparsed_io_uring",
    ];
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all these types are #[repr(C)], Copy, made only of integers and
    // arrays of integers, and valid for any bit pattern.
    unsafe impl aya::Pod for super::RequestKey {}
    unsafe impl aya::Pod for super::RequestStats {}
    unsafe impl aya::Pod for super::ConnState {}
    unsafe impl aya::Pod for super::AgentConfig {}
    unsafe impl aya::Pod for super::ReadArgs {}
    unsafe impl aya::Pod for super::ConnEventKey {}
    unsafe impl aya::Pod for super::MatchKey {}
}

#[cfg(test)]
mod ignored_cache_tests {
    use super::conn_key;
    use super::ignored_cache::{SLOTS, holds, lookup, slot, verdict};
    use proptest::prelude::*;

    #[test]
    fn a_verdict_answers_its_own_key_and_generation_only() {
        let key = conn_key(4242, 17);
        let word = verdict(key, 7, true).unwrap();
        assert_eq!(lookup(word, key, 7), Some(true));
        assert_eq!(lookup(verdict(key, 7, false).unwrap(), key, 7), Some(false));
        assert_eq!(lookup(word, key, 8), None, "another generation");
        assert_eq!(lookup(word, conn_key(4242, 18), 7), None, "another fd");
        assert_eq!(lookup(word, conn_key(4243, 17), 7), None, "another process");
        // The generation is kept modulo 2^20.
        assert_eq!(lookup(word, key, 7 + (1 << 20)), Some(true));
    }

    #[test]
    fn an_empty_slot_answers_nothing() {
        for key in [conn_key(0, 0), conn_key(1, 0), conn_key(0, 1)] {
            assert_eq!(lookup(0, key, 0), None);
            assert!(!holds(0, key));
        }
    }

    #[test]
    fn keys_that_do_not_fit_are_never_cached() {
        assert_eq!(verdict(conn_key(1 << 22, 3), 1, false), None);
        assert_eq!(verdict(conn_key(3, 1 << 20), 1, false), None);
        let max = conn_key((1 << 22) - 1, (1 << 20) - 1);
        let word = verdict(max, u32::MAX, true).unwrap();
        assert_eq!(lookup(word, max, u32::MAX), Some(true));
        // A key past the limits never matches a word, even one that holds
        // its truncated bits.
        assert_eq!(lookup(word, conn_key(u32::MAX, u32::MAX), u32::MAX), None);
        assert!(!holds(word, conn_key(u32::MAX, u32::MAX)));
    }

    #[test]
    fn holds_ignores_generation_and_reason() {
        let key = conn_key(99, 5);
        for (generation, http) in [(0, false), (12345, true), (u32::MAX, false)] {
            assert!(holds(verdict(key, generation, http).unwrap(), key));
        }
        assert!(!holds(verdict(key, 1, false).unwrap(), conn_key(99, 6)));
        assert!(!holds(verdict(key, 1, false).unwrap(), conn_key(98, 5)));
    }

    #[test]
    fn neighbouring_descriptors_spread_over_slots() {
        let slots: std::collections::HashSet<u32> =
            (0..64).map(|fd| slot(conn_key(1000, fd))).collect();
        assert!(slots.len() >= 60, "{} distinct slots of 64", slots.len());
    }

    proptest! {
        #[test]
        fn lookup_matches_exactly_the_stored_verdict(
            tgid in 0u32..(1 << 22), fd in 0u32..(1 << 20), generation: u32, http: bool,
            tgid2 in 0u32..(1 << 22), fd2 in 0u32..(1 << 20), generation2: u32,
            same_key: bool,
        ) {
            let key = conn_key(tgid, fd);
            let other = if same_key { key } else { conn_key(tgid2, fd2) };
            let word = verdict(key, generation, http).unwrap();
            let want = (other == key && generation % (1 << 20) == generation2 % (1 << 20))
                .then_some(http);
            prop_assert_eq!(lookup(word, other, generation2), want);
            prop_assert_eq!(holds(word, other), other == key);
            prop_assert!(slot(other) < SLOTS);
        }
    }
}

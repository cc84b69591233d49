//! Counting: a request answered (or abandoned) becomes +1 on its series in
//! `COUNTS`; connection-level events become +1 in `CONN_EVENTS`.

use core::{
    intrinsics::{AtomicOrdering, atomic_xadd},
    ptr::write_volatile,
};

use aya_ebpf::{helpers::bpf_ktime_get_ns, maps::HashMap};
use burnwatch_common::{
    http::PendingRequest,
    maps::{
        AgentConfig, COUNTS_SOFT_MAX, ConnEventKey, ConnState, LATENCY_BUCKETS, RequestStats,
        SERIES_ALL, TENANT_MAX, counter,
    },
};

use crate::maps::{CONN_EVENTS, COUNT_BUF, COUNTS, NESTED, SERIES, bump};

const BPF_NOEXIST: u64 = 1;
const EEXIST: i32 = 17;

/// The tenant label of series folded away by the per-service series cap.
const OVERFLOW_TENANT: &[u8; 12] = b"__overflow__";

#[inline(always)]
fn xadd(p: *mut u64, v: u64) {
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(p, v) };
}

/// +1 on a per-service connection event.
#[inline(always)]
pub fn conn_event(service_id: u32, local_port: u16, kind: u16) {
    let key = ConnEventKey {
        service_id,
        local_port,
        kind,
    };
    // The first value as a constant, not a stored `n`: the verifier then
    // has no stack slot to track, and the framing loop, which counts
    // events per step, keeps half the states.
    add_or_insert(&CONN_EVENTS, &key, 1, &1);
}

/// +`n` on a per-service connection event.
#[inline(always)]
pub fn conn_event_n(service_id: u32, local_port: u16, kind: u16, n: u64) {
    let key = ConnEventKey {
        service_id,
        local_port,
        kind,
    };
    add_or_insert(&CONN_EVENTS, &key, n, &n);
}

#[inline(always)]
/// +`n` on `key`, inserted as `first` (`n` itself, by reference) when new.
fn add_or_insert(map: &HashMap<ConnEventKey, u64>, key: &ConnEventKey, n: u64, first: &u64) {
    if let Some(v) = map.get_ptr_mut(key) {
        xadd(v, n);
        return;
    }
    match map.insert(key, first, BPF_NOEXIST) {
        Ok(()) => {}
        Err(e) if e == -EEXIST => {
            if let Some(v) = map.get_ptr_mut(key) {
                xadd(v, n);
            }
        }
        Err(_) => bump(counter::CONN_EVENTS_FULL),
    }
}

/// Counts the oldest pending request of `conn` with `status` (0: none).
#[inline(always)]
pub fn count_request(conn: &ConnState, req: &PendingRequest, cfg: &AgentConfig, status: u16) {
    let slot = match NESTED.get(0) {
        Some(&n) => n & 1,
        None => 0,
    };
    let Some(scratch) = COUNT_BUF.get_ptr_mut(slot) else {
        return;
    };
    let scratch = unsafe { &mut *scratch };
    if req.tenant_truncated != 0 {
        conn_event(
            conn.service_id,
            conn.local_port,
            burnwatch_common::maps::conn_event::TENANT_TRUNCATED,
        );
    }
    let key = &mut scratch.key;
    key.service_id = conn.service_id;
    key.local_port = conn.local_port;
    key.status = status;
    key.method = req.method;
    key.role = conn.role;
    key.tenant_len = req.tenant_len;
    key._pad = 0;
    key.peer_port = conn.peer_port;
    key._pad2 = 0;
    key.cgroup_id = conn.cgroup_id;
    // Byte arrays are copied as words (8-aligned in both structs, asserted
    // in burnwatch_common::maps): a plain `=` becomes a call to a
    // byte-at-a-time memmove in the eBPF build.
    copy_words(&conn.peer_addr, &mut key.peer_addr);
    // Bytes past the length may be stale or trimmed blanks: zero them so
    // equal tenants make equal keys.
    let len = req.tenant_len as usize;
    let src = unsafe { &*(req.tenant.as_ptr() as *const [u64; TENANT_MAX / 8]) };
    let words = key.tenant.as_mut_ptr() as *mut u64;
    let mut w = 0usize;
    while w < TENANT_MAX / 8 {
        let start = w * 8;
        let v = if start >= len {
            0
        } else if start + 8 > len {
            // Little-endian: keep the low (len - start) bytes.
            src[w] & ((1u64 << (8 * (len - start))) - 1)
        } else {
            src[w]
        };
        unsafe { write_volatile(words.add(w), v) };
        w += 1;
    }

    let now = unsafe { bpf_ktime_get_ns() };
    let dur = if status == 0 {
        0
    } else {
        now.saturating_sub(req.start_ns)
    };
    let mut bucket = LATENCY_BUCKETS - 1;
    let mut i = 0;
    while i < LATENCY_BUCKETS - 1 {
        if dur <= cfg.latency_bounds_ns[i] {
            bucket = i;
            break;
        }
        i += 1;
    }
    if add_stats(&scratch.key, dur, bucket) {
        return;
    }
    // A new series. Past the service's cap, fold it into __overflow__ so one
    // service's tenant flood cannot fill the map for everyone; past the
    // map's own soft cap too (several services' caps may add up to more
    // than the map holds), so a full map folds rather than drops.
    let series_key = ((conn.service_id as u64) << 16) | conn.local_port as u64;
    let n = series_count(series_key);
    if n >= cfg.max_series_per_service as u64 || series_count(SERIES_ALL) >= COUNTS_SOFT_MAX {
        let key = &mut scratch.key;
        key.tenant = [0; TENANT_MAX];
        let mut k = 0;
        while k < OVERFLOW_TENANT.len() {
            key.tenant[k] = OVERFLOW_TENANT[k];
            k += 1;
        }
        key.tenant_len = OVERFLOW_TENANT.len() as u8;
        if add_stats(&scratch.key, dur, bucket) {
            return;
        }
    }
    let stats = &mut scratch.stats;
    *stats = RequestStats::ZERO;
    stats.count = 1;
    stats.duration_sum_ns = dur;
    stats.buckets[bucket] = 1;
    match COUNTS.insert(&scratch.key, stats, BPF_NOEXIST) {
        Ok(()) => {
            for key in [series_key, SERIES_ALL] {
                if let Some(p) = SERIES.get_ptr_mut(&key) {
                    xadd(p, 1);
                }
            }
        }
        // Another CPU created the series first: add to it.
        Err(e) if e == -EEXIST => {
            add_stats(&scratch.key, dur, bucket);
        }
        Err(_) => bump(counter::COUNTS_FULL),
    }
}

/// The `SERIES` count under `key`, created at 0 when missing.
#[inline(always)]
fn series_count(key: u64) -> u64 {
    match SERIES.get_ptr_mut(&key) {
        Some(p) => unsafe { *p },
        None => {
            let _ = SERIES.insert(&key, &0, BPF_NOEXIST);
            0
        }
    }
}

/// Copies 16 bytes as two words (volatile, so LLVM does not fold them
/// back into a `memmove` call).
#[inline(always)]
fn copy_words(src: &[u8; 16], dst: &mut [u8; 16]) {
    let (s, d) = (src.as_ptr() as *const u64, dst.as_mut_ptr() as *mut u64);
    unsafe {
        write_volatile(d, *s);
        write_volatile(d.add(1), *s.add(1));
    }
}

#[inline(always)]
fn add_stats(key: &burnwatch_common::maps::RequestKey, dur: u64, bucket: usize) -> bool {
    let Some(v) = COUNTS.get_ptr_mut(key) else {
        return false;
    };
    unsafe {
        xadd(&mut (*v).count, 1);
        xadd(&mut (*v).duration_sum_ns, dur);
        xadd(&mut (*v).buckets[bucket % LATENCY_BUCKETS], 1);
    }
    true
}

/// A connection closes with requests still pending (queued or spilled):
/// each is counted with status 000 (the client never got an answer), and
/// the close is a `closed_without_response` failure.
#[inline(always)]
pub fn count_abandoned(conn: &mut ConnState, conn_key: u64, cfg: &AgentConfig) {
    if !crate::spill::has_pending(conn) {
        return;
    }
    conn_event(
        conn.service_id,
        conn.local_port,
        burnwatch_common::maps::conn_event::FAIL_CLOSED_WITHOUT_RESPONSE,
    );
    crate::spill::abandon_all(conn, conn_key, cfg);
}

//! The kernel side, seen from userspace: check the kernel, load and attach
//! the eBPF programs, hand them the config, and read their maps.
//!
//! Everything the rest of the agent knows about the kernel comes through
//! [`Probe::read_counts`] and [`Probe::read_counters`].

pub mod btf;
pub mod preflight;

use std::path::Path;

use anyhow::{Context, Result, anyhow};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, ProgramArray},
    programs::TracePoint,
};
use burnwatch_common::maps::{
    AgentConfig, ConnEventKey, MatchKey, RequestKey, RequestStats, counter, names,
};
use tracing::{info, warn};

/// The eBPF object, built by build.rs through aya-build.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/burnwatch"));

/// Loaded and attached programs, and handles on the maps userspace reads.
pub struct Probe {
    // Keeps the programs and links alive: dropping it detaches everything.
    ebpf: Ebpf,
    counts: BpfHashMap<MapData, RequestKey, RequestStats>,
    counters: PerCpuArray<MapData, u64>,
    conn_events: BpfHashMap<MapData, ConnEventKey, u64>,
    config_map: Array<MapData, AgentConfig>,
    /// The config last written to the kernel.
    config: AgentConfig,
    matches: BpfHashMap<MapData, MatchKey, u32>,
    /// What `matches` holds.
    matches_now: std::collections::BTreeMap<MatchKey, u32>,
    // Held open: the kernel empties a program array when the last user
    // handle on it closes.
    _tail_calls: ProgramArray<MapData>,
    pub attached: Vec<String>,
}

/// Programs reached only by tail call (loaded, never attached), by slot.
const TAIL_CALLED: &[(u32, &str)] = &[(0, "parse_client_write")];

impl Probe {
    /// Checks the kernel, loads the programs with `config`, attaches them.
    pub fn load(config: &AgentConfig, service_ports: &[(u16, u32)]) -> Result<Probe> {
        preflight::run()?;
        // Kernel memory for maps is charged to the memory cgroup on 5.11+;
        // a failed raise (no CAP_SYS_RESOURCE) is not fatal.
        raise_memlock();

        let mut ebpf = EbpfLoader::new()
            .load(EBPF_OBJECT)
            .context("loading the eBPF object")?;

        // Verify every program first (seconds), then attach them all in one
        // quick pass: connections are never seen by half the probes.
        for (_, _, name) in preflight::TRACEPOINTS {
            let prog: &mut TracePoint = ebpf
                .program_mut(name)
                .ok_or_else(|| anyhow!("program {name} missing from the eBPF object"))?
                .try_into()?;
            if prog.fd().is_ok() {
                continue; // shared by several tracepoints, already loaded
            }
            prog.load()
                .with_context(|| format!("the kernel verifier rejected program {name}"))?;
        }
        let mut tail_calls: ProgramArray<MapData> = ProgramArray::try_from(
            ebpf.take_map(names::TAIL_CALLS)
                .ok_or_else(|| anyhow!("no TAIL_CALLS map"))?,
        )?;
        for (slot, name) in TAIL_CALLED {
            let prog: &mut TracePoint = ebpf
                .program_mut(name)
                .ok_or_else(|| anyhow!("program {name} missing from the eBPF object"))?
                .try_into()?;
            prog.load()
                .with_context(|| format!("the kernel verifier rejected program {name}"))?;
            tail_calls
                .set(*slot, prog.fd()?, 0)
                .with_context(|| format!("registering {name} for tail calls"))?;
        }
        let mut attached = Vec::new();
        for (category, tracepoint, name) in preflight::TRACEPOINTS {
            let prog: &mut TracePoint = ebpf
                .program_mut(name)
                .ok_or_else(|| anyhow!("program {name} missing"))?
                .try_into()?;
            prog.attach(category, tracepoint).with_context(|| {
                format!("attaching {name} to tracepoint {category}:{tracepoint}")
            })?;
            attached.push(format!("tracepoint:{category}:{tracepoint}"));
        }

        let mut cfg_map: Array<MapData, AgentConfig> = Array::try_from(
            ebpf.take_map(names::CONFIG)
                .ok_or_else(|| anyhow!("no CONFIG map"))?,
        )?;
        cfg_map
            .set(0, config, 0)
            .context("writing the CONFIG map")?;
        let mut ports: BpfHashMap<MapData, u16, u32> = BpfHashMap::try_from(
            ebpf.take_map(names::SERVICE_PORTS)
                .ok_or_else(|| anyhow!("no SERVICE_PORTS map"))?,
        )?;
        for (port, id) in service_ports {
            ports.insert(port, id, 0).context("writing SERVICE_PORTS")?;
        }
        let counts = BpfHashMap::try_from(
            ebpf.take_map(names::COUNTS)
                .ok_or_else(|| anyhow!("no COUNTS map"))?,
        )?;
        let counters = PerCpuArray::try_from(
            ebpf.take_map(names::COUNTERS)
                .ok_or_else(|| anyhow!("no COUNTERS map"))?,
        )?;
        let conn_events = BpfHashMap::try_from(
            ebpf.take_map(names::CONN_EVENTS)
                .ok_or_else(|| anyhow!("no CONN_EVENTS map"))?,
        )?;
        let matches = BpfHashMap::try_from(
            ebpf.take_map(names::MATCHES)
                .ok_or_else(|| anyhow!("no MATCHES map"))?,
        )?;
        info!(probes = ?attached, "eBPF programs attached");
        Ok(Probe {
            ebpf,
            counts,
            counters,
            conn_events,
            config_map: cfg_map,
            config: *config,
            matches,
            matches_now: Default::default(),
            _tail_calls: tail_calls,
            attached,
        })
    }

    /// Makes the kernel's process matchers equal `want`. When entries were
    /// added, bumps the config's match generation so connections the kernel
    /// ignored before are looked at again.
    pub fn sync_matches(&mut self, want: &std::collections::BTreeMap<MatchKey, u32>) -> Result<()> {
        let mut added = false;
        for (k, v) in want {
            if self.matches_now.get(k) != Some(v) {
                self.matches.insert(k, v, 0).context("writing MATCHES")?;
                added = true;
            }
        }
        let stale: Vec<MatchKey> = self
            .matches_now
            .keys()
            .filter(|k| !want.contains_key(k))
            .copied()
            .collect();
        for k in &stale {
            let _ = self.matches.remove(k);
        }
        self.matches_now = want.clone();
        if added {
            self.config.match_generation = self.config.match_generation.wrapping_add(1);
            self.config_map
                .set(0, self.config, 0)
                .context("writing the CONFIG map")?;
        }
        Ok(())
    }

    /// Calls `f` with every request series the kernel has counted. The
    /// values are cumulative since the map was created.
    pub fn read_counts(&self, mut f: impl FnMut(&RequestKey, &RequestStats)) -> Result<()> {
        for item in self.counts.iter() {
            match item {
                Ok((k, v)) => f(&k, &v),
                // A key deleted between get_next_key and lookup: skip it.
                Err(aya::maps::MapError::KeyNotFound) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Calls `f` with every per-service connection event count (cumulative).
    pub fn read_conn_events(&self, mut f: impl FnMut(&ConnEventKey, u64)) -> Result<()> {
        for item in self.conn_events.iter() {
            match item {
                Ok((k, v)) => f(&k, v),
                Err(aya::maps::MapError::KeyNotFound) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Per program: (name, runs, run time in ns) since load. Zero unless
    /// `kernel.bpf_stats_enabled` is 1 (the kernel only times programs then).
    pub fn bpf_stats(&self) -> Vec<(&'static str, u64, u64)> {
        let mut names: Vec<&'static str> = preflight::TRACEPOINTS.iter().map(|t| t.2).collect();
        names.dedup();
        names
            .into_iter()
            .filter_map(|name| {
                let info = self.ebpf.program(name)?.info().ok()?;
                Some((name, info.run_count(), info.run_time().as_nanos() as u64))
            })
            .collect()
    }

    /// The capture's own counters (see `burnwatch_common::maps::counter`),
    /// summed over CPUs.
    pub fn read_counters(&self) -> Result<[u64; counter::COUNT as usize]> {
        let mut out = [0u64; counter::COUNT as usize];
        for (i, slot) in out.iter_mut().enumerate() {
            let per_cpu = self.counters.get(&(i as u32), 0)?;
            *slot = per_cpu.iter().sum();
        }
        Ok(out)
    }
}

fn raise_memlock() {
    let lim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall with a valid pointer.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim) } != 0 {
        warn!(
            "could not raise RLIMIT_MEMLOCK ({}); fine on kernels that charge BPF memory to the cgroup",
            std::io::Error::last_os_error()
        );
    }
}

/// Resolves kernel struct offsets from the running kernel's BTF.
pub fn kernel_offsets() -> Result<burnwatch_common::offsets::KernelOffsets> {
    btf::Btf::from_file(Path::new(preflight::BTF_PATH))?.kernel_offsets()
}

#[cfg(test)]
mod tests {
    /// A bounds check or `unwrap` in the eBPF code links `core::panicking`
    /// into the object, and the verifier then rejects the program with
    /// "last insn is not an exit or jmp". Caught here, on the host, with the
    /// symbol names in the error, rather than at load time.
    #[test]
    fn ebpf_object_has_no_panic_paths() {
        let obj = super::EBPF_OBJECT;
        // The mangled symbol of any core::panicking function.
        let needle = b"4core9panicking";
        assert!(
            !obj.windows(needle.len()).any(|w| w == needle),
            "the eBPF object references core::panicking (an index out of a \
             checked range, an unwrap, an overflow check): find the call with \
             `llvm-objdump -d -r target/release/build/burnwatch-*/out/burnwatch \
             | grep -B40 text.unlikely`"
        );
    }
}

//! The kernel side, seen from userspace: check the kernel, load and attach
//! the eBPF programs, hand them the config, and read their maps.
//!
//! Everything the rest of the agent knows about the kernel comes through
//! [`Probe::read_counts`] and [`Probe::read_counters`].

mod batch;
pub mod btf;
pub mod features;
pub mod guard;
pub mod handoff;
pub mod lock;
pub mod pins;
pub mod preflight;
mod program_stats;
pub mod verifier;

use std::os::fd::AsFd;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use aya::{
    EbpfLoader, VerifierLogLevel,
    maps::{Array, HashMap as BpfHashMap, IterableMap, Map, MapData, PerCpuArray, ProgramArray},
    programs::{
        BtfTracePoint, ProgramError, TracePoint,
        links::{FdLink, PinnedLink},
        trace_point::TracePointLink,
    },
};
use burnwatch_common::maps::{
    AgentConfig, ConnEventKey, MatchKey, RequestKey, RequestStats, SERIES_ALL, counter, names,
};
use burnwatch_common::programs::{BTF, CaptureMode, SOCKET_TAIL_TARGET, capability_of, is_core};
use tracing::{error, info, warn};

use batch::BatchReader;
use pins::Pins;
use program_stats::ProgramStatsReader;

/// The eBPF object, built by build.rs through aya-build.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/burnwatch"));

/// Handles on the pinned maps userspace reads and writes. The programs run
/// from their pinned links, independently of this process (see [`pins`]).
pub struct Probe {
    counts: BpfHashMap<MapData, RequestKey, RequestStats>,
    /// `COUNTS` and `CONN_EVENTS` read in batches (the maps above are the
    /// fallback for kernels without batch lookups).
    counts_batch: BatchReader<RequestKey, RequestStats>,
    /// Series per service and in all (`SERIES_ALL`): how many keys
    /// `COUNTS` holds, so a poll knows when none was added.
    series: BpfHashMap<MapData, u64, u64>,
    counts_keys: std::sync::Mutex<KnownCounts>,
    conn_events_batch: BatchReader<ConnEventKey, u64>,
    counters: PerCpuArray<MapData, u64>,
    conn_events: BpfHashMap<MapData, ConnEventKey, u64>,
    config: Array<MapData, AgentConfig>,
    /// The config last written to the kernel.
    config_value: AgentConfig,
    service_ports: BpfHashMap<MapData, u16, u32>,
    matches: BpfHashMap<MapData, MatchKey, u32>,
    /// What `matches` holds.
    matches_now: std::collections::BTreeMap<MatchKey, u32>,
    pins: Pins,
    /// The capture path the programs run (`capture.mode`, or chosen by
    /// what the kernel runs).
    pub mode: CaptureMode,
    /// The attached programs, held open for their run statistics.
    program_stats: ProgramStatsReader,
    pub attached: Vec<String>,
    /// Every capability (`burnwatch_common::programs::CAPABILITIES`) and
    /// whether it is up: all its programs verified and attached.
    pub capabilities: Vec<(&'static str, bool)>,
    /// Identifies this generation of the kernel's cumulative counts (boot id
    /// and `COUNTS` map id): a checkpoint's consumed counts only apply to the
    /// generation they were read from.
    pub counts_epoch: u64,
    /// The maps and programs were already pinned (an agent restart): the
    /// kernel's counts include requests from before this process started.
    pub reused: bool,
    /// Kernels before 5.15 cannot pin tracepoint links: this process holds
    /// them, and the programs detach when it exits (restarts lose the
    /// requests made while no agent runs).
    _held_links: Vec<TracePointLink>,
    /// The pin root's lock and every pinned object, held and checked each
    /// poll ([`Probe::check_kernel_side`], see [`guard`]).
    guard: Option<guard::Guard>,
    /// Upgrade: the final counts of an older build's maps, for the SLO
    /// engine's first feed (`handoff.rs`). Taken by the agent at start.
    pub handoff: Vec<handoff::Handoff>,
    /// A fault of the kernel side the agent does not repair: why, and
    /// since when (the agent answers not ready, then exits).
    broken: Option<(String, Instant)>,
    /// Checks in a row whose repair failed (`guard::Health::Retry`).
    retries: u32,
}

/// The capability that says which capture path runs (1: the socket path).
pub const SOCKET_CAPTURE: &str = "socket_capture";

/// How long the agent answers `/readyz` with 503 before it exits on a
/// fault of its kernel side it does not repair: long enough for a probe or
/// a test to see why, short enough that the restart comes soon.
pub const BROKEN_GRACE: Duration = Duration::from_secs(5);

/// Up to this many `COUNTS` keys are looked up one by one (a syscall each)
/// rather than walking the whole map.
const FEW_SERIES: usize = 128;
/// Polls between two walks of `COUNTS` while keys are looked up one by one.
const WALK_EVERY: u32 = 10;

/// The keys of `COUNTS` its last walk found.
#[derive(Default)]
struct KnownCounts {
    keys: Vec<RequestKey>,
    /// The walk found more than [`FEW_SERIES`] keys.
    overflow: bool,
    /// `SERIES_ALL` when the walk started (`None`: unknown, walk again).
    series: Option<u64>,
    polls_since_walk: u32,
}

impl KnownCounts {
    /// Whether looking up the known keys reads every series: no key was
    /// added since the walk (`series` unchanged), and they are few.
    fn can_look_up(&self, series: Option<u64>) -> bool {
        self.series.is_some()
            && self.series == series
            && !self.overflow
            && self.polls_since_walk < WALK_EVERY
    }

    /// Forgets the keys (keeping their buffer) before a walk; `series` is
    /// unknown until the walk completes (one cut short by an error leaves
    /// only some of the keys).
    fn start_walk(&mut self) {
        self.keys.clear();
        self.overflow = false;
        self.series = None;
        self.polls_since_walk = 0;
    }
}

/// Names programs the agent does not load, as if the verifier had refused
/// them (comma-separated): a debug switch that tests how the agent degrades
/// when an optional program cannot run on a kernel.
pub const SKIP_PROGRAMS_ENV: &str = "BURNWATCH_DEBUG_SKIP_PROGRAMS";

/// Failed repairs of the pins in a row before the kernel side counts as
/// broken (a removal racing a repair fails it once).
const REPAIR_TRIES: u32 = 3;

/// When set to 16 hex digits, the build id the pins are made under instead
/// of the eBPF object's hash: a debug switch that makes this binary act as
/// another build (an upgrade) towards the pins of a previous run.
pub const BUILD_ID_ENV: &str = "BURNWATCH_DEBUG_BUILD_ID";

impl Probe {
    /// Checks the kernel, then reuses this build's pinned programs and maps
    /// under `pin_root`, or loads, attaches and pins them; writes `config`.
    pub fn load(
        config: &AgentConfig,
        service_ports: &[(u16, u32)],
        pin_root: &Path,
        forced: Option<CaptureMode>,
    ) -> Result<Probe> {
        let chosen = preflight::run(forced)?;
        // Kernel memory for maps is charged to the memory cgroup on 5.11+;
        // a failed raise (no CAP_SYS_RESOURCE) is not fatal.
        raise_memlock();

        // One agent per pin root (lock.rs), before anything under it is
        // read or changed: a second agent refuses here, naming the first.
        let lock = lock::PinRootLock::acquire(pin_root)?;
        let debug_build = std::env::var(BUILD_ID_ENV)
            .ok()
            .filter(|b| pins::is_build_dir(b));
        // `auto` falls back to the syscall path when the socket path's core
        // programs do not load or attach here.
        let modes: &[CaptureMode] = if forced.is_none() && chosen == CaptureMode::Socket {
            &[CaptureMode::Socket, CaptureMode::Syscalls]
        } else if chosen == CaptureMode::Socket {
            &[CaptureMode::Socket]
        } else {
            &[CaptureMode::Syscalls]
        };
        let mut probe = None;
        for (i, mode) in modes.iter().enumerate() {
            // A mode's pins are a build of their own: switching modes hands
            // the counts over as an upgrade does.
            let build = debug_build.clone().unwrap_or_else(|| {
                let mut object = EBPF_OBJECT.to_vec();
                object.extend_from_slice(mode.name().as_bytes());
                pins::build_id(&object)
            });
            match Probe::open_or_load(&build, pin_root, *mode) {
                Ok(p) => {
                    probe = Some(p);
                    break;
                }
                Err(e) if i + 1 < modes.len() => warn!(
                    "the socket capture path cannot run on this kernel ({e:#}); \
                     falling back to the syscall path"
                ),
                Err(e) => return Err(e),
            }
        }
        let mut probe = probe.expect("the last mode returns its error");
        let pins = probe.pins.clone();
        // Upgrade: the old build's counts since its agent's last read are
        // read once its pins are gone and its programs detached; ours count
        // nothing until `configure` writes their config (handoff.rs).
        let old_counts = handoff::open_other_builds(&pins);
        pins.remove_other_builds();
        probe.handoff = handoff::read(old_counts);
        probe.configure(config, service_ports)?;
        probe.guard = Some(
            guard::Guard::open(lock, &pins)
                .context("holding the pinned maps, programs and links")?,
        );
        let down: Vec<&str> = probe
            .capabilities
            .iter()
            .filter(|(_, up)| !up)
            .map(|(f, _)| *f)
            .collect();
        info!(
            mode = probe.mode.name(),
            probes = ?probe.attached,
            pins = %pins.dir.display(),
            ?down,
            "eBPF programs attached"
        );
        Ok(probe)
    }

    /// Reuses the pins of `build` (this eBPF object and capture `mode`), or
    /// loads, attaches and pins its programs afresh.
    fn open_or_load(build: &str, pin_root: &Path, mode: CaptureMode) -> Result<Probe> {
        let pins = Pins::new(pin_root, build);
        pins.create_dirs()?;
        match Probe::open_pinned(&pins, mode, None) {
            Ok(p) => {
                info!(pins = %pins.dir.display(), mode = mode.name(), "reusing pinned eBPF programs and maps: counts continue");
                Ok(p)
            }
            Err(e) => {
                if std::fs::read_dir(pins.dir.join("links")).is_ok_and(|mut d| d.next().is_some()) {
                    warn!(pins = %pins.dir.display(), "pinned state unusable, replacing it: {e:#}");
                }
                pins.remove()?;
                pins.create_dirs()?;
                let loaded = match load_and_pin(&pins, mode) {
                    Ok(loaded) => loaded,
                    Err(e) => {
                        // Unpinning detaches whatever was attached.
                        let _ = pins.remove();
                        return Err(e);
                    }
                };
                let mut probe = Probe::open_pinned(&pins, mode, Some(&loaded.down))?;
                probe.reused = false;
                probe._held_links = loaded.held;
                Ok(probe)
            }
        }
    }

    /// Opens the pins of this build. `down` names the programs that did not
    /// load or attach, when this process just loaded them (and may hold
    /// the links itself, on kernels that cannot pin them); `None` when the
    /// pins are reused: a program whose pinned links are missing is down
    /// then. Fails when a core program's link is missing (core links are
    /// pinned last, so a directory an agent left half pinned fails here).
    fn open_pinned(
        pins: &Pins,
        mode: CaptureMode,
        down: Option<&std::collections::BTreeSet<&'static str>>,
    ) -> Result<Probe> {
        let reused = down.is_none();
        if down.is_none() {
            // A detached link counts nothing: such a pin set is not reused
            // (its programs and maps are loaded afresh).
            let detached = guard::detached_links(pins);
            if !detached.is_empty() {
                anyhow::bail!("pinned links detached (they run no program): {detached:?}");
            }
        }
        let mut attached = Vec::new();
        let mut missing = std::collections::BTreeSet::new();
        for (category, tracepoint, program) in mode.hooks() {
            let up = match down {
                Some(down) => !down.contains(program),
                None => {
                    let path = pins.link(category, tracepoint);
                    let opened = PinnedLink::from_pin(&path)
                        .with_context(|| format!("opening pinned link {}", path.display()));
                    if is_core(program) {
                        opened?;
                        true
                    } else {
                        opened.is_ok()
                    }
                }
            };
            if up {
                attached.push(if *category == BTF {
                    format!("tp_btf:{tracepoint}")
                } else {
                    format!("tracepoint:{category}:{tracepoint}")
                });
            } else {
                missing.insert(*program);
            }
        }
        for (_, program) in mode.tail_called() {
            let up = match down {
                Some(down) => !down.contains(program),
                None => pins.program(program).exists(),
            };
            if !up {
                missing.insert(*program);
            }
        }
        let capabilities = mode
            .capabilities()
            .iter()
            .map(|c| (c.feature, c.programs.iter().all(|p| !missing.contains(p))))
            .chain([(SOCKET_CAPTURE, mode == CaptureMode::Socket)])
            .collect();
        let open = |name: &str| -> Result<(Map, u32)> {
            let path = pins.map(name);
            let data = MapData::from_pin(&path)
                .with_context(|| format!("opening pinned map {}", path.display()))?;
            let id = data.info()?.id();
            Ok((Map::from_map_data(data)?, id))
        };
        let (counts, counts_id) = open(names::COUNTS)?;
        let config: Array<MapData, AgentConfig> = Array::try_from(open(names::CONFIG)?.0)?;
        let config_value = config.get(&0, 0)?;
        let matches: BpfHashMap<MapData, MatchKey, u32> =
            BpfHashMap::try_from(open(names::MATCHES)?.0)?;
        // A restarted agent starts from what its predecessor left.
        let matches_now = matches.iter().filter_map(|e| e.ok()).collect();
        let counts: BpfHashMap<MapData, RequestKey, RequestStats> = BpfHashMap::try_from(counts)?;
        let conn_events: BpfHashMap<MapData, ConnEventKey, u64> =
            BpfHashMap::try_from(open(names::CONN_EVENTS)?.0)?;
        // The batch readers need the maps' descriptors (duplicated: aya keeps its own).
        let batch_fd = |map: &MapData| map.fd().as_fd().try_clone_to_owned();
        Ok(Probe {
            counts_batch: BatchReader::new(batch_fd(counts.map())?),
            series: BpfHashMap::try_from(open(names::SERIES)?.0)?,
            counts_keys: std::sync::Mutex::new(KnownCounts::default()),
            conn_events_batch: BatchReader::new(batch_fd(conn_events.map())?),
            counts,
            conn_events,
            counters: PerCpuArray::try_from(open(names::COUNTERS)?.0)?,
            config,
            config_value,
            service_ports: BpfHashMap::try_from(open(names::SERVICE_PORTS)?.0)?,
            matches,
            matches_now,
            pins: pins.clone(),
            mode,
            program_stats: ProgramStatsReader::open(pins, &stats_programs(mode)),
            attached,
            capabilities,
            counts_epoch: counts_epoch(counts_id),
            reused,
            _held_links: Vec::new(),
            guard: None,
            handoff: Vec::new(),
            broken: None,
            retries: 0,
        })
    }

    /// Checks the kernel side once (every poll): the pin root lock, every
    /// pin, every link, and the `CONFIG` map (see [`guard`] for what is
    /// repaired in place and what is not). `Ok(None)`: ready.
    /// `Ok(Some(why))`: not ready (a fault just repaired, or one that is
    /// not, for [`BROKEN_GRACE`]). `Err`: give up; the caller exits
    /// non-zero so that the agent is restarted.
    pub fn check_kernel_side(&mut self) -> Result<Option<String>> {
        if let Some((why, since)) = &self.broken {
            if since.elapsed() >= BROKEN_GRACE {
                return Err(anyhow!(
                    "{why}; exiting so that a restarted agent starts from a sound kernel side"
                ));
            }
            return Ok(Some(why.clone()));
        }
        let Some(guard) = self.guard.as_mut() else {
            return Ok(None);
        };
        let mut health = guard.check();
        if health == guard::Health::Fine
            && let Ok(now) = self.config.get(&0, 0)
            && now != self.config_value
        {
            // The kernel only reads CONFIG: another agent or tool wrote
            // it. Not restored: two writers would take turns (the pins are
            // intact, so exiting loses nothing: the restart reuses them).
            health = guard::Health::Broken(format!(
                "the kernel config (the CONFIG map under {}) was rewritten by another process: \
                 another agent or tool works on this pin root",
                self.pins.dir.display()
            ));
        }
        if let guard::Health::Retry(why) = &health {
            self.retries += 1;
            if self.retries < REPAIR_TRIES {
                warn!(
                    pins = %self.pins.root.display(),
                    "{why}; not ready, trying again at the next poll"
                );
                return Ok(Some(why.clone()));
            }
            health = guard::Health::Broken(format!("{why} ({REPAIR_TRIES} times in a row)"));
        } else {
            self.retries = 0;
        }
        match health {
            guard::Health::Fine => Ok(None),
            guard::Health::Retry(_) => unreachable!("handled above"),
            guard::Health::Repaired(what) => {
                error!(
                    pins = %self.pins.root.display(),
                    "{what} while the agent ran (`burnwatch uninstall --force`, rm, or another \
                     process): pinned again from the descriptors this agent holds; nothing was \
                     detached, counts continue"
                );
                Ok(Some(format!("pins repaired: {what}")))
            }
            guard::Health::Broken(why) => {
                error!(
                    pins = %self.pins.root.display(),
                    "kernel side broken: {why}; not ready, exiting in {} s for a restart",
                    BROKEN_GRACE.as_secs()
                );
                self.broken = Some((why.clone(), Instant::now()));
                Ok(Some(why))
            }
        }
    }

    /// Writes the kernel-side config in place (start and reload): the
    /// programs read `CONFIG` on every event, so no reload is needed.
    pub fn configure(&mut self, config: &AgentConfig, service_ports: &[(u16, u32)]) -> Result<()> {
        // A new match generation: connections ignored under the old config
        // are looked at again.
        let mut config = *config;
        config.match_generation = self.config_value.match_generation.wrapping_add(1);
        self.config
            .set(0, config, 0)
            .context("writing the CONFIG map")?;
        self.config_value = config;
        let stale: Vec<u16> = self
            .service_ports
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| !service_ports.iter().any(|(p, _)| p == k))
            .collect();
        for port in stale {
            let _ = self.service_ports.remove(&port);
        }
        for (port, id) in service_ports {
            self.service_ports
                .insert(port, id, 0)
                .context("writing SERVICE_PORTS")?;
        }
        Ok(())
    }

    /// Removes this agent's pins (`run --cleanup`, `uninstall`): the
    /// programs detach once this process exits.
    pub fn unpin(&self) -> Result<()> {
        pins::uninstall(&self.pins.root).map(|_| ())
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
            // The stored value changes only once the kernel has it: a failed
            // write must not look like another writer's to the guard.
            let mut config = self.config_value;
            config.match_generation = config.match_generation.wrapping_add(1);
            self.config
                .set(0, config, 0)
                .context("writing the CONFIG map")?;
            self.config_value = config;
        }
        Ok(())
    }

    /// Calls `f` with every request series the kernel has counted. The
    /// values are cumulative since the map was created.
    ///
    /// A batch read walks every bucket of `COUNTS` (65,536), whatever it
    /// holds: most of an idle agent's CPU. So while the map holds few keys
    /// and none was added since the last walk (the kernel's `SERIES_ALL`
    /// count is unchanged), each known key is looked up instead; the map
    /// is walked again every [`WALK_EVERY`] polls all the same (a key whose
    /// series the kernel failed to count is found then).
    pub fn read_counts(&self, mut f: impl FnMut(&RequestKey, &RequestStats)) -> Result<()> {
        let series = match self.series.get(&SERIES_ALL, 0) {
            Ok(n) => Some(n),
            // Created with the first series.
            Err(aya::maps::MapError::KeyNotFound) => Some(0),
            Err(_) => None,
        };
        let mut known = self.counts_keys.lock().unwrap_or_else(|e| e.into_inner());
        if known.can_look_up(series) {
            known.polls_since_walk += 1;
            let mut gone = false;
            for k in &known.keys {
                match self.counts.get(k, 0) {
                    Ok(v) => f(k, &v),
                    // The agent deletes no key: the map was replaced.
                    Err(aya::maps::MapError::KeyNotFound) => gone = true,
                    Err(e) => return Err(e.into()),
                }
            }
            if gone {
                known.series = None;
            }
            return Ok(());
        }
        known.start_walk();
        let KnownCounts { keys, overflow, .. } = &mut *known;
        let mut walked = |k: &RequestKey, v: &RequestStats| {
            if keys.len() < FEW_SERIES {
                keys.push(*k);
            } else {
                *overflow = true;
            }
            f(k, v)
        };
        if self
            .counts_batch
            .read(&mut walked)
            .context("reading COUNTS in batches")?
        {
            known.series = series;
            return Ok(());
        }
        // No batch reads on this kernel: the iterator below every time.
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
        if self
            .conn_events_batch
            .read(|k, v| f(k, *v))
            .context("reading CONN_EVENTS in batches")?
        {
            return Ok(());
        }
        for item in self.conn_events.iter() {
            match item {
                Ok((k, v)) => f(&k, v),
                Err(aya::maps::MapError::KeyNotFound) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Per program, since it was loaded: runs and run time (zero unless
    /// `kernel.bpf_stats_enabled` is 1: the kernel only times programs
    /// then), and runs the kernel skipped (counted always).
    pub fn bpf_stats(&self) -> Vec<ProgramStats> {
        self.program_stats.read()
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

/// What [`load_and_pin`] leaves: the links this process must hold (before
/// 5.15, tracepoints attach through perf events without a bpf link), and
/// the programs that did not load or attach.
struct Loaded {
    held: Vec<TracePointLink>,
    down: std::collections::BTreeSet<&'static str>,
}

/// Loads the eBPF object, verifies every program, attaches them all and pins
/// maps, programs, then links (last: a directory with every core link is
/// complete). An optional program that fails to verify or attach is logged
/// and left out (its capability is down); a core program's failure is the
/// error returned.
fn load_and_pin(pins: &Pins, mode: CaptureMode) -> Result<Loaded> {
    let mut loader = EbpfLoader::new();
    // On a refusal, aya loads again with a log: the statistics and the
    // verifier's reason are enough (a verbose log of a program near the
    // limit is hundreds of MiB, and each retry for a bigger buffer
    // verifies again).
    loader.verifier_log_level(VerifierLogLevel::STATS);
    if mode == CaptureMode::Socket {
        // The syscall path's connection maps are preallocated (tens of
        // MiB); the socket path keeps its state in the sockets.
        for map in [names::CONNS, "SOCKS"] {
            loader.map_max_entries(map, 1);
        }
    }
    let mut ebpf = loader
        .load(EBPF_OBJECT)
        .context("loading the eBPF object")?;
    let skip: Vec<String> = std::env::var(SKIP_PROGRAMS_ENV)
        .map(|v| v.split(',').map(|s| s.trim().to_string()).collect())
        .unwrap_or_default();
    let btf = if mode == CaptureMode::Socket {
        Some(aya::Btf::from_sys_fs().context("reading the kernel's BTF")?)
    } else {
        None
    };
    // The BTF tracepoint each program is verified for (tail-called ones:
    // the one they are called from).
    let btf_target = |name: &str| -> Option<&'static str> {
        mode.hooks()
            .iter()
            .find(|h| h.0 == BTF && h.2 == name)
            .map(|h| h.1)
            .or_else(|| {
                (mode == CaptureMode::Socket && mode.tail_called().iter().any(|t| t.1 == name))
                    .then_some(SOCKET_TAIL_TARGET)
            })
    };
    let mut down = std::collections::BTreeSet::new();
    // Verify every program first (seconds), then attach them all in one
    // quick pass: connections are never seen by half the probes.
    for name in mode.programs() {
        let loaded = if skip.iter().any(|s| s == name) {
            Err(anyhow!("not loaded: {SKIP_PROGRAMS_ENV} names it"))
        } else {
            let program = ebpf
                .program_mut(name)
                .ok_or_else(|| anyhow!("program {name} missing from the eBPF object"))?;
            let verified = match (btf_target(name), &btf) {
                (Some(target), Some(btf)) => {
                    let prog: &mut BtfTracePoint = program.try_into()?;
                    prog.load(target, btf)
                }
                _ => {
                    let prog: &mut TracePoint = program.try_into()?;
                    prog.load()
                }
            };
            verified
                .map_err(|e| anyhow!("the kernel verifier rejected it: {}", load_reason(&e)))
                .and_then(|()| {
                    ebpf.program_mut(name)
                        .expect("loaded above")
                        .pin(pins.program(name))
                        .with_context(|| format!("pinning program {name}"))
                })
        };
        if let Err(e) = loaded {
            degrade(name, &e)?;
            down.insert(name);
        }
    }
    for (slot, name) in mode.tail_called() {
        if down.contains(name) {
            continue;
        }
        let fd = ebpf
            .program(name)
            .ok_or_else(|| anyhow!("program {name} missing from the eBPF object"))?
            .fd()?
            .try_clone()?;
        let mut tails = ProgramArray::try_from(
            ebpf.map_mut(mode.tail_map())
                .ok_or_else(|| anyhow!("no {} map", mode.tail_map()))?,
        )?;
        if let Err(e) = tails.set(*slot, &fd, 0) {
            degrade(
                name,
                &anyhow::Error::from(e).context(format!("registering {name} for tail calls")),
            )?;
            down.insert(name);
        }
    }
    let mut links = Vec::new();
    for (category, tracepoint, name) in mode.hooks() {
        if down.contains(name) {
            continue;
        }
        let program = ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("program {name} missing"))?;
        let attached = if *category == BTF {
            let prog: &mut BtfTracePoint = program.try_into()?;
            prog.attach()
                .map_err(anyhow::Error::from)
                .and_then(|id| Ok(Link::Btf(FdLink::from(prog.take_link(id)?))))
        } else {
            let prog: &mut TracePoint = program.try_into()?;
            prog.attach(category, tracepoint)
                .map_err(anyhow::Error::from)
                .and_then(|id| Ok(Link::Perf(prog.take_link(id)?)))
        };
        match attached {
            Ok(link) => links.push((category, tracepoint, *name, link)),
            Err(e) => {
                degrade(
                    name,
                    &e.context(format!("attaching to tracepoint {category}:{tracepoint}")),
                )?;
                down.insert(name);
            }
        }
    }
    // A program down on one of its tracepoints is down: detach it from the
    // others (its capability counts nothing reliable half attached).
    links.retain(|(_, _, name, _)| !down.contains(name));
    // Sections like `.rodata` cannot be pinned (bpffs refuses the name) and
    // need not be: the programs hold them.
    for (name, map) in ebpf.maps().filter(|(name, _)| !name.starts_with('.')) {
        map.pin(pins.map(name))
            .with_context(|| format!("pinning map {name}"))?;
    }
    if !aya::features().bpf_perf_link() {
        warn!(
            "this kernel cannot pin tracepoint links (needs 5.15+): the programs detach when \
             the agent exits, and requests made while it restarts are not counted"
        );
        let mut held = Vec::new();
        for (category, tracepoint, _, link) in links {
            match link {
                Link::Perf(link) => held.push(link),
                Link::Btf(_) => {
                    bail!("tp_btf:{category}:{tracepoint} on a kernel without bpf links")
                }
            }
        }
        return Ok(Loaded { held, down });
    }
    // Core links last: a directory an agent left half pinned lacks one of
    // them, and is loaded again rather than reused.
    links.sort_by_key(|(_, _, name, _)| is_core(name));
    for (category, tracepoint, _, link) in links {
        let link = match link {
            Link::Perf(link) => FdLink::try_from(link)
                .with_context(|| format!("tracepoint {category}:{tracepoint} is not a bpf link"))?,
            Link::Btf(link) => link,
        };
        link.pin(pins.link(category, tracepoint))
            .with_context(|| format!("pinning the link of {category}:{tracepoint}"))?;
    }
    Ok(Loaded {
        held: Vec::new(),
        down,
    })
}

/// An attached program's link: a tracepoint's perf-event link, or a BTF
/// tracepoint's bpf link.
enum Link {
    Perf(TracePointLink),
    Btf(FdLink),
}

/// Why a program did not load, in one line: the syscall's error and the
/// first and last lines of the verifier's log.
fn load_reason(e: &ProgramError) -> String {
    match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => format!(
            "{io_error}: {}",
            verifier::reason(&verifier_log.to_string())
        ),
        other => other.to_string(),
    }
}

/// A program failed to load or attach: fatal for a core program (the
/// error says what and why); otherwise one warning that names the program,
/// the reason, and what is not counted as a result.
fn degrade(program: &'static str, e: &anyhow::Error) -> Result<()> {
    let capability = capability_of(program)
        .ok_or_else(|| anyhow!("program {program} serves no known capability"))?;
    if capability.is_core() {
        return Err(anyhow!(
            "eBPF program {program} (core: requests and status lines) cannot run on this kernel: {e:#}; \
             {}",
            capability.without
        ));
    }
    warn!(
        program,
        capability = capability.feature,
        "eBPF program {program} is not running ({e:#}): capability {} is down, {}",
        capability.feature,
        capability.without
    );
    Ok(())
}

/// The programs attached to tracepoints, each once.
fn stats_programs(mode: CaptureMode) -> Vec<&'static str> {
    let mut names: Vec<&'static str> = mode.hooks().iter().map(|t| t.2).collect();
    names.dedup();
    names
}

/// One eBPF program's statistics since it was loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgramStats {
    pub name: &'static str,
    pub runs: u64,
    pub run_ns: u64,
    /// Runs the kernel skipped because a BPF program was already running
    /// on that CPU: a socket-state or reset tracepoint that fired in an
    /// interrupt taken during one of the syscall programs. Each is an event
    /// the capture may have missed.
    pub recursion_misses: u64,
}

/// The boot id and the `COUNTS` map id: map ids are not reused within a boot.
fn counts_epoch(counts_map_id: u32) -> u64 {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let mut h = u64::from_str_radix(&pins::build_id(boot.trim().as_bytes()), 16).unwrap_or(0);
    h ^= u64::from(counts_map_id);
    h
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
    use super::{FEW_SERIES, KnownCounts, WALK_EVERY};

    #[test]
    fn known_counts_are_looked_up_only_while_no_series_was_added() {
        let mut known = KnownCounts::default();
        assert!(!known.can_look_up(Some(3)), "never walked");
        known.start_walk();
        known.series = Some(3);
        assert!(known.can_look_up(Some(3)));
        assert!(!known.can_look_up(Some(4)), "a series was added");
        assert!(!known.can_look_up(None), "the count could not be read");
        known.polls_since_walk = WALK_EVERY;
        assert!(!known.can_look_up(Some(3)), "walked again now and then");
        known.start_walk();
        known.series = Some(3);
        known.overflow = true;
        assert!(!known.can_look_up(Some(3)), "more than {FEW_SERIES} keys");
        known.start_walk();
        assert!(!known.can_look_up(None), "walked without a count");
    }

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

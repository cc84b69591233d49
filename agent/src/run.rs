//! `burnwatch run`: wires the stages together and runs until SIGINT/SIGTERM.

use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{Context, Result};
use burnwatch_common::http::{PATH_PREFIX_MAX, ParserConfig, tenant_source};
use burnwatch_common::maps::{AgentConfig, LATENCY_BUCKETS, config_flags, role};
use tracing::{error, info, warn};

use crate::attribution::ServiceNames;
use crate::attribution::pods::PodDirectory;
use crate::attribution::processes::ProcessMatcher;
use crate::config::{Config, TenantFrom};
use crate::engine::state::AgentState;
use crate::engine::{Sli, StateStore, TransitionKind};
use crate::probe::{self, Probe};
use crate::reload::{ConfigWatch, Running, reload};

/// Latency bucket bounds in seconds (the kernel classifies each request).
pub const LATENCY_BOUNDS_S: [f64; LATENCY_BUCKETS - 1] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// How often the kernel maps are read.
const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Longest wait at start for the Kubernetes pod index's first list.
const POD_INDEX_WAIT: Duration = Duration::from_secs(10);
/// How often the config file's metadata is checked for changes.
const CONFIG_WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// `cleanup`: on SIGTERM/SIGINT, also remove the pinned programs and maps
/// (without it they stay pinned and keep counting for the next agent).
pub fn run(config_path: Option<&Path>, cleanup: bool) -> Result<()> {
    let config = match config_path {
        Some(p) => Config::load(p)?,
        None => {
            info!("no --config given: watching every HTTP/1.x server on the node");
            Config::default()
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(run_async(config, config_path, cleanup))
}

/// What the kernel needs to know from the config.
pub fn kernel_config(config: &Config) -> Result<(AgentConfig, Vec<(u16, u32)>)> {
    let offsets = probe::kernel_offsets().context("reading kernel struct offsets from BTF")?;
    let mut parser = ParserConfig::header(config.tenant.header.as_bytes());
    parser.tenant_source = match config.tenant.from {
        TenantFrom::Header => tenant_source::HEADER,
        TenantFrom::Host => tenant_source::HOST_LABEL,
        TenantFrom::Path => tenant_source::PATH_SEGMENT,
        TenantFrom::None => tenant_source::NONE,
        // The tenant is the server pod's namespace (or its label), resolved
        // in userspace from the pod index, not from request bytes.
        TenantFrom::Namespace | TenantFrom::NamespaceLabel => tenant_source::NONE,
    };
    if let Some(prefix) = &config.tenant.path_prefix {
        let n = prefix.len().min(PATH_PREFIX_MAX);
        parser.path_prefix[..n].copy_from_slice(&prefix.as_bytes()[..n]);
        parser.path_prefix_len = n as u8;
    }
    let mut bounds = [0u64; LATENCY_BUCKETS - 1];
    for (b, s) in bounds.iter_mut().zip(latency_bounds(config)) {
        *b = (s * 1e9).round() as u64;
    }
    let mut flags = ProcessMatcher::new(config).flags();
    if config.services.is_empty() {
        flags |= config_flags::AUTO_SERVICES;
    }
    if !config.clients.is_empty() {
        flags |= config_flags::CLIENTS;
    }
    if crate::attribution::kubernetes::node_name().is_some() {
        // Series carry the serving pod (namespace, pod, workload).
        flags |= config_flags::KEY_BY_CGROUP;
    }
    // Services matched by port alone; the others go through `MATCHES`.
    let ports = config
        .services
        .iter()
        .enumerate()
        .filter(|(_, s)| s.matcher.is_port_only())
        .filter_map(|(i, s)| s.matcher.port.map(|p| (p, i as u32)))
        .collect();
    Ok((
        AgentConfig {
            offsets,
            flags,
            // A tenant has a few series (methods x statuses); the kernel's cap
            // only stops floods, the exact cap is applied in userspace.
            max_series_per_service: config.tenant.max_per_service.saturating_mul(16),
            parser,
            latency_bounds_ns: bounds,
            match_generation: 0,
            _pad: 0,
        },
        ports,
    ))
}

/// Latency bucket bounds (seconds): the defaults with every latency SLO's
/// threshold added, so the kernel classifies requests exactly at the
/// threshold. Defaults are dropped from the top to stay within the kernel's
/// bucket count.
pub fn latency_bounds(config: &Config) -> Vec<f64> {
    let thresholds: Vec<f64> = config
        .slo_set()
        .iter()
        .filter_map(|s| match &s.sli {
            Sli::Latency { threshold } => Some(threshold.as_secs_f64()),
            _ => None,
        })
        .collect();
    let mut bounds: Vec<f64> = LATENCY_BOUNDS_S.to_vec();
    for t in &thresholds {
        if !bounds.iter().any(|b| (b - t).abs() < 1e-9) {
            bounds.push(*t);
        }
    }
    bounds.sort_by(f64::total_cmp);
    while bounds.len() > LATENCY_BUCKETS - 1 {
        let drop = bounds
            .iter()
            .rposition(|b| !thresholds.iter().any(|t| (b - t).abs() < 1e-9))
            .unwrap_or(bounds.len() - 1);
        bounds.remove(drop);
    }
    bounds
}

pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Opens the state store and restores the engine; failures are logged and
/// the agent runs without checkpoints rather than not at all.
fn open_store(
    config: &Config,
    state: &RwLock<AgentState>,
    probe: &Probe,
) -> Option<Arc<StateStore>> {
    let dir = &config.state.dir;
    let mut st = state.write().unwrap_or_else(|e| e.into_inner());
    // `open` creates the directory (owner-only: the store holds tenant ids).
    let store = match StateStore::open(dir) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            st.resume(probe.counts_epoch, probe.reused, None);
            error!(dir = %dir.display(), "cannot open the state store, SLO windows will not survive a restart: {e}");
            return None;
        }
    };
    let cursor = match store.restore_with_cursor(&mut st.engine, unix_now()) {
        Ok((report, cursor)) => {
            info!(
                ?report,
                kernel_cursor = cursor.is_some(),
                "restored SLO state"
            );
            cursor
        }
        Err(e) => {
            warn!("could not restore SLO state: {e}");
            None
        }
    };
    st.resume(probe.counts_epoch, probe.reused, cursor);
    Some(store)
}

/// Time from the end of one checkpoint to the next: the configured interval,
/// stretched so saving takes at most [`CHECKPOINT_DUTY`] of the time. A save
/// walks every series and holds the state (polls wait for it): at 100,000
/// tenants x 2 SLOs it takes over a second, which every 10 s was ~13% of a
/// core. Stretching loses nothing: the kernel keeps counting in pinned maps
/// and the cursor saved with the windows says what they already hold, so
/// after a crash the requests since the last checkpoint are fed again, in
/// the current second rather than the second they arrived.
fn checkpoint_delay(configured: Duration, took: Duration) -> Duration {
    configured.max(took.mul_f64(1.0 / CHECKPOINT_DUTY))
}

/// Largest share of time spent saving checkpoints (see [`checkpoint_delay`]).
const CHECKPOINT_DUTY: f64 = 0.02;

fn checkpoint(store: &StateStore, state: &RwLock<AgentState>) {
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    /// Checkpoints failed in a row (a full disk, a read-only volume).
    static FAILING: AtomicU64 = AtomicU64::new(0);
    let st = state.read().unwrap_or_else(|e| e.into_inner());
    let cursor = st.kernel_cursor();
    match store.save_with_cursor(&st.engine, Some(&cursor), unix_now()) {
        Ok(()) => {
            let failed = FAILING.swap(0, Relaxed);
            if failed > 0 {
                info!(failed, "SLO checkpoints succeed again");
            }
        }
        Err(e) => {
            FAILING.fetch_add(1, Relaxed);
            warn!(
                "SLO checkpoint failed (the windows stay in memory; the next checkpoint tries again): {e}"
            );
        }
    }
}

async fn run_async(config: Config, config_path: Option<&Path>, cleanup: bool) -> Result<()> {
    // Bind first: a taken port is reported before any program is loaded.
    // Taken by an agent on this very pin root (the same config started
    // twice): say that, it is the real problem.
    let listener = match crate::api::bind(config.exporters.prometheus.listen).await {
        Ok(l) => l,
        Err(e) => {
            let root = &config.state.bpffs_dir;
            if let Ok(probe::lock::TryLock::Held(holder)) = probe::lock::PinRootLock::try_lock(root)
            {
                return Err(e.context(probe::lock::in_use(root, holder)));
            }
            return Err(e);
        }
    };
    let (mut config, hasher) = crate::export::tenant_hashing(config)?;
    let (kcfg, ports) = kernel_config(&config)?;
    let mut probe = Probe::load(
        &kcfg,
        &ports,
        &config.state.bpffs_dir,
        config.capture.mode.forced(),
    )?;
    // Pod and namespace index (Kubernetes only; logs once and carries on
    // without an API), joined to the kernel's cgroup ids.
    let mut pods = PodDirectory::new(
        crate::attribution::kubernetes::spawn_from_env(),
        crate::attribution::processes::cgroup_v2_root(),
    );
    let mut matcher = ProcessMatcher::new(&config);
    if let Err(e) = probe.sync_matches(&matcher.entries(&pods)) {
        warn!("writing process matchers: {e:#}");
    }

    let state = Arc::new(RwLock::new(AgentState::new(
        config.tenant.max_per_service,
        probe.attached.clone(),
        latency_bounds(&config),
        config.slo_set(),
    )));
    {
        let mut st = state.write().unwrap_or_else(|e| e.into_inner());
        st.capabilities = probe.capabilities.clone();
        if let Some(h) = hasher {
            st.requests.set_tenant_hasher(h);
        }
        st.requests.set_tenant_rule(&config.tenant);
    }
    let stats = Arc::new(crate::export::SelfStats::default());
    let mut sinks = crate::export::AlertSinks::start(&config, &state, &stats)?;
    let store = open_store(&config, &state, &probe);
    let mut next_checkpoint =
        tokio::time::Instant::now() + Duration::from_secs(config.state.checkpoint_interval_secs);
    let mut checkpoint_stretched = false;
    info!(
        listen = %config.exporters.prometheus.listen,
        "serving /metrics"
    );
    let server = tokio::spawn(crate::api::serve(
        listener,
        crate::api::router(
            state.clone(),
            stats.clone(),
            config.exporters.labels.pairs(),
        ),
        stats.clone(),
        config.api.clone(),
    ));

    let mut names = ServiceNames::new(config.services.iter().map(|s| s.name.clone()))
        .with_clients(config.clients.iter().map(|s| s.name.clone()));
    let mut missing: Arc<str> = Arc::from(config.tenant.missing.as_str());
    // Kubernetes: series are named after the serving pod (service, and
    // tenant for `tenant.from: namespace`). Resolved before the pod index
    // has listed this node's pods, the first feed would give them other
    // labels than the checkpoint's cursor has, and feed them again. A
    // bounded wait: without an API the agent carries on (it logs why).
    let waited = std::time::Instant::now();
    while !pods.synced() && waited.elapsed() < POD_INDEX_WAIT {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if !pods.synced() {
        warn!(
            waited_secs = POD_INDEX_WAIT.as_secs(),
            "the pod index has not listed this node's pods yet: requests until it has are named without their pods"
        );
    }
    pods.refresh(std::time::Instant::now());
    for h in std::mem::take(&mut probe.handoff) {
        let mut st = state.write().unwrap_or_else(|e| e.into_inner());
        for (k, v) in &h.counts {
            if k.role != role::CLIENT {
                st.requests.add(k, v, &mut names, &missing, &pods);
            }
        }
        st.feed_handoff(h.epoch, unix_now());
        st.requests.reset(config.tenant.max_per_service, false);
    }
    let mut tick = tokio::time::interval(POLL_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut sighup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let mut watch = config_path.map(ConfigWatch::new);
    let mut watch_tick = tokio::time::interval(CONFIG_WATCH_INTERVAL);
    // Set when the agent must exit non-zero (its kernel side is broken).
    let mut exit_error = None;
    loop {
        let mut reload_why = None;
        tokio::select! {
            _ = sighup.recv() => {
                if watch.is_some() {
                    reload_why = Some("SIGHUP");
                } else {
                    warn!("SIGHUP: no --config file to reload");
                }
            }
            _ = watch_tick.tick(), if watch.is_some() => {
                if watch.as_mut().is_some_and(ConfigWatch::changed) {
                    reload_why = Some("file changed");
                }
            }
            _ = tick.tick() => {
                let pods_changed = pods.refresh(std::time::Instant::now());
                if (matcher.is_dynamic() || pods_changed)
                    && let Err(e) = probe.sync_matches(&matcher.entries(&pods))
                {
                    warn!("writing process matchers: {e:#}");
                }
                let started = std::time::Instant::now();
                match poll(&probe, &state, &mut names, &missing, &pods, &stats) {
                    Ok(transitions) => sinks.send(&state, &transitions),
                    Err(e) => warn!("reading kernel maps: {e:#}"),
                }
                stats.poll_ns.store(started.elapsed().as_nanos() as u64, std::sync::atomic::Ordering::Relaxed);
                // Pin root lock, pins, links, kernel config (probe::guard):
                // not ready while unsound; Err exits non-zero for a restart.
                match probe.check_kernel_side() {
                    Ok(trouble) => state.write().unwrap_or_else(|e| e.into_inner()).kernel_trouble = trouble,
                    Err(e) => {
                        // Out through the last read and checkpoint below:
                        // what was counted so far is saved before the exit.
                        exit_error = Some(e);
                        break;
                    }
                }
            }
            _ = tokio::time::sleep_until(next_checkpoint), if store.is_some() => {
                let (store, state) = (store.clone().expect("checked"), state.clone());
                // Saving walks every series: off the async workers.
                let started = tokio::time::Instant::now();
                let _ = tokio::task::spawn_blocking(move || checkpoint(&store, &state)).await;
                let took = started.elapsed();
                // Read each time: a reload may change it.
                let checkpoint_every = Duration::from_secs(config.state.checkpoint_interval_secs);
                let delay = checkpoint_delay(checkpoint_every, took);
                if delay > checkpoint_every && !checkpoint_stretched {
                    checkpoint_stretched = true;
                    info!(
                        took_ms = took.as_millis() as u64,
                        every_secs = delay.as_secs(),
                        "SLO checkpoints spaced out: saving takes long at this many series (counts stay exact across restarts; only the time of the requests since the last checkpoint is approximate)"
                    );
                }
                next_checkpoint = tokio::time::Instant::now() + delay;
            }
            _ = tokio::signal::ctrl_c() => { info!("SIGINT: stopping"); break; }
            _ = sigterm.recv() => { info!("SIGTERM: stopping"); break; }
            r = &mut Box::pin(async { server.is_finished() }) , if server.is_finished() => {
                let _ = r;
                anyhow::bail!("HTTP server stopped");
            }
        }
        if let (Some(why), Some(w)) = (reload_why, &watch) {
            // Everything counted so far is fed under the labels it was
            // counted with: a reload that relabels series starts them from
            // the totals it finds (`AgentState::reconfigure`).
            if let Err(e) = poll(&probe, &state, &mut names, &missing, &pods, &stats) {
                warn!("reading kernel maps: {e:#}");
            }
            let running = Running {
                config: &mut config,
                probe: &mut probe,
                state: &state,
                names: &mut names,
                missing: &mut missing,
                matcher: &mut matcher,
                pods: &pods,
                sinks: &mut sinks,
                stats: &stats,
            };
            if reload(w.path(), why, running)
                && let Err(e) = poll(&probe, &state, &mut names, &missing, &pods, &stats)
            {
                warn!("reading kernel maps: {e:#}");
            }
        }
    }
    // A last read, so the checkpoint holds every request counted so far.
    if let Err(e) = poll(&probe, &state, &mut names, &missing, &pods, &stats) {
        warn!("reading kernel maps: {e:#}");
    }
    if let Some(store) = &store {
        checkpoint(store, &state);
        info!("SLO state saved");
    }
    sinks.shutdown().await;
    if let Some(e) = exit_error {
        return Err(e);
    }
    if cleanup {
        probe.unpin()?;
        info!("--cleanup: pins removed, programs detach as the agent exits");
    } else {
        info!(
            "programs stay attached and pinned: the next agent continues the counts (`burnwatch uninstall` removes them)"
        );
    }
    Ok(())
}

/// One read of the kernel maps into the shared state.
fn poll(
    probe: &Probe,
    state: &RwLock<AgentState>,
    names: &mut ServiceNames,
    missing: &Arc<str>,
    pods: &PodDirectory,
    stats: &crate::export::SelfStats,
) -> Result<Vec<crate::engine::AlertTransition>> {
    use std::sync::atomic::Ordering::Relaxed;
    let counters = probe.read_counters()?;
    let bpf_stats = probe.bpf_stats();
    let mut st = state.write().unwrap_or_else(|e| e.into_inner());
    st.requests.begin_update();
    st.clients.begin_update();
    let mut result = Ok(());
    {
        let AgentState {
            requests, clients, ..
        } = &mut *st;
        let mut entries = 0;
        if let Err(e) = probe.read_counts(|k, v| {
            entries += 1;
            if k.role == role::CLIENT {
                clients.add(k, v, names, missing, pods);
            } else {
                requests.add(k, v, names, missing, pods);
            }
        }) {
            result = Err(e);
        }
        stats.counts_entries.store(entries, Relaxed);
    }
    let counts_read = result.is_ok();
    st.conn_events.begin_update();
    {
        let events = &mut st.conn_events;
        let mut entries = 0;
        if let Err(e) = probe.read_conn_events(|k, v| {
            entries += 1;
            events.add(k, v, names)
        }) {
            result = Err(e);
        }
        stats.conn_events_entries.store(entries, Relaxed);
    }
    st.capture_counters = counters;
    st.bpf_stats = bpf_stats;
    let now = unix_now();
    let evaluation = std::time::Instant::now();
    // A read cut short sums only part of the series: feeding it would take
    // the missing part for new requests at the next complete read.
    if counts_read {
        st.feed_engine(now);
    }
    let transitions = st.engine.evaluate(now);
    stats
        .evaluation_ns
        .store(evaluation.elapsed().as_nanos() as u64, Relaxed);
    for t in &transitions {
        let what = match t.kind {
            TransitionKind::Fired => "fired",
            TransitionKind::Resolved => "resolved",
            TransitionKind::Escalated => "escalated",
            TransitionKind::Deescalated => "de-escalated",
        };
        info!(
            slo = %t.slo_name,
            tenant = %t.tenant,
            tier = %t.tier,
            long_burn = t.long_burn,
            short_burn = t.short_burn,
            "SLO alert {what}"
        );
    }
    let st = &mut *st;
    st.history.update(&st.engine, now);
    st.polls += 1;
    result.map(|()| transitions)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_take_at_most_two_percent_of_the_time() {
        let every = Duration::from_secs(10);
        // Fast saves keep the configured interval.
        assert_eq!(checkpoint_delay(every, Duration::from_millis(150)), every);
        assert_eq!(checkpoint_delay(every, Duration::from_millis(200)), every);
        // A 1.3 s save (100,000 tenants x 2 SLOs) waits 65 s for the next one.
        assert_eq!(
            checkpoint_delay(every, Duration::from_millis(1_300)),
            Duration::from_secs(65)
        );
    }
}

//! Config reload while the agent runs (SIGHUP, or the file changing on
//! disk): a valid new config is applied in place, an invalid one is
//! rejected with its file:line: field error and the running config stays.
//!
//! Applied in place: services, tenant settings and the latency buckets go to
//! the kernel's `CONFIG` and `SERVICE_PORTS` maps (the programs read them on
//! every event, nothing is reloaded or re-attached); SLOs go to the engine,
//! where SLOs with an unchanged definition keep their windows. The listen
//! address and the state and pin directories need a restart.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use anyhow::Result;
use tracing::{error, info, warn};

use crate::attribution::ServiceNames;
use crate::attribution::pods::PodDirectory;
use crate::attribution::processes::ProcessMatcher;
use crate::config::Config;
use crate::engine::state::AgentState;
use crate::probe::Probe;

/// Watches one config file by polling its metadata (cheap, works on every
/// filesystem and with ConfigMap symlink swaps, where inotify on the file
/// would watch a link that is replaced).
pub struct ConfigWatch {
    path: PathBuf,
    stamp: Option<(SystemTime, u64, u64)>,
    /// A change seen at the last check, not reported until the file holds
    /// still for one more check: an editor or a `>` redirect writing the
    /// file in pieces is not reloaded half-written.
    settling: bool,
}

impl ConfigWatch {
    pub fn new(path: &Path) -> ConfigWatch {
        ConfigWatch {
            path: path.to_path_buf(),
            stamp: stamp(path),
            settling: false,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the file changed since it was last reported (or since
    /// `new`) and has not changed since the previous call.
    pub fn changed(&mut self) -> bool {
        let now = stamp(&self.path);
        if now != self.stamp {
            self.stamp = now;
            self.settling = now.is_some();
            return false;
        }
        std::mem::take(&mut self.settling)
    }
}

/// (modification time, size, inode): a rename over the file changes the inode
/// even within one mtime tick.
fn stamp(path: &Path) -> Option<(SystemTime, u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

/// What a running agent may change on reload.
pub struct Running<'a> {
    pub config: &'a mut Config,
    pub probe: &'a mut Probe,
    pub state: &'a Arc<RwLock<AgentState>>,
    pub names: &'a mut ServiceNames,
    pub missing: &'a mut Arc<str>,
    pub matcher: &'a mut ProcessMatcher,
    pub pods: &'a PodDirectory,
    pub sinks: &'a mut crate::export::AlertSinks,
    pub stats: &'a Arc<crate::export::SelfStats>,
}

/// Loads `path` and applies it; on any error the running config stays and
/// the error is logged. Returns whether the new config was applied.
pub fn reload(path: &Path, why: &str, running: Running<'_>) -> bool {
    let mut new = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            error!("config reload ({why}) rejected, the running config stays: {e}");
            return false;
        }
    };
    // Tenant hashing needs a restart (new pseudonyms would start every
    // tenant's history over): the new config is hashed as the running one.
    let old = &*running.config;
    if (&new.tenant.hash, &new.tenant.hash_key_file)
        != (&old.tenant.hash, &old.tenant.hash_key_file)
    {
        warn!(
            "config reload: tenant.hash / tenant.hash_key_file changed; they take effect at the next restart"
        );
        new.tenant.hash = old.tenant.hash;
        new.tenant.hash_key_file = old.tenant.hash_key_file.clone();
    }
    let new = match crate::export::tenant_hashing(new) {
        Ok((c, _)) => c,
        Err(e) => {
            error!("config reload ({why}) rejected, the running config stays: {e:#}");
            return false;
        }
    };
    if new == *running.config {
        info!("config reload ({why}): no change");
        return true;
    }
    match apply(new, running) {
        Ok(()) => {
            info!("config reload ({why}): applied {}", path.display());
            true
        }
        Err(e) => {
            error!("config reload ({why}) failed, the running config stays: {e:#}");
            false
        }
    }
}

fn apply(mut new: Config, r: Running<'_>) -> Result<()> {
    let old = &*r.config;
    for (what, changed) in [
        (
            "exporters.prometheus.listen",
            new.exporters.prometheus.listen != old.exporters.prometheus.listen,
        ),
        ("state.dir", new.state.dir != old.state.dir),
        (
            "state.bpffs_dir",
            new.state.bpffs_dir != old.state.bpffs_dir,
        ),
        (
            "exporters.labels (on /metrics; OTLP and Alertmanager take them now)",
            new.exporters.labels != old.exporters.labels,
        ),
        (
            "api (the token and certificate files' contents are re-read as they change; the paths need a restart)",
            new.api != old.api,
        ),
        ("capture.mode", new.capture != old.capture),
    ] {
        if changed {
            warn!("config reload: {what} changed; it takes effect at the next restart");
        }
    }
    // Kept as running, so the next reload compares against what runs.
    new.exporters.prometheus.listen = old.exporters.prometheus.listen;
    new.state.dir = old.state.dir.clone();
    new.state.bpffs_dir = old.state.bpffs_dir.clone();
    new.api = old.api.clone();
    new.capture = old.capture.clone();

    // Everything that can fail first: a half-applied config is not applied.
    let (kcfg, ports) = crate::run::kernel_config(&new)?;
    r.probe.configure(&kcfg, &ports)?;
    *r.matcher = ProcessMatcher::new(&new);
    r.probe.sync_matches(&r.matcher.entries(r.pods))?;
    r.sinks.reconfigure(old, &new, r.state, r.stats)?;
    *r.names = ServiceNames::new(new.services.iter().map(|s| s.name.clone()))
        .with_clients(new.clients.iter().map(|s| s.name.clone()));
    *r.missing = Arc::from(new.tenant.missing.as_str());
    let report = {
        let mut st = r.state.write().unwrap_or_else(|e| e.into_inner());
        let now = st.now;
        st.requests.set_tenant_rule(&new.tenant);
        // Other tenant ids: the admitted ones mean nothing any more.
        let (o, n) = (&old.tenant, &new.tenant);
        let forget_tenants = (&o.from, &o.header, &o.path_prefix, &o.label)
            != (&n.from, &n.header, &n.path_prefix, &n.label);
        let relabel = o != n || old.services != new.services;
        st.reconfigure(
            new.slo_set(),
            new.tenant.max_per_service,
            forget_tenants,
            relabel,
            crate::run::latency_bounds(&new),
            now,
        )
    };
    info!(
        kept_slos = report.kept.len(),
        kept_series = report.kept_series,
        dropped_series = report.dropped_series,
        reset_period_history = report.reset_period_history,
        "SLO windows carried over"
    );
    *r.config = new;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("bw-reload-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("burnwatch.yaml")
    }

    #[test]
    fn an_empty_or_comment_only_file_is_an_error_not_the_defaults() {
        let path = temp("empty");
        for text in ["", "\n  \n", "# all commented out\n#slos: []\n", "---\n"] {
            std::fs::write(&path, text).unwrap();
            let e = Config::load(&path).expect_err(text);
            assert!(e.to_string().contains("empty"), "{e}");
            assert!(e.to_string().contains("burnwatch.yaml"), "{e}");
        }
        std::fs::write(&path, "tenant:\n  header: X-Org\n").unwrap();
        assert_eq!(Config::load(&path).unwrap().tenant.header, "X-Org");
    }

    #[test]
    fn a_change_is_reported_once_the_file_holds_still() {
        let path = temp("watch");
        std::fs::write(&path, "tenant:\n  header: X-A\n").unwrap();
        let mut w = ConfigWatch::new(&path);
        assert!(!w.changed());
        // Written in two pieces, checked between them: not reported yet.
        std::fs::write(&path, "tenant:\n").unwrap();
        assert!(!w.changed());
        std::fs::write(&path, "tenant:\n  header: X-Bee\n").unwrap();
        assert!(!w.changed());
        // Unchanged since the last check: now.
        assert!(w.changed());
        assert!(!w.changed());
        // Removed: nothing to reload.
        std::fs::remove_file(&path).unwrap();
        assert!(!w.changed());
        assert!(!w.changed());
    }
}

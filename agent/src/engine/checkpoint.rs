//! Durable engine state in `dir/state.redb` (redb: crash-safe, copy-on-write B-trees,
//! every commit is atomic and fsynced).
//!
//! Layout: table `meta` (format version, config fingerprint, save time), table
//! `slo_data_fingerprints` (per SLO name: hash of what gives its counts their meaning),
//! table `series` keyed by (SLO name, tenant) holding [`super::codec`] records.
//!
//! Robustness rules:
//! * A file redb cannot open, whose integrity check fails, whose format version differs,
//!   or whose records do not decode is *unusable*: it is renamed to
//!   `state.redb.corrupt-<unix secs>` and a fresh store is created. The
//!   [`RestoreReport`] says why. Nothing is restored from it (restores are all or
//!   nothing: every record is decoded before the engine is touched).
//! * A store locked by another live process is an error, not "corrupt": renaming it would
//!   hide the real problem (two agents on one node).
//! * redb is opened with `set_check_integrity_on_open` (a plain open may panic on a file
//!   altered outside redb) and every call touching file contents runs under
//!   `catch_unwind` as a second line of defence, so a bad file never becomes a crash loop.
//! * Series whose SLO is no longer configured are dropped; series whose SLO changed
//!   meaning (service or SLI definition) are dropped; a series whose period changed
//!   (e.g. 30d -> 28d) keeps its fixed windows and restarts its period history.
//! * Buckets are indexed by absolute time, so a restore only advances the rings to
//!   `now`: the downtime reads as a gap with no data.

use std::collections::HashMap;
use std::fs;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use redb::{
    Database, DatabaseError, ReadableDatabase, ReadableTable, StorageError, TableDefinition,
    TableError,
};
use serde::Serialize;
use thiserror::Error;

use super::Engine;
use super::codec::{self, StoredSeries};
use super::period::Period;
use super::series::{Buffers, PeriodBuffer, Series, allowed_error_ratio};

/// Bumped whenever the codec layout or table layout changes.
pub const FORMAT_VERSION: u64 = 1;
const FILE_NAME: &str = "state.redb";
/// redb's default page cache is 1 GiB; the agent reads the file once at start and
/// writes it periodically, so a small cache is enough.
const CACHE_BYTES: usize = 2 * 1024 * 1024;

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const SLO_FINGERPRINTS: TableDefinition<&str, u64> = TableDefinition::new("slo_data_fingerprints");
const SERIES: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("series");
/// Kernel counts the engine has consumed, per (SLO name, tenant): (good, bad).
const KERNEL_CURSOR: TableDefinition<(&str, &str), (u64, u64)> =
    TableDefinition::new("kernel_cursor");
/// (service, admission rank) -> tenant: see `KernelCursor::admitted`.
const ADMITTED: TableDefinition<(&str, u64), &str> = TableDefinition::new("admitted_tenants");

/// The kernel's cumulative counts the engine had consumed when its windows
/// were saved. Saved in the same transaction as the windows, so after a
/// crash the next poll feeds exactly the requests the restored windows lack
/// (the kernel kept counting in pinned maps meanwhile).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelCursor {
    /// Which generation of kernel maps the counts were read from.
    pub epoch: u64,
    /// (SLO name, tenant, good, bad), cumulative.
    pub consumed: Vec<(String, String, u64, u64)>,
    /// SLO name -> data fingerprint of the SLOs the cursor covers (a tenant
    /// of a covered SLO missing from `consumed` had no requests yet).
    pub slos: HashMap<String, u64>,
    /// (service, tenants admitted under `tenant.max_per_service`, in
    /// admission order): admission stays stable across restarts.
    pub admitted: Vec<(String, Vec<String>)>,
}

#[derive(Debug, Error)]
pub enum CheckpointError {
    #[error("state store I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("state store error: {0}")]
    Db(#[from] redb::Error),
    #[error("state store {0} is locked by another process")]
    Locked(PathBuf),
}

macro_rules! redb_errors_into_checkpoint_error {
    ($($t:ty),*) => {$(
        impl From<$t> for CheckpointError {
            fn from(e: $t) -> Self {
                CheckpointError::Db(redb::Error::from(e))
            }
        }
    )*};
}
redb_errors_into_checkpoint_error!(
    redb::TransactionError,
    redb::TableError,
    redb::CommitError,
    redb::StorageError,
    redb::DatabaseError
);

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum RestoreOutcome {
    /// State was loaded.
    Restored,
    /// The store holds no state yet.
    Empty,
    /// The file was unusable and was moved away; the engine starts empty.
    SetAside { reason: String, moved_to: PathBuf },
}

/// What `restore` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RestoreReport {
    pub outcome: RestoreOutcome,
    pub saved_at: Option<u64>,
    /// Seconds between the save and this restore (read as "no data").
    pub gap_secs: Option<u64>,
    /// The SLO config differs from the one the state was saved with.
    pub config_changed: bool,
    pub restored_series: usize,
    pub dropped_unknown_slo: usize,
    pub dropped_changed_sli: usize,
    /// Series whose period length or kind changed: fixed windows kept, period restarted.
    pub reset_period_history: usize,
    pub alerts_restored: usize,
}

impl RestoreReport {
    fn new(outcome: RestoreOutcome) -> Self {
        Self {
            outcome,
            saved_at: None,
            gap_secs: None,
            config_changed: false,
            restored_series: 0,
            dropped_unknown_slo: 0,
            dropped_changed_sli: 0,
            reset_period_history: 0,
            alerts_restored: 0,
        }
    }
}

/// The engine's state file.
pub struct StateStore {
    path: PathBuf,
    db: Mutex<Option<Database>>,
    /// Inode of the file `db` has open: a file removed or replaced under the
    /// running agent is noticed at the next save and written anew.
    inode: std::sync::atomic::AtomicU64,
    /// Set when `open` had to move an unusable file away; reported by the next restore.
    set_aside_at_open: Mutex<Option<RestoreOutcome>>,
}

/// Why a file could not be used.
enum Unusable {
    /// Move it aside and start fresh.
    Bad(String),
    /// Leave it alone and report the error.
    Fatal(CheckpointError),
}

impl StateStore {
    /// Opens (or creates) `dir/state.redb`. An unusable file is moved aside and replaced
    /// by an empty one; the next [`StateStore::restore`] reports it.
    pub fn open(dir: &Path) -> Result<StateStore, CheckpointError> {
        // The store holds tenant ids: owner-only, as the file itself.
        std::os::unix::fs::DirBuilderExt::mode(fs::DirBuilder::new().recursive(true), 0o700)
            .create(dir)?;
        let path = dir.join(FILE_NAME);
        let (db, aside) = match open_db(&path) {
            Ok(db) => (db, None),
            Err(Unusable::Fatal(e)) => return Err(e),
            Err(Unusable::Bad(reason)) => {
                let moved_to = set_aside(&path, wall_clock_secs())?;
                let db = open_db(&path).map_err(Unusable::into_error)?;
                (db, Some(RestoreOutcome::SetAside { reason, moved_to }))
            }
        };
        let store = StateStore {
            path,
            db: Mutex::new(Some(db)),
            inode: Default::default(),
            set_aside_at_open: Mutex::new(aside),
        };
        store.opened()?;
        Ok(store)
    }

    /// Writes every series, the format version and the config fingerprints in one
    /// atomic transaction (replacing the previous state).
    pub fn save(&self, engine: &Engine, now: u64) -> Result<(), CheckpointError> {
        self.save_with_cursor(engine, None, now)
    }

    /// [`StateStore::save`] plus the kernel counts the engine has consumed,
    /// in the same atomic transaction.
    pub fn save_with_cursor(
        &self,
        engine: &Engine,
        cursor: Option<&KernelCursor>,
        now: u64,
    ) -> Result<(), CheckpointError> {
        let mut guard = self.lock_db()?;
        if !self.still_ours() {
            // Removed or replaced under the running agent: write a new one
            // (the windows are all in memory, nothing is lost).
            tracing::warn!(path = %self.path.display(), "the state file was removed or replaced; writing it anew");
            *guard = None;
            *guard = Some(open_db(&self.path).map_err(Unusable::into_error)?);
            self.opened()?;
        }
        let Some(db) = guard.as_mut() else {
            return Err(CheckpointError::Locked(self.path.clone()));
        };
        let saved = Self::write(db, engine, cursor, now);
        if saved.is_err() {
            // redb refuses every later write after an I/O error (a full
            // disk): closed here, the next save opens the file again (redb
            // recovers the last committed state) and succeeds once the
            // disk has room.
            *guard = None;
        }
        saved
    }

    fn write(
        db: &mut Database,
        engine: &Engine,
        cursor: Option<&KernelCursor>,
        now: u64,
    ) -> Result<(), CheckpointError> {
        let txn = db.begin_write()?;
        txn.delete_table(SERIES)?;
        txn.delete_table(SLO_FINGERPRINTS)?;
        txn.delete_table(KERNEL_CURSOR)?;
        txn.delete_table(ADMITTED)?;
        {
            let mut kernel = txn.open_table(KERNEL_CURSOR)?;
            let mut admitted = txn.open_table(ADMITTED)?;
            if let Some(cursor) = cursor {
                for (slo, tenant, good, bad) in &cursor.consumed {
                    kernel.insert((slo.as_str(), tenant.as_str()), (*good, *bad))?;
                }
                for (service, tenants) in &cursor.admitted {
                    for (rank, tenant) in tenants.iter().enumerate() {
                        admitted.insert((service.as_str(), rank as u64), tenant.as_str())?;
                    }
                }
            }
        }
        {
            let mut meta = txn.open_table(META)?;
            meta.insert("format_version", FORMAT_VERSION)?;
            meta.insert("config_fingerprint", engine.slos().fingerprint)?;
            meta.insert("saved_at", now)?;
            match cursor {
                Some(c) => meta.insert("kernel_epoch", c.epoch)?,
                None => meta.remove("kernel_epoch")?,
            };
            let mut fingerprints = txn.open_table(SLO_FINGERPRINTS)?;
            for slo in engine.slos().iter() {
                fingerprints.insert(&*slo.name, slo.data_fingerprint)?;
            }
            let mut table = txn.open_table(SERIES)?;
            // Inserting in key order appends to the B-tree instead of splitting pages all
            // over it, which keeps pages full (about half the file size) and is faster.
            let mut order: Vec<(&str, &str, &Series)> = engine
                .all_series()
                .iter()
                .filter_map(|s| Some((&*engine.slos().get(s.slo)?.name, &*s.tenant, s)))
                .collect();
            order.sort_unstable_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
            let mut buf = Vec::with_capacity(5 * 1024);
            for (slo_name, tenant, series) in order {
                let Some(slo) = engine.slos().get(series.slo) else {
                    continue;
                };
                buf.clear();
                codec::encode(series, slo, &mut buf);
                table.insert((slo_name, tenant), buf.as_slice())?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Loads the saved state into `engine` (replacing series with the same key) and
    /// advances it to `now`. Unusable files are moved aside and reported, not returned as
    /// errors; `Err` means the store itself cannot work (I/O failure, locked).
    pub fn restore(&self, engine: &mut Engine, now: u64) -> Result<RestoreReport, CheckpointError> {
        self.restore_with_cursor(engine, now)
            .map(|(report, _)| report)
    }

    /// [`StateStore::restore`], plus the kernel cursor saved with the windows
    /// (`None` when nothing was restored or none was saved).
    pub fn restore_with_cursor(
        &self,
        engine: &mut Engine,
        now: u64,
    ) -> Result<(RestoreReport, Option<KernelCursor>), CheckpointError> {
        let aside = self
            .set_aside_at_open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(outcome) = aside {
            // The file was replaced by an empty one at open: nothing to load.
            return Ok((RestoreReport::new(outcome), None));
        }
        let mut guard = self.lock_db()?;
        let Some(db) = guard.as_ref() else {
            return Err(CheckpointError::Locked(self.path.clone()));
        };
        let read = catch_unwind(AssertUnwindSafe(|| read_state(db))).unwrap_or_else(|_| {
            Err(Unusable::Bad(
                "the state store panicked while reading".into(),
            ))
        });
        match read {
            Ok(None) => Ok((RestoreReport::new(RestoreOutcome::Empty), None)),
            Ok(Some(mut state)) => {
                let cursor = state.cursor.take();
                Ok((apply(state, engine, now), cursor))
            }
            Err(Unusable::Fatal(e)) => Err(e),
            Err(Unusable::Bad(reason)) => {
                // Close the file before moving it (required on some platforms).
                *guard = None;
                let moved_to = set_aside(&self.path, now)?;
                *guard = Some(open_db(&self.path).map_err(Unusable::into_error)?);
                self.opened()?;
                Ok((
                    RestoreReport::new(RestoreOutcome::SetAside { reason, moved_to }),
                    None,
                ))
            }
        }
    }

    fn lock_db(&self) -> Result<MutexGuard<'_, Option<Database>>, CheckpointError> {
        let mut guard = self.db.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            *guard = Some(open_db(&self.path).map_err(Unusable::into_error)?);
            self.opened()?;
        }
        Ok(guard)
    }

    /// After the file was opened (or created): owner-only permissions (it
    /// holds tenant ids; files of older agents are fixed too), and its
    /// inode remembered.
    fn opened(&self) -> Result<(), CheckpointError> {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        fs::set_permissions(&self.path, fs::Permissions::from_mode(0o600))?;
        let ino = fs::metadata(&self.path)?.ino();
        self.inode.store(ino, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Whether the path still names the file the store has open.
    fn still_ours(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        fs::metadata(&self.path)
            .is_ok_and(|m| m.ino() == self.inode.load(std::sync::atomic::Ordering::Relaxed))
    }
}

impl Unusable {
    fn into_error(self) -> CheckpointError {
        match self {
            Unusable::Fatal(e) => e,
            Unusable::Bad(reason) => CheckpointError::Io(std::io::Error::other(reason)),
        }
    }
}

fn open_db(path: &Path) -> Result<Database, Unusable> {
    // Created owner-only before redb opens it (redb would create it with
    // the umask's mode, readable by all until `opened` fixes it).
    {
        use std::os::unix::fs::OpenOptionsExt;
        let _ = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path);
    }
    let opened = catch_unwind(AssertUnwindSafe(|| {
        Database::builder()
            .set_cache_size(CACHE_BYTES)
            .set_check_integrity_on_open(true)
            .create(path)
    }));
    match opened {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(e)) => Err(classify_open_error(path, e)),
        Err(_) => Err(Unusable::Bad(
            "the state store panicked while opening".into(),
        )),
    }
}

fn classify_open_error(path: &Path, e: DatabaseError) -> Unusable {
    use std::io::ErrorKind;
    match e {
        DatabaseError::DatabaseAlreadyOpen => {
            Unusable::Fatal(CheckpointError::Locked(path.to_path_buf()))
        }
        DatabaseError::Storage(StorageError::Io(io))
            if !matches!(io.kind(), ErrorKind::UnexpectedEof | ErrorKind::InvalidData) =>
        {
            Unusable::Fatal(CheckpointError::Io(io))
        }
        DatabaseError::UpgradeRequired(v) => Unusable::Bad(format!(
            "incompatible: file format {v} of an older store library"
        )),
        other => Unusable::Bad(format!("corrupt: {other}")),
    }
}

/// Renames `path` to `path.corrupt-<now>` (with a numeric suffix if taken).
fn set_aside(path: &Path, now: u64) -> Result<PathBuf, CheckpointError> {
    let base = format!("{}.corrupt-{now}", path.display());
    let mut target = PathBuf::from(&base);
    let mut n = 1;
    while target.exists() {
        target = PathBuf::from(format!("{base}.{n}"));
        n += 1;
    }
    fs::rename(path, &target)?;
    Ok(target)
}

fn wall_clock_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Everything in the file, decoded.
struct SavedState {
    saved_at: u64,
    config_fingerprint: u64,
    slo_fingerprints: HashMap<String, u64>,
    series: Vec<(String, String, StoredSeries)>,
    cursor: Option<KernelCursor>,
}

fn read_state(db: &Database) -> Result<Option<SavedState>, Unusable> {
    let bad =
        |what: &str, e: &dyn std::fmt::Display| Unusable::Bad(format!("corrupt: {what}: {e}"));
    let txn = db.begin_read().map_err(|e| bad("read transaction", &e))?;
    let meta = match txn.open_table(META) {
        Ok(t) => t,
        Err(TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(bad("meta table", &e)),
    };
    let get = |key: &str| -> Result<Option<u64>, Unusable> {
        Ok(meta
            .get(key)
            .map_err(|e| bad("meta table", &e))?
            .map(|v| v.value()))
    };
    let version = get("format_version")?;
    if version != Some(FORMAT_VERSION) {
        return Err(Unusable::Bad(format!(
            "incompatible: format version {} (this agent reads {FORMAT_VERSION})",
            version.map_or_else(|| "missing".to_owned(), |v| v.to_string())
        )));
    }
    let saved_at = get("saved_at")?.unwrap_or(0);
    let config_fingerprint = get("config_fingerprint")?.unwrap_or(0);

    let mut slo_fingerprints = HashMap::new();
    let table = txn
        .open_table(SLO_FINGERPRINTS)
        .map_err(|e| bad("SLO table", &e))?;
    for entry in table.iter().map_err(|e| bad("SLO table", &e))? {
        let (name, fp) = entry.map_err(|e| bad("SLO table", &e))?;
        slo_fingerprints.insert(name.value().to_owned(), fp.value());
    }

    let mut series = Vec::new();
    let table = txn
        .open_table(SERIES)
        .map_err(|e| bad("series table", &e))?;
    for entry in table.iter().map_err(|e| bad("series table", &e))? {
        let (key, value) = entry.map_err(|e| bad("series table", &e))?;
        let (slo, tenant) = key.value();
        let stored =
            codec::decode(value.value()).map_err(|e| bad(&format!("series {slo}/{tenant}"), &e))?;
        series.push((slo.to_owned(), tenant.to_owned(), stored));
    }
    // Stores written before the cursor existed have neither key nor table.
    let cursor = match get("kernel_epoch")? {
        None => None,
        Some(epoch) => {
            let mut consumed = Vec::new();
            let table = txn
                .open_table(KERNEL_CURSOR)
                .map_err(|e| bad("kernel cursor table", &e))?;
            for entry in table.iter().map_err(|e| bad("kernel cursor table", &e))? {
                let (key, value) = entry.map_err(|e| bad("kernel cursor table", &e))?;
                let (slo, tenant) = key.value();
                let (good, bad) = value.value();
                consumed.push((slo.to_owned(), tenant.to_owned(), good, bad));
            }
            // Stores written before admission was saved have no table.
            let mut admitted: Vec<(String, Vec<String>)> = Vec::new();
            if let Ok(table) = txn.open_table(ADMITTED) {
                for entry in table
                    .iter()
                    .map_err(|e| bad("admitted tenants table", &e))?
                {
                    let (key, value) = entry.map_err(|e| bad("admitted tenants table", &e))?;
                    let (service, _rank) = key.value();
                    match admitted.last_mut() {
                        Some((s, tenants)) if s == service => {
                            tenants.push(value.value().to_owned())
                        }
                        _ => admitted.push((service.to_owned(), vec![value.value().to_owned()])),
                    }
                }
            }
            Some(KernelCursor {
                epoch,
                consumed,
                slos: slo_fingerprints.clone(),
                admitted,
            })
        }
    };
    Ok(Some(SavedState {
        saved_at,
        config_fingerprint,
        slo_fingerprints,
        series,
        cursor,
    }))
}

fn apply(state: SavedState, engine: &mut Engine, now: u64) -> RestoreReport {
    let mut report = RestoreReport::new(RestoreOutcome::Restored);
    report.saved_at = Some(state.saved_at);
    report.gap_secs = Some(now.saturating_sub(state.saved_at));
    report.config_changed = state.config_fingerprint != engine.slos().fingerprint;
    for (slo_name, tenant, stored) in state.series {
        let Some(slo) = engine.slos().iter().find(|s| *s.name == *slo_name).cloned() else {
            report.dropped_unknown_slo += 1;
            continue;
        };
        if state.slo_fingerprints.get(&slo_name) != Some(&slo.data_fingerprint) {
            report.dropped_changed_sli += 1;
            continue;
        }
        let Some(bounds) = engine.bounds(slo.id, now) else {
            continue;
        };
        let period_fits = match (&slo.period, &stored.period) {
            (Period::Rolling { .. }, PeriodBuffer::Rolling(ring)) => {
                ring.width() == slo.period.bucket_width()
            }
            (Period::CalendarMonth { .. }, PeriodBuffer::Calendar(_)) => true,
            _ => false,
        };
        let (period, period_since) = if period_fits {
            (stored.period, stored.period_since)
        } else {
            report.reset_period_history += 1;
            (PeriodBuffer::new(&slo.period, now, bounds), now)
        };
        let alert = stored.alert.and_then(|a| {
            let tier = slo
                .tiers
                .iter()
                .position(|t| t.severity == a.severity && t.long == a.long && t.short == a.short)?;
            Some(super::alert::AlertState {
                tier: u8::try_from(tier).ok()?,
                tier_since: a.tier_since,
                firing_since: a.firing_since,
            })
        });
        report.alerts_restored += usize::from(alert.is_some());
        let objective = slo.objective_for(&tenant);
        let mut series = Series {
            slo: slo.id,
            tenant: tenant.into(),
            objective,
            allowed_error_ratio: allowed_error_ratio(objective),
            tracked_since: stored.tracked_since,
            period_since,
            last_event: stored.last_event,
            alert,
            buffers: Buffers {
                s10: stored.s10,
                m1: stored.m1,
                m5: stored.m5,
                h1: stored.h1,
                period,
            },
        };
        series.buffers.advance(now, bounds);
        engine.put_series(series);
        report.restored_series += 1;
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::spec::SloConfig;
    use crate::engine::{SloId, SloSet, Window};

    const CONFIG: &str = "slos:
  - { name: avail, service: shop, objective: 99.9, window: 30d, sli: { availability: {} } }
  - { name: monthly, service: shop, objective: 99, calendar: month, timezone: Europe/Paris, sli: { latency: { threshold: 300ms } } }
";
    /// A minute boundary, so steady traffic gives exact window counts.
    const T0: u64 = 1_750_000_020;

    fn slos(yaml: &str) -> SloSet {
        let config: SloConfig = serde_saphyr::from_str(yaml).expect("yaml");
        config.validate().expect("valid")
    }

    struct TempDir(PathBuf);
    impl TempDir {
        fn new(name: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("engine-dev-{}-{name}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            Self(dir)
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// 2 h of traffic for two tenants on both SLOs; `acme` ends in a full outage
    /// (a page is firing at the end). Returns the engine and the last second.
    fn busy_engine() -> (Engine, u64) {
        let mut engine = Engine::new(slos(CONFIG));
        let end = T0 + 2 * 3_600;
        for now in T0..end {
            let outage = now >= end - 120;
            for slo in [SloId(0), SloId(1)] {
                let (good, bad) = if outage { (0, 100) } else { (100, 0) };
                engine.record(now, slo, "acme", good, bad).expect("known");
                engine
                    .record(now, slo, "beta", 50, u64::from(now % 100 == 0))
                    .expect("known");
            }
            engine.evaluate(now);
        }
        (engine, end - 1)
    }

    fn snapshot_json(engine: &Engine, now: u64) -> Vec<serde_json::Value> {
        let mut all: Vec<_> = engine
            .snapshots(now)
            .map(|s| serde_json::to_value(&s).expect("json"))
            .collect();
        all.sort_by_key(|v| (v["slo_name"].to_string(), v["tenant"].to_string()));
        all
    }

    #[test]
    fn save_and_restore_roundtrip() {
        let dir = TempDir::new("roundtrip");
        let (mut original, now) = busy_engine();
        assert!(
            original
                .snapshot(now, SloId(0), "acme")
                .expect("acme")
                .firing
                .is_some()
        );
        let store = StateStore::open(&dir.0).expect("open");
        store.save(&original, now).expect("save");
        drop(store);

        let store = StateStore::open(&dir.0).expect("reopen");
        let mut restored = Engine::new(slos(CONFIG));
        let report = store.restore(&mut restored, now).expect("restore");
        assert_eq!(report.outcome, RestoreOutcome::Restored);
        assert_eq!(report.restored_series, 4);
        assert_eq!(report.alerts_restored, 2, "acme pages on both SLOs");
        assert_eq!((report.saved_at, report.gap_secs), (Some(now), Some(0)));
        assert!(!report.config_changed);
        assert_eq!(snapshot_json(&restored, now), snapshot_json(&original, now));
        // Alert state came back: no duplicate `Fired` after the restart.
        for t in now + 1..now + 30 {
            assert_eq!(restored.evaluate(t), original.evaluate(t));
        }
    }

    #[test]
    fn a_state_file_removed_while_running_is_written_anew_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = TempDir::new("removed");
        let (original, now) = busy_engine();
        let store = StateStore::open(&dir.0).expect("open");
        let path = dir.0.join(FILE_NAME);
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&dir.0), 0o700);
        store.save(&original, now).expect("save");
        fs::remove_file(&path).unwrap();
        store.save(&original, now).expect("save after removal");
        assert_eq!(mode(&path), 0o600);
        drop(store);
        let store = StateStore::open(&dir.0).expect("reopen");
        let mut restored = Engine::new(slos(CONFIG));
        let report = store.restore(&mut restored, now).expect("restore");
        assert_eq!(report.restored_series, 4);
        assert_eq!(snapshot_json(&restored, now), snapshot_json(&original, now));
    }

    /// Widened rings survive a restart exactly: the fixed rings at `u32` (saturated),
    /// the period ring past `u32` at `u64`.
    #[test]
    fn widened_rings_are_restored_exactly() {
        let dir = TempDir::new("widened");
        let (mut original, now) = busy_engine();
        // 6 billion events in one second: more than u32::MAX in one 6 h bucket.
        original
            .record(now, SloId(0), "acme", 6_000_000_000, 0)
            .expect("known");
        let period = |e: &Engine| {
            let p = e.snapshot(now, SloId(0), "acme").expect("acme").period;
            (p.good, p.bad)
        };
        assert!(period(&original).0 > 6e9);
        let store = StateStore::open(&dir.0).expect("open");
        store.save(&original, now).expect("save");
        let mut restored = Engine::new(slos(CONFIG));
        let report = store.restore(&mut restored, now).expect("restore");
        assert_eq!(report.restored_series, 4);
        assert_eq!(report.reset_period_history, 0);
        assert_eq!(period(&restored), period(&original));
        assert_eq!(snapshot_json(&restored, now), snapshot_json(&original, now));
    }

    /// Slot forms survive a restart: series without bad events come back good-only, or
    /// at the pairs their counts need, and cost the same memory as before.
    #[test]
    fn slot_forms_are_restored() {
        use crate::engine::ring::SlotForm::{self, Good16, U16, U32, U64};
        let dir = TempDir::new("forms");
        let mut original = Engine::new(slos(CONFIG));
        let end = T0 + 3_600;
        for now in T0..end {
            let slo = SloId(0);
            original.record(now, slo, "calm", 2, 0).expect("known");
            let bad = u64::from(now == end - 1);
            original.record(now, slo, "flaky", 2, bad).expect("known");
            original.record(now, slo, "busy", 100, 0).expect("known");
        }
        original
            .record(end - 1, SloId(0), "huge", 6_000_000_000, 0)
            .expect("known");
        let forms = |e: &Engine| {
            let mut all: Vec<(String, Vec<SlotForm>)> = e
                .series
                .iter()
                .map(|s| {
                    let b = &s.buffers;
                    let mut forms = vec![b.s10.form(), b.m1.form(), b.m5.form(), b.h1.form()];
                    if let PeriodBuffer::Rolling(ring) = &b.period {
                        forms.push(ring.form());
                    }
                    (s.tenant.to_string(), forms)
                })
                .collect();
            all.sort();
            all
        };
        let widened = |e: &Engine| e.series.iter().map(Series::widened_bytes).sum::<usize>();
        let expected = vec![
            ("busy".to_owned(), vec![Good16, Good16, Good16, U32, U32]),
            ("calm".to_owned(), vec![Good16; 5]),
            ("flaky".to_owned(), vec![U16; 5]),
            ("huge".to_owned(), vec![U32, U32, U32, U32, U64]),
        ];
        assert_eq!(forms(&original), expected);

        let store = StateStore::open(&dir.0).expect("open");
        store.save(&original, end - 1).expect("save");
        let mut restored = Engine::new(slos(CONFIG));
        let report = store.restore(&mut restored, end - 1).expect("restore");
        assert_eq!(report.restored_series, 4);
        assert_eq!(forms(&restored), expected);
        assert_eq!(widened(&restored), widened(&original));
        assert_eq!(
            snapshot_json(&restored, end - 1),
            snapshot_json(&original, end - 1)
        );
    }

    #[test]
    fn kernel_cursor_is_saved_with_the_windows() {
        let dir = TempDir::new("cursor");
        let (engine, now) = busy_engine();
        let cursor = KernelCursor {
            epoch: 42,
            consumed: vec![
                ("avail".into(), "acme".into(), 700, 12_000),
                ("monthly".into(), "beta".into(), 5, 0),
            ],
            slos: HashMap::new(),
            admitted: vec![
                (
                    "shop".into(),
                    vec!["zeta".into(), "acme".into(), "beta".into()],
                ),
                ("web".into(), vec!["b".into()]),
            ],
        };
        let store = StateStore::open(&dir.0).expect("open");
        store
            .save_with_cursor(&engine, Some(&cursor), now)
            .expect("save");
        let mut restored = Engine::new(slos(CONFIG));
        let (report, got) = store
            .restore_with_cursor(&mut restored, now)
            .expect("restore");
        assert_eq!(report.restored_series, 4);
        let mut got = got.expect("a cursor");
        got.consumed.sort();
        assert_eq!((got.epoch, &got.consumed), (42, &cursor.consumed));
        // Admission order is kept (it decides who stays under a lowered cap).
        assert_eq!(got.admitted, cursor.admitted);
        // The cursor knows which SLO definitions its counts were taken with.
        assert_eq!(got.slos.len(), 2);
        assert_eq!(
            got.slos.get("avail"),
            Some(&engine.slos().get(SloId(0)).unwrap().data_fingerprint)
        );

        // A save without a cursor clears it: stale counts are never reused.
        store.save(&engine, now).expect("save");
        let mut restored = Engine::new(slos(CONFIG));
        let (_, got) = store
            .restore_with_cursor(&mut restored, now)
            .expect("restore");
        assert_eq!(got, None);
    }

    #[test]
    fn reconfigure_keeps_unchanged_slos() {
        let (mut engine, now) = busy_engine();
        let before = snapshot_json(&engine, now);
        // `avail` unchanged but a new objective; `monthly` gets a new SLI.
        let changed = CONFIG
            .replace("objective: 99.9", "objective: 99.5")
            .replace("threshold: 300ms", "threshold: 500ms");
        let report = engine.reconfigure(slos(&changed), now);
        assert_eq!(report.kept.len(), 1);
        assert_eq!((report.kept_series, report.dropped_series), (2, 2));
        let after = snapshot_json(&engine, now);
        assert_eq!(after.len(), 2);
        let acme = |v: &[serde_json::Value]| {
            v.iter()
                .find(|s| s["slo_name"] == "avail" && s["tenant"] == "acme")
                .cloned()
                .expect("acme")
        };
        let (b, a) = (acme(&before), acme(&after));
        assert_eq!(a["period"]["good"], b["period"]["good"]);
        assert_eq!(a["period"]["bad"], b["period"]["bad"]);
        assert_eq!(a["objective"], 99.5);
    }

    #[test]
    fn restore_after_a_ten_minute_gap() {
        let dir = TempDir::new("gap");
        let mut engine = Engine::new(slos(CONFIG));
        let end = T0 + 2 * 3_600;
        for now in T0..end {
            engine.record(now, SloId(0), "acme", 100, 0).expect("known");
        }
        let saved_at = end - 1;
        let store = StateStore::open(&dir.0).expect("open");
        store.save(&engine, saved_at).expect("save");

        let mut restored = Engine::new(slos(CONFIG));
        let now = saved_at + 600;
        let report = store.restore(&mut restored, now).expect("restore");
        assert_eq!(report.gap_secs, Some(600));
        let snap = restored.snapshot(now, SloId(0), "acme").expect("series");
        // The gap reads as no data: 5m is empty, 30m holds 20 min, 1h holds 50 min.
        assert_eq!(snap.window(Window::M5).good, 0.0);
        assert_eq!(snap.window(Window::M30).good, 100.0 * 1_200.0);
        assert_eq!(snap.window(Window::H1).good, 100.0 * 3_000.0);
        assert_eq!(snap.period.good, 100.0 * 7_200.0);
        restored
            .record(now + 1, SloId(0), "acme", 7, 0)
            .expect("known");
        let snap = restored
            .snapshot(now + 1, SloId(0), "acme")
            .expect("series");
        assert_eq!(snap.window(Window::M5).good, 7.0);
    }

    fn garbage(len: usize) -> Vec<u8> {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// Saves a busy engine, lets `damage` modify the file, then opens and restores.
    fn restore_damaged(name: &str, damage: impl FnOnce(&Path)) -> (RestoreReport, TempDir) {
        let dir = TempDir::new(name);
        let (engine, now) = busy_engine();
        let store = StateStore::open(&dir.0).expect("open");
        store.save(&engine, now).expect("save");
        drop(store);
        damage(&dir.0.join(FILE_NAME));
        let store = StateStore::open(&dir.0).expect("damaged file must not fail open");
        let mut fresh = Engine::new(slos(CONFIG));
        let report = store
            .restore(&mut fresh, now + 5)
            .expect("restore reports, not fails");
        if let RestoreOutcome::SetAside { moved_to, .. } = &report.outcome {
            assert!(moved_to.exists(), "{moved_to:?}");
            assert!(moved_to.to_string_lossy().contains("state.redb.corrupt-"));
            assert_eq!(fresh.series_count(), 0, "nothing restored from a bad file");
            // The fresh store works.
            store
                .save(&fresh, now + 6)
                .expect("save to the fresh store");
            let again = store.restore(&mut fresh, now + 7).expect("restore");
            assert_eq!(again.outcome, RestoreOutcome::Restored);
        }
        (report, dir)
    }

    #[test]
    fn garbage_file_is_set_aside() {
        let (report, _dir) = restore_damaged("garbage", |path| {
            let len = fs::metadata(path).map(|m| m.len()).unwrap_or(0) as usize;
            fs::write(path, garbage(len.max(4_096))).expect("write garbage");
        });
        match report.outcome {
            RestoreOutcome::SetAside { reason, .. } => {
                assert!(reason.contains("corrupt"), "{reason}")
            }
            other => panic!("expected set aside, got {other:?}"),
        }
    }

    #[test]
    fn damaged_or_truncated_files_never_panic() {
        type Damage = Box<dyn FnOnce(&Path)>;
        let cases: [(&str, Damage); 4] = [
            (
                "truncated",
                Box::new(|p: &Path| {
                    let bytes = fs::read(p).expect("read");
                    fs::write(p, &bytes[..bytes.len() / 2]).expect("truncate");
                }),
            ),
            (
                "header",
                Box::new(|p: &Path| {
                    let mut bytes = fs::read(p).expect("read");
                    bytes[..512].copy_from_slice(&garbage(512));
                    fs::write(p, bytes).expect("write");
                }),
            ),
            (
                "middle",
                Box::new(|p: &Path| {
                    let mut bytes = fs::read(p).expect("read");
                    let mid = bytes.len() / 2;
                    bytes[mid..mid + 8_192].copy_from_slice(&garbage(8_192));
                    fs::write(p, bytes).expect("write");
                }),
            ),
            (
                "empty",
                Box::new(|p: &Path| fs::write(p, b"").expect("write")),
            ),
        ];
        for (name, damage) in cases {
            let (report, _dir) = restore_damaged(name, damage);
            assert!(
                matches!(
                    report.outcome,
                    RestoreOutcome::SetAside { .. }
                        | RestoreOutcome::Restored
                        | RestoreOutcome::Empty
                ),
                "{name}: {report:?}"
            );
            println!("{name}: {:?}", report.outcome);
        }
    }

    #[test]
    fn incompatible_format_version_is_set_aside() {
        let dir = TempDir::new("version");
        let store = StateStore::open(&dir.0).expect("open");
        {
            let guard = store.lock_db().expect("db");
            let db = guard.as_ref().expect("open db");
            let txn = db.begin_write().expect("txn");
            txn.open_table(META)
                .expect("meta")
                .insert("format_version", 99)
                .expect("insert");
            txn.commit().expect("commit");
        }
        let mut engine = Engine::new(slos(CONFIG));
        let report = store.restore(&mut engine, T0).expect("restore");
        match report.outcome {
            RestoreOutcome::SetAside { reason, .. } => {
                assert!(reason.contains("format version 99"), "{reason}");
            }
            other => panic!("expected set aside, got {other:?}"),
        }
    }

    #[test]
    fn config_changes_drop_or_reset_what_no_longer_fits() {
        let dir = TempDir::new("config");
        let (engine, now) = busy_engine();
        let store = StateStore::open(&dir.0).expect("open");
        store.save(&engine, now).expect("save");

        // `monthly` removed, `avail` now counts 4xx too (different SLI): all dropped.
        let changed = "slos:\n  - { name: avail, service: shop, objective: 99.9, sli: { availability: { bad_status: [5xx, 4xx] } } }\n";
        let mut e = Engine::new(slos(changed));
        let report = store.restore(&mut e, now).expect("restore");
        assert!(report.config_changed);
        assert_eq!(
            (report.dropped_unknown_slo, report.dropped_changed_sli),
            (2, 2)
        );
        assert_eq!(e.series_count(), 0);

        // Objective and period changed, SLI the same: counts kept, period restarted.
        let reperiod = "slos:\n  - { name: avail, service: shop, objective: 99.5, window: 28d, sli: { availability: {} } }\n";
        let mut e = Engine::new(slos(reperiod));
        let report = store.restore(&mut e, now).expect("restore");
        assert_eq!(
            (report.restored_series, report.reset_period_history),
            (2, 2)
        );
        let snap = e.snapshot(now, SloId(0), "beta").expect("beta");
        assert_eq!(snap.objective, 99.5);
        assert_eq!(snap.period.good + snap.period.bad, 0.0);
        assert!(snap.window(Window::H1).good > 0.0);
    }

    #[test]
    fn a_store_locked_by_another_instance_is_an_error_not_corruption() {
        let dir = TempDir::new("locked");
        let first = StateStore::open(&dir.0).expect("open");
        match StateStore::open(&dir.0) {
            Err(CheckpointError::Locked(_)) => {}
            Err(other) => panic!("expected Locked, got {other}"),
            Ok(_) => panic!("a second writer must not open the store"),
        }
        let aside = fs::read_dir(&dir.0)
            .expect("dir")
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().contains("corrupt"))
            .count();
        assert_eq!(aside, 0);
        drop(first);
    }
}

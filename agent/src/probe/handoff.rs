//! Upgrades: the requests an older build's maps counted after its agent's
//! last read.
//!
//! A build with other eBPF code loads fresh programs and maps beside the old
//! build's pinned ones, then removes the old pins (see `pins.rs`). Until
//! then the old programs keep counting into their own `COUNTS` map: every
//! request between the old agent's last read (its SIGTERM checkpoint) and
//! that removal is only there. So, before removing the old pins, the new
//! agent opens the old `COUNTS` map (when its layout is this build's); after
//! the removal has detached the old programs, it reads the map whole. The
//! SLO engine is fed what those counts hold beyond the old agent's
//! checkpoint cursor (`AgentState::feed_handoff`), once.
//!
//! The new programs count nothing until the agent writes their `CONFIG`
//! (right after the removal): no request is in both maps. Requests in the
//! microseconds between the old programs' detach and that write, and
//! requests whose bytes straddle the switch (a request read by the old
//! programs, its response written after), are the only ones neither build
//! counts.

use aya::maps::{HashMap as BpfHashMap, Map, MapData};
use burnwatch_common::maps::{Method, RequestKey, RequestStats, TENANT_MAX, names, role};
use tracing::{info, warn};

use super::pins::Pins;

/// The final counts of an older build's maps.
pub struct Handoff {
    /// The epoch the old agent's checkpoint cursor names them by.
    pub epoch: u64,
    pub counts: Vec<(RequestKey, RequestStats)>,
}

/// An older build's `COUNTS` map, opened before its pins are removed.
pub struct OldCounts {
    map: BpfHashMap<MapData, RequestKey, RequestStats>,
    epoch: u64,
    build: String,
}

/// Opens the `COUNTS` map of every other build under the pin root whose
/// key and value sizes are this build's. Others are skipped with a
/// warning: their requests since the old agent's last read are lost.
pub fn open_other_builds(pins: &Pins) -> Vec<OldCounts> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(&pins.root) else {
        return out;
    };
    for e in entries.flatten() {
        let dir = e.path();
        if dir == pins.dir || !super::pins::is_build_dir(&e.file_name().to_string_lossy()) {
            continue;
        }
        let build = e.file_name().to_string_lossy().into_owned();
        let path = dir.join("maps").join(names::COUNTS);
        let Ok(data) = MapData::from_pin(&path) else {
            continue;
        };
        let Ok(info) = data.info() else { continue };
        let sizes = (info.key_size() as usize, info.value_size() as usize);
        let ours = (size_of::<RequestKey>(), size_of::<RequestStats>());
        if sizes != ours {
            warn!(
                build,
                "the old build's count map has another layout ({sizes:?}, this build {ours:?}): requests since its agent's last read are not in the SLO windows"
            );
            continue;
        }
        let epoch = super::counts_epoch(info.id());
        match Map::from_map_data(data).map(BpfHashMap::try_from) {
            Ok(Ok(map)) => out.push(OldCounts { map, epoch, build }),
            _ => continue,
        }
    }
    out
}

/// Reads the maps [`open_other_builds`] opened, once their programs are
/// detached. A map holding an entry this build could not have written
/// (another layout of the same size) is dropped whole.
pub fn read(old: Vec<OldCounts>) -> Vec<Handoff> {
    let mut out = Vec::new();
    for o in old {
        let mut counts = Vec::new();
        let mut sane = true;
        for entry in o.map.iter() {
            let Ok((k, v)) = entry else {
                sane = false;
                break;
            };
            if !plausible(&k, &v) {
                sane = false;
                break;
            }
            counts.push((k, v));
        }
        if !sane {
            warn!(
                build = o.build,
                "the old build's count map does not read as this build's layout: requests since its agent's last read are not in the SLO windows"
            );
            continue;
        }
        info!(
            build = o.build,
            series = counts.len(),
            "read the old build's final counts (upgrade handoff)"
        );
        out.push(Handoff {
            epoch: o.epoch,
            counts,
        });
    }
    out
}

/// Could this build have written (`k`, `v`)?
fn plausible(k: &RequestKey, v: &RequestStats) -> bool {
    let role_ok = k.role == role::SERVER || k.role == role::CLIENT;
    let buckets: u64 = v.buckets.iter().fold(0u64, |a, b| a.saturating_add(*b));
    k.method <= Method::Patch as u8
        && role_ok
        && (k.tenant_len as usize) <= TENANT_MAX
        && k.status < 1000
        && buckets <= v.count
}

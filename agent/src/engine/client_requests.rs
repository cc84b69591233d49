//! Client-side request series: what watched processes asked of their
//! upstreams, per (client, upstream, tenant, method, status).
//!
//! Like [`super::requests::RequestTable`], refreshed once per second from
//! the kernel's cumulative `COUNTS` (the keys with role client); labels are
//! resolved once per kernel key. Client series feed no SLO: SLOs are about
//! the services this node serves.

use std::collections::HashMap;
use std::sync::Arc;

use burnwatch_common::maps::{Method, RequestKey, RequestStats};

use crate::attribution::pods::{PodDirectory, PodLabels};
use crate::attribution::{ServiceNames, tenant_label, upstream_label};

/// Labels of one `burnwatch_http_client_requests_total` series.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClientLabels {
    /// The configured client's name.
    pub service: Arc<str>,
    /// `ip:port` of the upstream.
    pub upstream: Arc<str>,
    pub tenant: Arc<str>,
    pub method: &'static str,
    /// 0 when no response came.
    pub status: u16,
    /// The pod that made the requests (Kubernetes only).
    pub pod: Option<Arc<PodLabels>>,
}

#[derive(Default)]
pub struct ClientTable {
    by_key: super::requests::KernelKeyMap<RequestKey, usize>,
    by_labels: HashMap<ClientLabels, usize>,
    /// (labels, cumulative count).
    pub series: Vec<(ClientLabels, u64)>,
    /// Upstream labels, shared by their series.
    upstreams: HashMap<([u8; 16], u16), Arc<str>>,
    /// The pod directory version `by_key` was resolved under.
    pods_version: u64,
}

impl ClientTable {
    /// Starts a refresh: counts are re-summed from the kernel's values.
    pub fn begin_update(&mut self) {
        for s in &mut self.series {
            s.1 = 0;
        }
    }

    /// Adds one kernel series of role client (cumulative values).
    pub fn add(
        &mut self,
        key: &RequestKey,
        stats: &RequestStats,
        names: &mut ServiceNames,
        missing_tenant: &Arc<str>,
        pods: &PodDirectory,
    ) {
        if self.pods_version != pods.version() {
            self.by_key.clear();
            self.pods_version = pods.version();
        }
        let i = match self.by_key.get(key) {
            Some(&i) => i,
            None => {
                let upstream = self
                    .upstreams
                    .entry((key.peer_addr, key.peer_port))
                    .or_insert_with(|| Arc::from(upstream_label(&key.peer_addr, key.peer_port)))
                    .clone();
                let labels = ClientLabels {
                    service: names.name(key.service_id, key.local_port),
                    upstream,
                    tenant: tenant_label(key.tenant(), missing_tenant),
                    method: Method::from_u8(key.method).as_str(),
                    status: key.status,
                    pod: pods.get(key.cgroup_id).map(|p| p.labels.clone()),
                };
                let i = *self.by_labels.entry(labels.clone()).or_insert_with(|| {
                    self.series.push((labels, 0));
                    self.series.len() - 1
                });
                self.by_key.insert(*key, i);
                i
            }
        };
        self.series[i].1 += stats.count;
    }
}

//! The request series: kernel keys resolved to labels, summed per label set.
//!
//! Updated once per second from a full read of the kernel's `COUNTS` map.
//! Work is per series, never per request; a series' labels are resolved
//! once, the first time its kernel key is seen (again when the pod
//! directory changes: a pod can become known after its first requests).

use std::collections::HashMap;
use std::sync::Arc;

use burnwatch_common::maps::{ConnEventKey, LATENCY_BUCKETS, Method, RequestKey, RequestStats};

use burnwatch_common::maps::SERVICE_AUTO;

use crate::attribution::kubernetes;
use crate::attribution::pods::{PodDirectory, PodLabels};
use crate::attribution::{ServiceNames, tenant_label};
use crate::config::{OVERFLOW_TENANT, Tenant, TenantFrom};

/// Labels of one `burnwatch_http_requests_total` series.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RequestLabels {
    pub service: Arc<str>,
    pub tenant: Arc<str>,
    pub method: &'static str,
    /// 0 when no response came.
    pub status: u16,
    /// The pod that served them (Kubernetes only).
    pub pod: Option<Arc<PodLabels>>,
}

/// Cumulative counts of one label set.
#[derive(Debug, Clone)]
pub struct Series {
    pub labels: RequestLabels,
    pub stats: RequestStats,
}

/// Cumulative latency of one (service, tenant).
#[derive(Debug, Clone)]
pub struct LatencySeries {
    pub service: Arc<str>,
    pub tenant: Arc<str>,
    pub pod: Option<Arc<PodLabels>>,
    pub count: u64,
    pub sum_ns: u64,
    pub buckets: [u64; LATENCY_BUCKETS],
}

/// (service, tenant, pod) of a latency series.
type LatencyKey = (Arc<str>, Arc<str>, Option<Arc<PodLabels>>);

/// The map from kernel keys, looked up for every kernel series every
/// second: foldhash instead of std's SipHash (a 104-byte key was ~10% of
/// the agent's CPU at 20,000 series). Still seeded per process, and the
/// kernel caps the keys an attacker can create (`COUNTS_MAX`).
pub(crate) type KernelKeyMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

pub struct RequestTable {
    /// Kernel key -> (index in `series`, index in `latency`).
    by_key: KernelKeyMap<RequestKey, (usize, usize)>,
    by_labels: HashMap<RequestLabels, usize>,
    by_service_tenant: HashMap<LatencyKey, usize>,
    /// The pod directory version `by_key` was resolved under.
    pods_version: u64,
    /// `tenant.from: namespace | namespace_label`: the tenant is the
    /// serving pod's namespace (or its label), not request bytes.
    tenant_rule: Option<Tenant>,
    pub series: Vec<Series>,
    pub latency: Vec<LatencySeries>,
    /// Tenants kept per service (`tenant.max_per_service`), stable across
    /// reloads and restarts.
    pub admission: super::admission::Admission,
    overflow_label: Arc<str>,
    /// `tenant.hash`: pseudonymises tenants as their labels are made.
    hasher: Option<crate::attribution::tenant_hash::TenantHasher>,
}

impl RequestTable {
    pub fn new(max_tenants_per_service: u32) -> Self {
        RequestTable {
            by_key: KernelKeyMap::default(),
            by_labels: HashMap::new(),
            by_service_tenant: HashMap::new(),
            pods_version: 0,
            tenant_rule: None,
            series: Vec::new(),
            latency: Vec::new(),
            admission: super::admission::Admission::new(max_tenants_per_service),
            overflow_label: Arc::from(OVERFLOW_TENANT),
            hasher: None,
        }
    }

    /// Pseudonymise tenant ids from now on (`tenant.hash`).
    pub fn set_tenant_hasher(&mut self, hasher: crate::attribution::tenant_hash::TenantHasher) {
        self.hasher = Some(hasher);
    }

    /// Take tenants from the serving pod's namespace when the rule says so
    /// (other rules: from the request, as the kernel found them).
    pub fn set_tenant_rule(&mut self, rule: &Tenant) {
        let rule = matches!(
            rule.from,
            TenantFrom::Namespace | TenantFrom::NamespaceLabel
        )
        .then(|| rule.clone());
        if rule != self.tenant_rule {
            // Series resolved under the old rule are resolved again.
            self.by_key.clear();
            self.tenant_rule = rule;
        }
    }

    /// Whether `tenant`'s requests to `service` are folded into
    /// `__overflow__` (its own counts are not kept).
    pub fn is_folded(&self, service: &str, tenant: &str) -> bool {
        self.admission.is_folded(service, tenant)
    }

    /// Tenants folded into `__overflow__`, per service.
    pub fn tenant_overflow(&self) -> impl Iterator<Item = (&Arc<str>, usize)> {
        self.admission.folded()
    }

    /// A reload: the series are rebuilt from the kernel's keys at the next
    /// poll; the tenant hasher, the tenant rule and the admitted tenants
    /// stay (`forget_tenants`: the tenant rule changed, the ids are others).
    pub fn reset(&mut self, max_tenants_per_service: u32, forget_tenants: bool) {
        self.by_key.clear();
        self.by_labels.clear();
        self.by_service_tenant.clear();
        self.series.clear();
        self.latency.clear();
        if forget_tenants {
            self.admission.clear();
        }
        self.admission.set_max(max_tenants_per_service);
    }

    /// The tenant label for a new series: itself while the service has room,
    /// `__overflow__` after.
    fn admit(&mut self, service: &Arc<str>, tenant: Arc<str>) -> Arc<str> {
        if *tenant == *OVERFLOW_TENANT || !self.admission.admit(service, &tenant) {
            return self.overflow_label.clone();
        }
        tenant
    }

    /// Starts a refresh: counts are re-summed from the kernel's values.
    pub fn begin_update(&mut self) {
        for s in &mut self.series {
            s.stats = RequestStats::ZERO;
        }
        for l in &mut self.latency {
            l.count = 0;
            l.sum_ns = 0;
            l.buckets = [0; LATENCY_BUCKETS];
        }
    }

    /// Adds one kernel series (cumulative values).
    pub fn add(
        &mut self,
        key: &RequestKey,
        stats: &RequestStats,
        names: &mut ServiceNames,
        missing_tenant: &Arc<str>,
        pods: &PodDirectory,
    ) {
        if self.pods_version != pods.version() {
            // Keys may now resolve to pods they did not before.
            self.by_key.clear();
            self.pods_version = pods.version();
        }
        let (si, li) = match self.by_key.get(key) {
            Some(&idx) => idx,
            None => {
                let pod = pods.get(key.cgroup_id);
                let service = match pod {
                    // Found servers in a pod are named after its workload.
                    Some(p) if key.service_id == SERVICE_AUTO => {
                        kubernetes::default_service_name(&p.meta)
                    }
                    _ => names.name(key.service_id, key.local_port),
                };
                let mut tenant = match &self.tenant_rule {
                    Some(rule) => pod
                        .and_then(|p| kubernetes::tenant_of(rule, &p.meta))
                        .unwrap_or_else(|| missing_tenant.clone()),
                    None => tenant_label(key.tenant(), missing_tenant),
                };
                let pod = pod.map(|p| p.labels.clone());
                if let Some(h) = &self.hasher
                    && !Arc::ptr_eq(&tenant, missing_tenant)
                    && *tenant != *OVERFLOW_TENANT
                {
                    tenant = h.pseudonym(&tenant);
                }
                let tenant = self.admit(&service, tenant);
                let labels = RequestLabels {
                    service: service.clone(),
                    tenant: tenant.clone(),
                    method: Method::from_u8(key.method).as_str(),
                    status: key.status,
                    pod: pod.clone(),
                };
                let si = *self.by_labels.entry(labels.clone()).or_insert_with(|| {
                    self.series.push(Series {
                        labels,
                        stats: RequestStats::ZERO,
                    });
                    self.series.len() - 1
                });
                let li = *self
                    .by_service_tenant
                    .entry((service.clone(), tenant.clone(), pod.clone()))
                    .or_insert_with(|| {
                        self.latency.push(LatencySeries {
                            service,
                            tenant,
                            pod,
                            count: 0,
                            sum_ns: 0,
                            buckets: [0; LATENCY_BUCKETS],
                        });
                        self.latency.len() - 1
                    });
                self.by_key.insert(*key, (si, li));
                (si, li)
            }
        };
        let s = &mut self.series[si].stats;
        s.count += stats.count;
        s.duration_sum_ns += stats.duration_sum_ns;
        for (a, b) in s.buckets.iter_mut().zip(stats.buckets.iter()) {
            *a += b;
        }
        let l = &mut self.latency[li];
        l.count += stats.count;
        l.sum_ns += stats.duration_sum_ns;
        for (a, b) in l.buckets.iter_mut().zip(stats.buckets.iter()) {
            *a += b;
        }
    }
}

/// Per-service connection events (anomalies and TCP failures), summed per
/// (service, kind) from the kernel's `CONN_EVENTS`.
#[derive(Default)]
pub struct ConnEventTable {
    by_key: KernelKeyMap<ConnEventKey, usize>,
    by_labels: HashMap<(Arc<str>, u16), usize>,
    /// (service, kind, cumulative count).
    pub series: Vec<(Arc<str>, u16, u64)>,
}

impl ConnEventTable {
    pub fn begin_update(&mut self) {
        for s in &mut self.series {
            s.2 = 0;
        }
    }

    pub fn add(&mut self, key: &ConnEventKey, value: u64, names: &mut ServiceNames) {
        let i = match self.by_key.get(key) {
            Some(&i) => i,
            None => {
                let service = names.name(key.service_id, key.local_port);
                let i = *self
                    .by_labels
                    .entry((service.clone(), key.kind))
                    .or_insert_with(|| {
                        self.series.push((service, key.kind, 0));
                        self.series.len() - 1
                    });
                self.by_key.insert(*key, i);
                i
            }
        };
        self.series[i].2 += value;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burnwatch_common::maps::TENANT_MAX;

    fn key(tenant: &[u8], status: u16) -> RequestKey {
        let mut t = [0u8; TENANT_MAX];
        t[..tenant.len()].copy_from_slice(tenant);
        RequestKey {
            service_id: 0,
            local_port: 8080,
            status,
            method: Method::Get as u8,
            role: 1,
            tenant_len: tenant.len() as u8,
            _pad: 0,
            peer_port: 0,
            _pad2: 0,
            peer_addr: [0; 16],
            cgroup_id: 0,
            tenant: t,
        }
    }

    fn stats(n: u64) -> RequestStats {
        let mut s = RequestStats::ZERO;
        s.count = n;
        s.buckets[0] = n;
        s
    }

    #[test]
    fn keys_with_same_labels_are_summed_and_refresh_is_idempotent() {
        let mut names = ServiceNames::new(["shop".to_string()]);
        let missing: Arc<str> = Arc::from("unknown");
        let mut t = RequestTable::new(1000);
        for _ in 0..3 {
            t.begin_update();
            // Two invalid-UTF-8 tenants that map to the same label.
            t.add(
                &key(b"a\xff", 200),
                &stats(2),
                &mut names,
                &missing,
                &PodDirectory::default(),
            );
            t.add(
                &key(b"a\xfe", 200),
                &stats(3),
                &mut names,
                &missing,
                &PodDirectory::default(),
            );
            t.add(
                &key(b"", 503),
                &stats(1),
                &mut names,
                &missing,
                &PodDirectory::default(),
            );
        }
        assert_eq!(t.series.len(), 2);
        assert_eq!(t.series[0].stats.count, 5);
        assert_eq!(&*t.series[1].labels.tenant, "unknown");
        assert_eq!(t.latency.len(), 2);
        assert_eq!(t.latency[0].count, 5);
    }
    #[test]
    fn tenants_past_the_cap_fold_into_overflow() {
        let mut names = ServiceNames::new(["shop".to_string()]);
        let missing: Arc<str> = Arc::from("unknown");
        let mut t = RequestTable::new(2);
        t.begin_update();
        for (tenant, n) in [(&b"a"[..], 1), (b"b", 2), (b"c", 3), (b"d", 4), (b"a", 5)] {
            t.add(
                &key(tenant, if n == 5 { 500 } else { 200 }),
                &stats(n),
                &mut names,
                &missing,
                &PodDirectory::default(),
            );
        }
        let by: HashMap<(String, u16), u64> = t
            .series
            .iter()
            .map(|s| {
                (
                    (s.labels.tenant.to_string(), s.labels.status),
                    s.stats.count,
                )
            })
            .collect();
        assert_eq!(by[&("a".to_string(), 200)], 1);
        assert_eq!(by[&("a".to_string(), 500)], 5);
        assert_eq!(by[&("b".to_string(), 200)], 2);
        assert_eq!(by[&(OVERFLOW_TENANT.to_string(), 200)], 7);
        assert_eq!(t.tenant_overflow().map(|(_, n)| n).sum::<usize>(), 2);
    }

    #[test]
    fn keys_of_pod_cgroups_carry_the_pod_and_its_namespace_as_tenant() {
        use crate::attribution::kubernetes::{PodMeta, Workload};
        let meta = PodMeta {
            namespace: Arc::from("shop"),
            pod: Arc::from("checkout-7d9f-abcde"),
            uid: Arc::from("u1"),
            workload: Some(Workload {
                kind: Arc::from("Deployment"),
                name: Arc::from("checkout"),
            }),
            labels: Arc::default(),
            namespace_labels: Arc::default(),
        };
        let pods = PodDirectory::from_entries([(42, meta)]);
        let mut names = ServiceNames::new(Vec::<String>::new());
        let missing: Arc<str> = Arc::from("unknown");
        let mut t = RequestTable::new(1000);
        let config =
            crate::config::Config::parse("tenant: {from: namespace}\n", "t.yaml".as_ref()).unwrap();
        t.set_tenant_rule(&config.tenant);
        t.begin_update();
        let mut in_pod = key(b"ignored", 200);
        in_pod.service_id = SERVICE_AUTO;
        in_pod.cgroup_id = 42;
        t.add(&in_pod, &stats(3), &mut names, &missing, &pods);
        let mut host = key(b"", 200);
        host.cgroup_id = 7;
        t.add(&host, &stats(1), &mut names, &missing, &pods);
        let s = &t.series[0];
        assert_eq!(
            &*s.labels.service, "checkout",
            "found servers take the workload's name"
        );
        assert_eq!(&*s.labels.tenant, "shop");
        let p = s.labels.pod.as_deref().unwrap();
        assert_eq!(
            PodLabels::pairs(p).0,
            [
                ("namespace", "shop"),
                ("pod", "checkout-7d9f-abcde"),
                ("workload", "checkout")
            ]
        );
        assert_eq!(s.stats.count, 3);
        // A process outside any pod: no pod labels, the missing tenant.
        assert_eq!(t.series[1].labels.pod, None);
        assert_eq!(&*t.series[1].labels.tenant, "unknown");
        assert_eq!(t.latency.len(), 2);
    }
}

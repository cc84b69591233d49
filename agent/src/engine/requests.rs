//! The request series: kernel keys resolved to labels, summed per label set.
//!
//! Updated once per second from a full read of the kernel's `COUNTS` map.
//! Work is per series, never per request; a series' labels are resolved
//! once, the first time its kernel key is seen.

use std::collections::HashMap;
use std::sync::Arc;

use burnwatch_common::maps::{LATENCY_BUCKETS, Method, RequestKey, RequestStats};

use crate::attribution::{ServiceNames, tenant_label};

/// Labels of one `burnwatch_http_requests_total` series.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RequestLabels {
    pub service: Arc<str>,
    pub tenant: Arc<str>,
    pub method: &'static str,
    /// 0 when no response came.
    pub status: u16,
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
    pub count: u64,
    pub sum_ns: u64,
    pub buckets: [u64; LATENCY_BUCKETS],
}

#[derive(Default)]
pub struct RequestTable {
    /// Kernel key -> (index in `series`, index in `latency`).
    by_key: HashMap<RequestKey, (usize, usize)>,
    by_labels: HashMap<RequestLabels, usize>,
    by_service_tenant: HashMap<(Arc<str>, Arc<str>), usize>,
    pub series: Vec<Series>,
    pub latency: Vec<LatencySeries>,
}

impl RequestTable {
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
    ) {
        let (si, li) = match self.by_key.get(key) {
            Some(&idx) => idx,
            None => {
                let service = names.name(key.service_id, key.local_port);
                let tenant = tenant_label(key.tenant(), missing_tenant);
                let labels = RequestLabels {
                    service: service.clone(),
                    tenant: tenant.clone(),
                    method: Method::from_u8(key.method).as_str(),
                    status: key.status,
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
                    .entry((service.clone(), tenant.clone()))
                    .or_insert_with(|| {
                        self.latency.push(LatencySeries {
                            service,
                            tenant,
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
        let mut t = RequestTable::default();
        for _ in 0..3 {
            t.begin_update();
            // Two invalid-UTF-8 tenants that map to the same label.
            t.add(&key(b"a\xff", 200), &stats(2), &mut names, &missing);
            t.add(&key(b"a\xfe", 200), &stats(3), &mut names, &missing);
            t.add(&key(b"", 503), &stats(1), &mut names, &missing);
        }
        assert_eq!(t.series.len(), 2);
        assert_eq!(t.series[0].stats.count, 5);
        assert_eq!(&*t.series[1].labels.tenant, "unknown");
        assert_eq!(t.latency.len(), 2);
        assert_eq!(t.latency[0].count, 5);
    }
}

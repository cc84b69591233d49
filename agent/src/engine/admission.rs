//! Which tenants of a service get their own series under
//! `tenant.max_per_service`; the others are folded into `__overflow__`.
//!
//! Admission is first come, first kept, and it is stable: a tenant admitted
//! stays admitted across polls, reloads and restarts (the admitted set is
//! saved with every checkpoint and restored before the first poll). Without
//! that, a restart would apply the cap again in kernel-map order, a tenant
//! admitted first could vanish into `__overflow__`, and the SLO windows
//! would be fed its history a second time under another name.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

#[derive(Debug, Default)]
pub struct Admission {
    max: usize,
    /// Per service: the admitted tenants, in admission order (the order a
    /// lowered cap keeps them in), and the same as a set for lookups.
    admitted: HashMap<Arc<str>, Admitted>,
    /// Per service: tenants seen and folded into `__overflow__`.
    folded: HashMap<Arc<str>, HashSet<Arc<str>>>,
}

#[derive(Debug, Default)]
struct Admitted {
    order: Vec<Arc<str>>,
    set: HashSet<Arc<str>>,
}

impl Admitted {
    fn push(&mut self, tenant: Arc<str>) {
        if self.set.insert(tenant.clone()) {
            self.order.push(tenant);
        }
    }
}

impl Admission {
    pub fn new(max_per_service: u32) -> Self {
        Admission {
            max: max_per_service as usize,
            ..Default::default()
        }
    }

    /// Whether `tenant` gets its own series on `service` (admitting it while
    /// the service has room); false: it is folded into `__overflow__`.
    pub fn admit(&mut self, service: &Arc<str>, tenant: &Arc<str>) -> bool {
        let admitted = self.admitted.entry(service.clone()).or_default();
        if admitted.set.contains(tenant) {
            return true;
        }
        if admitted.order.len() < self.max {
            admitted.push(tenant.clone());
            return true;
        }
        self.folded
            .entry(service.clone())
            .or_default()
            .insert(tenant.clone());
        false
    }

    pub fn is_folded(&self, service: &str, tenant: &str) -> bool {
        self.folded.get(service).is_some_and(|t| t.contains(tenant))
    }

    /// Tenants folded into `__overflow__`, per service.
    pub fn folded(&self) -> impl Iterator<Item = (&Arc<str>, usize)> {
        self.folded.iter().map(|(s, t)| (s, t.len()))
    }

    /// A reloaded cap. Raised: folded tenants are admitted as they are seen
    /// again. Lowered: each service keeps its first `max` tenants in
    /// admission order. Either way the folded sets are rebuilt by the next
    /// poll (the request series are rebuilt on reload).
    pub fn set_max(&mut self, max_per_service: u32) {
        self.max = max_per_service as usize;
        for admitted in self.admitted.values_mut() {
            if admitted.order.len() > self.max {
                for gone in admitted.order.drain(self.max..) {
                    admitted.set.remove(&gone);
                }
            }
        }
        self.folded.clear();
    }

    /// Forgets every admission (the tenant rule changed: the ids are others).
    pub fn clear(&mut self) {
        self.admitted.clear();
        self.folded.clear();
    }

    /// (service, admitted tenants in order), for the checkpoint.
    pub fn saved(&self) -> Vec<(String, Vec<String>)> {
        self.admitted
            .iter()
            .filter(|(_, a)| !a.order.is_empty())
            .map(|(s, a)| {
                (
                    s.to_string(),
                    a.order.iter().map(|t| t.to_string()).collect(),
                )
            })
            .collect()
    }

    /// Restores what [`Admission::saved`] returned, before the first poll.
    /// The current cap applies (a lowered one keeps the first tenants).
    pub fn restore(&mut self, saved: Vec<(String, Vec<String>)>) {
        for (service, tenants) in saved {
            let admitted = self
                .admitted
                .entry(Arc::from(service.as_str()))
                .or_default();
            for t in tenants {
                if admitted.order.len() >= self.max {
                    break;
                }
                admitted.push(Arc::from(t.as_str()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: &str) -> Arc<str> {
        Arc::from(x)
    }

    #[test]
    fn admission_survives_a_restart_in_any_map_order() {
        let shop = s("shop");
        let mut a = Admission::new(2);
        assert!(a.admit(&shop, &s("a")));
        assert!(a.admit(&shop, &s("b")));
        assert!(!a.admit(&shop, &s("c")));
        assert!(a.is_folded("shop", "c"));
        let saved = a.saved();
        // The next agent reads the kernel map in another order.
        let mut b = Admission::new(2);
        b.restore(saved);
        assert!(!b.admit(&shop, &s("c")));
        assert!(b.admit(&shop, &s("b")));
        assert!(b.admit(&shop, &s("a")));
        assert_eq!(b.folded().map(|(_, n)| n).sum::<usize>(), 1);
    }

    #[test]
    fn a_lowered_cap_keeps_the_first_admitted() {
        let shop = s("shop");
        let mut a = Admission::new(3);
        for t in ["a", "b", "c"] {
            assert!(a.admit(&shop, &s(t)));
        }
        a.set_max(2);
        assert!(a.admit(&shop, &s("a")));
        assert!(a.admit(&shop, &s("b")));
        assert!(!a.admit(&shop, &s("c")));
        a.set_max(3);
        assert!(a.admit(&shop, &s("c")));
        assert!(!a.admit(&shop, &s("d")));
    }
}

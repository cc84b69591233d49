//! Who is who: turns the kernel's numeric service ids and raw tenant bytes
//! into the label values users see.
//!
//! - Configured services are named by config.
//! - Automatically found servers are named `<comm>:<port>` after the
//!   process that listens on the port (found once per port through /proc).
//! - Tenant ids are raw header bytes: made valid UTF-8, control characters
//!   replaced, empty mapped to the configured `missing` label.

use std::collections::HashMap;
use std::sync::Arc;

use burnwatch_common::maps::{CLIENT_ID_BASE, SERVICE_AUTO};

pub mod cgroup;
pub mod kubernetes;
pub mod pods;
pub mod processes;
pub mod procfs;
pub mod tenant_hash;

/// Names of services by kernel service id (and local port for automatic
/// ones), and of clients by client id.
pub struct ServiceNames {
    configured: Vec<Arc<str>>,
    clients: Vec<Arc<str>>,
    auto: HashMap<u16, Arc<str>>,
}

impl ServiceNames {
    pub fn new(configured: impl IntoIterator<Item = String>) -> Self {
        ServiceNames {
            configured: configured.into_iter().map(Arc::from).collect(),
            clients: Vec::new(),
            auto: HashMap::new(),
        }
    }

    /// Adds the names of configured clients (ids from `CLIENT_ID_BASE`).
    pub fn with_clients(mut self, clients: impl IntoIterator<Item = String>) -> Self {
        self.clients = clients.into_iter().map(Arc::from).collect();
        self
    }

    pub fn name(&mut self, service_id: u32, local_port: u16) -> Arc<str> {
        if service_id != SERVICE_AUTO
            && service_id >= CLIENT_ID_BASE
            && let Some(n) = self.clients.get((service_id - CLIENT_ID_BASE) as usize)
        {
            return n.clone();
        }
        if service_id != SERVICE_AUTO
            && let Some(n) = self.configured.get(service_id as usize)
        {
            return n.clone();
        }
        self.auto
            .entry(local_port)
            .or_insert_with(|| {
                let comm = procfs::listener_comm(local_port).unwrap_or_else(|| "unknown".into());
                Arc::from(format!("{comm}:{local_port}"))
            })
            .clone()
    }
}

/// The `upstream` label of a client series: `ip:port` (`[ip]:port` for
/// IPv6; IPv4-mapped addresses print as IPv4).
pub fn upstream_label(addr: &[u8; 16], port: u16) -> String {
    let ip = std::net::Ipv6Addr::from(*addr);
    match ip.to_ipv4_mapped() {
        Some(v4) => format!("{v4}:{port}"),
        None => format!("[{ip}]:{port}"),
    }
}

/// Turns tenant bytes from the wire into a label value.
pub fn tenant_label(raw: &[u8], missing: &Arc<str>) -> Arc<str> {
    if raw.is_empty() {
        return missing.clone();
    }
    let s = String::from_utf8_lossy(raw);
    let clean: String = s
        .chars()
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect();
    Arc::from(clean)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_labels() {
        let missing: Arc<str> = Arc::from("unknown");
        assert_eq!(&*tenant_label(b"", &missing), "unknown");
        assert_eq!(&*tenant_label(b"acme", &missing), "acme");
        assert_eq!(
            &*tenant_label(b"a\x01b\xff", &missing),
            "a\u{fffd}b\u{fffd}"
        );
    }

    #[test]
    fn upstream_labels() {
        let mut v4 = [0u8; 16];
        v4[10] = 0xff;
        v4[11] = 0xff;
        v4[12..].copy_from_slice(&[10, 0, 0, 7]);
        assert_eq!(upstream_label(&v4, 443), "10.0.0.7:443");
        let v6 = std::net::Ipv6Addr::LOCALHOST.octets();
        assert_eq!(upstream_label(&v6, 8080), "[::1]:8080");
    }

    #[test]
    fn client_ids_name_clients() {
        let mut n = ServiceNames::new(["shop".to_string()]).with_clients(["pay".to_string()]);
        assert_eq!(&*n.name(CLIENT_ID_BASE, 443), "pay");
        assert_eq!(&*n.name(0, 443), "shop");
    }

    #[test]
    fn configured_names_win() {
        let mut n = ServiceNames::new(["shop".to_string()]);
        assert_eq!(&*n.name(0, 8080), "shop");
        // An unknown id falls back to automatic naming.
        assert!(n.name(7, 1).ends_with(":1"));
    }
}

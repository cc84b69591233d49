//! Who is who: turns the kernel's numeric service ids and raw tenant bytes
//! into the label values users see.
//!
//! - Configured services are named by config.
//! - Automatically found servers are named `<comm>:<port>` after the
//!   process that listens on the port (found once per port through /proc).
//! - Tenant ids are raw header bytes: made valid UTF-8, control characters
//!   replaced, empty mapped to the configured `missing` label.
//!
//! Every label value made here is valid UTF-8 without control characters
//! ([`label_text`]): safe to print on a terminal, and what is left to escape
//! in an exposition (`\`, `"`) is done by the Prometheus encoder
//! (`export::prometheus::write_label_value`); JSON, HTML and protobuf
//! escape (or need not escape) the rest themselves.

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
                // Any process may name itself anything (prctl(PR_SET_NAME)).
                let comm = procfs::listener_comm(local_port).unwrap_or_else(|| "unknown".into());
                Arc::from(format!("{}:{local_port}", label_text(&comm)))
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

/// Turns tenant bytes from the wire into a label value: invalid UTF-8 (a
/// value cut at `TENANT_MAX` in the middle of a character too) and control
/// characters become U+FFFD ([`label_text`]).
pub fn tenant_label(raw: &[u8], missing: &Arc<str>) -> Arc<str> {
    if raw.is_empty() {
        return missing.clone();
    }
    Arc::from(label_text(&String::from_utf8_lossy(raw)))
}

/// `text` with every control character (Unicode `Cc`: C0, DEL and C1,
/// tab, CR and LF among them) replaced by U+FFFD: no line breaks, no
/// terminal escape sequences (ESC, and CSI as U+009B). Borrowed when there
/// is nothing to replace.
pub fn label_text(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(text);
    }
    text.chars()
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect::<String>()
        .into()
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
        // ESC, DEL, a C1 CSI (as UTF-8), a tab; a character cut in half.
        assert_eq!(
            &*tenant_label(b"\x1b[31m\x7f\xc2\x9b\tx\xe2\x82", &missing),
            "\u{fffd}[31m\u{fffd}\u{fffd}\u{fffd}x\u{fffd}"
        );
        // What is left to escape in an exposition stays as sent.
        assert_eq!(&*tenant_label(br#"a",x="\"#, &missing), r#"a",x="\"#);
    }

    /// Any bytes: valid UTF-8 with no control character, and nothing
    /// changed that was neither.
    #[test]
    fn tenant_labels_of_random_bytes() {
        let missing: Arc<str> = Arc::from("unknown");
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..20_000 {
            let len = (next() % 65) as usize;
            let raw: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let label = tenant_label(&raw, &missing);
            assert!(!label.is_empty());
            assert!(!label.chars().any(char::is_control), "{label:?}");
            if let Ok(s) = std::str::from_utf8(&raw)
                && !s.is_empty()
                && !s.chars().any(char::is_control)
            {
                assert_eq!(&*label, s);
            }
        }
    }

    #[test]
    fn label_text_borrows_clean_text() {
        assert!(matches!(
            label_text("nginx"),
            std::borrow::Cow::Borrowed("nginx")
        ));
        assert_eq!(label_text("a\nb\u{9b}"), "a\u{fffd}b\u{fffd}");
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

//! Kubernetes parts of the config: services selected by pod namespace and
//! labels, and tenants taken from the server pod's namespace.
//!
//! ```yaml
//! services:
//!   - name: checkout
//!     match: {namespace: shop, labels: {app: checkout}}   # port optional
//! tenant: {from: namespace}                    # or:
//! tenant: {from: namespace_label, label: team}
//! ```
//!
//! Names and labels are checked against Kubernetes' own rules (RFC 1123
//! labels, qualified names) so that a selector that can never match is an
//! error at load time, not a silent empty series. Written by hand: the rules
//! are a few lines and no maintained crate carries them apart from an API
//! server.

use super::{Config, Match, TenantFrom};

impl Match {
    /// The match selects pods (namespace and/or labels).
    pub fn selects_pods(&self) -> bool {
        self.namespace.is_some() || !self.labels.is_empty()
    }

    /// One line for `burnwatch check`: what the service (or client) matches.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(p) = self.port {
            parts.push(format!("TCP port {p}"));
        }
        if let Some(c) = &self.comm {
            parts.push(format!("process name {c}"));
        }
        if let Some(e) = &self.exe {
            parts.push(format!("executable {}", e.display()));
        }
        if let Some(c) = &self.cgroup {
            parts.push(format!("cgroup under {c}"));
        }
        if let Some(ns) = &self.namespace {
            parts.push(format!("pods in namespace {ns}"));
        }
        if !self.labels.is_empty() {
            let l: Vec<String> = self
                .labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            parts.push(format!("pods labelled {}", l.join(",")));
        }
        parts.join(", ")
    }
}

/// The checks of the Kubernetes fields: (field path, message).
pub(super) fn validate(config: &Config) -> Result<(), (String, String)> {
    for (i, s) in config.services.iter().enumerate() {
        let at = |f: &str| format!("services[{i}].match.{f}");
        if let Some(ns) = &s.matcher.namespace
            && !is_dns_label(ns)
        {
            return Err((
                at("namespace"),
                format!(
                    "{ns:?} is not a Kubernetes namespace name (lowercase letters, digits and '-', at most 63)"
                ),
            ));
        }
        if s.matcher.selects_pods()
            && (s.matcher.comm.is_some() || s.matcher.exe.is_some() || s.matcher.cgroup.is_some())
        {
            return Err((
                format!("services[{i}].match"),
                "namespace and labels select pods; combine them with port only, not comm, exe or cgroup".into(),
            ));
        }
        for (k, v) in &s.matcher.labels {
            if !is_qualified_name(k) {
                return Err((at("labels"), format!("{k:?} is not a valid label key")));
            }
            if !is_label_value(v) {
                return Err((
                    at("labels"),
                    format!("{v:?} (label {k}) is not a valid label value"),
                ));
            }
        }
    }
    let t = &config.tenant;
    match (t.from, &t.label) {
        (TenantFrom::NamespaceLabel, None) => Err((
            "tenant.label".into(),
            "required with `from: namespace_label` (e.g. label: team)".into(),
        )),
        (TenantFrom::NamespaceLabel, Some(l)) if !is_qualified_name(l) => Err((
            "tenant.label".into(),
            format!("{l:?} is not a valid label key"),
        )),
        (TenantFrom::NamespaceLabel, Some(_)) => Ok(()),
        (_, Some(_)) => Err((
            "tenant.label".into(),
            "only used with `from: namespace_label`".into(),
        )),
        (_, None) => Ok(()),
    }
}

/// RFC 1123 label: what namespace names are.
fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    (1..=63).contains(&b.len())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// RFC 1123 subdomain: a label key's prefix.
fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// A label key: `[prefix/]name`, name at most 63 characters of
/// alphanumerics, `-`, `_`, `.`, starting and ending alphanumeric.
fn is_qualified_name(s: &str) -> bool {
    let name = match s.rsplit_once('/') {
        Some((prefix, name)) => {
            if !is_dns_subdomain(prefix) {
                return false;
            }
            name
        }
        None => s,
    };
    !name.is_empty() && is_label_value(name)
}

/// A label value: empty, or like a key's name part.
fn is_label_value(s: &str) -> bool {
    let b = s.as_bytes();
    if b.is_empty() {
        return true;
    }
    b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::{Config, ConfigError, TenantFrom};

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("burnwatch.yaml"))
    }

    #[test]
    fn selector_services_and_namespace_tenants_parse() {
        let c = parse(
            "services:\n  - name: checkout\n    match: {namespace: shop, labels: {app: checkout, app.kubernetes.io/part-of: shop}}\n  - name: search\n    match:\n      labels:\n        app: search\n      port: 8080\ntenant:\n  from: namespace\n",
        )
        .unwrap();
        let m = &c.services[0].matcher;
        assert_eq!(m.namespace.as_deref(), Some("shop"));
        assert_eq!(m.labels.get("app").map(String::as_str), Some("checkout"));
        assert_eq!(m.port, None);
        assert!(m.selects_pods());
        assert_eq!(c.services[1].matcher.port, Some(8080));
        assert_eq!(c.tenant.from, TenantFrom::Namespace);
        assert_eq!(
            m.describe(),
            "pods in namespace shop, pods labelled app=checkout,app.kubernetes.io/part-of=shop"
        );

        let c = parse("tenant:\n  from: namespace_label\n  label: team\n").unwrap();
        assert_eq!(c.tenant.from, TenantFrom::NamespaceLabel);
        assert_eq!(c.tenant.label.as_deref(), Some("team"));
    }

    #[test]
    fn bad_selectors_name_file_line_and_field() {
        let e = parse("services:\n  - name: a\n    match:\n      namespace: Shop_1\n").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("services[0].match.namespace"));
        assert_eq!(e.line, Some(4), "{e}");
        assert!(
            e.to_string()
                .starts_with("burnwatch.yaml:4: services[0].match.namespace"),
            "{e}"
        );

        let e = parse(
            "services:\n  - name: a\n    match:\n      port: 80\n  - name: b\n    match:\n      labels:\n        \"-app\": x\n",
        )
        .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("services[1].match.labels"));
        assert_eq!(e.line, Some(7), "{e}");

        let e = parse("services:\n  - name: a\n    match:\n      labels: {app: \"bad value!\"}\n")
            .unwrap_err();
        assert!(e.to_string().contains("not a valid label value"), "{e}");

        // An unknown selector key is a parse error with its line.
        let e = parse("services:\n  - name: a\n    match:\n      namespaces: shop\n").unwrap_err();
        assert!(e.to_string().starts_with("burnwatch.yaml:4"), "{e}");
        assert!(e.to_string().contains("namespaces"), "{e}");
    }

    #[test]
    fn tenant_label_rules() {
        let e = parse("tenant:\n  from: namespace_label\n").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("tenant.label"));
        assert!(e.to_string().contains("required"), "{e}");

        let e = parse("tenant:\n  from: header\n  label: team\n").unwrap_err();
        assert_eq!(
            (e.field.as_deref(), e.line),
            (Some("tenant.label"), Some(3))
        );

        let e = parse("tenant:\n  from: namespace_label\n  label: \"team/\"\n").unwrap_err();
        assert!(e.to_string().contains("not a valid label key"), "{e}");

        let e = parse("tenant:\n  from: namespaces\n").unwrap_err();
        assert!(e.to_string().starts_with("burnwatch.yaml:2"), "{e}");
    }

    #[test]
    fn names_follow_kubernetes_rules() {
        use super::{is_dns_label, is_label_value, is_qualified_name};
        assert!(is_dns_label("kube-system"));
        assert!(!is_dns_label("-a") && !is_dns_label("a-") && !is_dns_label(&"a".repeat(64)));
        assert!(is_qualified_name("app.kubernetes.io/name"));
        assert!(is_qualified_name("team"));
        assert!(!is_qualified_name("/team") && !is_qualified_name("Bad_Prefix/x"));
        assert!(is_label_value("") && is_label_value("v1.2_3"));
        assert!(!is_label_value(".x") && !is_label_value(&"a".repeat(64)));
    }
}

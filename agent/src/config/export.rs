//! Config of the exporters beyond the `/metrics` listener: labels carried by
//! every series, OTLP, Alertmanager, and tenant hashing.
//!
//! ```yaml
//! exporters:
//!   labels: { environment: prod, cluster: eu-1, node: "${NODE_NAME}" }
//!   otlp:
//!     endpoint: http://otel-collector:4317
//!     protocol: grpc            # or http (HTTP/protobuf, e.g. :4318)
//!     interval: 10s
//!     headers: { authorization: "Bearer ..." }
//!     temporality: cumulative   # or delta
//!   alertmanager: { url: http://alertmanager:9093 }
//! tenant:
//!   hash: hmac-sha256
//!   hash_key_file: /etc/burnwatch/tenant-key
//! ```

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::engine::duration::HumanDuration;

/// Labels every exported series and alert carries. Values may name
/// environment variables as `${VAR}` (e.g. the node name from the downward
/// API); they are expanded when the config is loaded.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ExportLabels {
    pub environment: Option<String>,
    pub cluster: Option<String>,
    pub node: Option<String>,
}

impl ExportLabels {
    /// The set labels as (name, value), in a fixed order.
    pub fn pairs(&self) -> Vec<(&'static str, String)> {
        [
            ("environment", &self.environment),
            ("cluster", &self.cluster),
            ("node", &self.node),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.clone().map(|v| (k, v)))
        .collect()
    }

    /// Expands `${VAR}` in every value; returns (field, message) on an unset
    /// variable or an invalid result.
    pub fn expand_env(&mut self) -> Result<(), (String, String)> {
        for (name, value) in [
            ("environment", &mut self.environment),
            ("cluster", &mut self.cluster),
            ("node", &mut self.node),
        ] {
            let field = format!("exporters.labels.{name}");
            let Some(v) = value else { continue };
            let expanded = expand(v).map_err(|var| {
                (
                    field.clone(),
                    format!("environment variable {var} is not set"),
                )
            })?;
            if expanded.is_empty() || expanded.len() > 128 || expanded.chars().any(char::is_control)
            {
                return Err((
                    field,
                    format!("{expanded:?} must be 1 to 128 printable characters"),
                ));
            }
            *v = expanded;
        }
        Ok(())
    }
}

/// `${VAR}` expansion; `Err(VAR)` when a variable is unset.
fn expand(text: &str) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let Some(len) = rest[start + 2..].find('}') else {
            out.push_str(&rest[start..]);
            return Ok(out);
        };
        let var = &rest[start + 2..start + 2 + len];
        out.push_str(&std::env::var(var).map_err(|_| var.to_string())?);
        rest = &rest[start + 3 + len..];
    }
    out.push_str(rest);
    Ok(out)
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OtlpProtocol {
    /// OTLP/gRPC (port 4317 by convention).
    #[default]
    Grpc,
    /// OTLP/HTTP with protobuf bodies (port 4318 by convention).
    Http,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Temporality {
    /// Totals since the agent started (Prometheus-like).
    #[default]
    Cumulative,
    /// Increments since the previous export.
    Delta,
}

/// `exporters.otlp`: metrics and alert events pushed to an OpenTelemetry
/// collector.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Otlp {
    /// `http://host:4317` (gRPC) or `http://host:4318` (HTTP; the signal
    /// paths `/v1/metrics` and `/v1/logs` are appended). No TLS yet.
    pub endpoint: String,
    #[serde(default)]
    pub protocol: OtlpProtocol,
    /// Time between metric exports.
    #[serde(default = "default_interval")]
    pub interval: HumanDuration,
    /// Extra request headers (gRPC metadata), e.g. authentication.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub temporality: Temporality,
    /// Deadline of one export request.
    #[serde(default = "default_timeout")]
    pub timeout: HumanDuration,
    /// Exports kept while the collector is down or slow; older ones are
    /// dropped (and counted) beyond this.
    #[serde(default = "default_max_queue")]
    pub max_queue: usize,
}

/// `exporters.alertmanager`: alerts pushed straight to Alertmanager's v2 API.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Alertmanager {
    /// Base URL, e.g. `http://alertmanager:9093`.
    pub url: String,
    /// Firing alerts are sent again this often (Alertmanager resolves alerts
    /// it has not heard of for a while).
    #[serde(default = "default_resend")]
    pub resend_interval: HumanDuration,
    #[serde(default = "default_timeout")]
    pub timeout: HumanDuration,
}

/// `tenant.hash`: how tenant ids are pseudonymised before they become labels.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub enum TenantHash {
    #[serde(rename = "hmac-sha256")]
    HmacSha256,
}

fn default_interval() -> HumanDuration {
    HumanDuration::from_secs(10)
}
fn default_timeout() -> HumanDuration {
    HumanDuration::from_secs(5)
}
fn default_resend() -> HumanDuration {
    HumanDuration::from_secs(60)
}
fn default_max_queue() -> usize {
    64
}

/// Checks what serde cannot: (field, message).
pub fn validate_otlp(o: &Otlp) -> Result<(), (String, String)> {
    let at = |f: &str| format!("exporters.otlp.{f}");
    // TLS is not built in yet (tonic and reqwest without TLS features):
    // refuse https here rather than fail at every export.
    if !o.endpoint.starts_with("http://") {
        return Err((
            at("endpoint"),
            format!(
                "{:?} must start with http:// (https is not supported yet: use a local collector)",
                o.endpoint
            ),
        ));
    }
    if o.interval.as_duration() < std::time::Duration::from_secs(1) {
        return Err((at("interval"), "must be at least 1s".into()));
    }
    if o.timeout.as_duration().is_zero() {
        return Err((at("timeout"), "must be more than 0".into()));
    }
    if !(1..=10_000).contains(&o.max_queue) {
        return Err((at("max_queue"), "must be between 1 and 10000".into()));
    }
    for (k, v) in &o.headers {
        let ok_name = !k.is_empty()
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok_name || v.chars().any(char::is_control) {
            return Err((at("headers"), format!("invalid header {k:?}")));
        }
    }
    Ok(())
}

pub fn validate_alertmanager(a: &Alertmanager) -> Result<(), (String, String)> {
    let at = |f: &str| format!("exporters.alertmanager.{f}");
    if !a.url.starts_with("http://") {
        return Err((
            at("url"),
            format!(
                "{:?} must start with http:// (https is not supported yet)",
                a.url
            ),
        ));
    }
    if a.resend_interval.as_duration() < std::time::Duration::from_secs(1) {
        return Err((at("resend_interval"), "must be at least 1s".into()));
    }
    Ok(())
}

/// The tenant hashing key: the file's bytes, trailing newline removed.
pub fn read_hash_key(path: &std::path::Path) -> Result<Vec<u8>, String> {
    let mut key =
        std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    while key.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        key.pop();
    }
    if key.len() < 16 {
        return Err(format!(
            "{}: the key must be at least 16 bytes (e.g. `head -c 32 /dev/urandom > key`)",
            path.display()
        ));
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn error(yaml: &str) -> String {
        Config::parse(yaml, std::path::Path::new("burnwatch.yaml"))
            .expect_err(yaml)
            .to_string()
    }

    #[test]
    fn errors_name_file_line_and_field() {
        assert_eq!(
            error("exporters:\n  otlp:\n    endpoint: collector:4317\n"),
            "burnwatch.yaml:3: exporters.otlp.endpoint: \"collector:4317\" must start with http:// (https is not supported yet: use a local collector)"
        );
        let e = error("exporters:\n  otlp:\n    endpoint: http://c:4317\n    protocol: udp\n");
        assert!(e.starts_with("burnwatch.yaml:4"), "{e}");
        let e = error("exporters:\n  labels:\n    node: ${BURNWATCH_SURELY_UNSET_VAR}\n");
        assert_eq!(
            e,
            "burnwatch.yaml:3: exporters.labels.node: environment variable BURNWATCH_SURELY_UNSET_VAR is not set"
        );
        let e = error("exporters:\n  labels:\n    zone: a\n");
        assert!(
            e.starts_with("burnwatch.yaml:3") && e.contains("zone"),
            "{e}"
        );
        let e = error("exporters:\n  otlp:\n    endpoint: https://c:4317\n");
        assert!(e.contains("https is not supported"), "{e}");
        let e = error("exporters:\n  alertmanager:\n    url: am:9093\n");
        assert!(
            e.starts_with("burnwatch.yaml:3: exporters.alertmanager.url"),
            "{e}"
        );
        let e = error("tenant:\n  hash: hmac-sha256\n");
        assert_eq!(
            e,
            "burnwatch.yaml:1: tenant.hash_key_file: required with `hash` (a file holding a secret key)"
        );
        let e = error("tenant:\n  hash: md5\n");
        assert!(e.starts_with("burnwatch.yaml:2"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let short = dir.path().join("key");
        std::fs::write(&short, "tiny\n").unwrap();
        let e = error(&format!(
            "tenant:\n  hash: hmac-sha256\n  hash_key_file: {}\n",
            short.display()
        ));
        assert!(e.contains("at least 16 bytes"), "{e}");
    }

    #[test]
    fn full_section_parses_with_defaults() {
        let c = Config::parse(
            "exporters:\n  labels: { environment: prod, cluster: eu-1 }\n  otlp: { endpoint: \"http://c:4318\", protocol: http, temporality: delta }\n  alertmanager: { url: \"http://am:9093\" }\n",
            std::path::Path::new("b.yaml"),
        )
        .unwrap();
        let o = c.exporters.otlp.unwrap();
        assert_eq!(o.protocol, OtlpProtocol::Http);
        assert_eq!(o.temporality, Temporality::Delta);
        assert_eq!(o.interval.as_secs(), 10);
        assert_eq!(
            c.exporters.alertmanager.unwrap().resend_interval.as_secs(),
            60
        );
        assert_eq!(
            c.exporters.labels.pairs(),
            vec![
                ("environment", "prod".to_string()),
                ("cluster", "eu-1".to_string())
            ]
        );
    }

    #[test]
    fn expands_environment_variables() {
        // PATH is set in every test environment.
        let path = std::env::var("PATH").unwrap();
        assert_eq!(expand("a-${PATH}-b").unwrap(), format!("a-{path}-b"));
        assert_eq!(expand("plain").unwrap(), "plain");
        assert_eq!(
            expand("${BURNWATCH_SURELY_UNSET_VAR}").unwrap_err(),
            "BURNWATCH_SURELY_UNSET_VAR"
        );
        assert_eq!(expand("${unterminated").unwrap(), "${unterminated");
    }
}

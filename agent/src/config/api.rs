//! Config of the agent's HTTP API (the port of `/metrics`, the probes, the
//! JSON API and the status page): who may read it, and over what.
//!
//! ```yaml
//! exporters:
//!   prometheus:
//!     listen: 0.0.0.0:9464          # BURNWATCH_LISTEN overrides it (see below)
//! api:
//!   auth:
//!     bearer_token_file: /etc/burnwatch/api-token   # a Kubernetes Secret's key
//!   tls:
//!     cert_file: /etc/burnwatch/tls/tls.crt         # PEM chain, leaf first
//!     key_file: /etc/burnwatch/tls/tls.key          # PEM private key
//! ```
//!
//! With `auth`, every route but `/healthz` and `/readyz` (kubelet probes)
//! needs `Authorization: Bearer <token>`; the file is read when the config
//! is loaded (a missing or empty one is a config error) and read again when
//! it changes, so a rotated Secret takes effect without a restart. With
//! `tls`, the port speaks HTTPS only (rustls, TLS 1.2 and 1.3); the
//! certificate and key are read again when either file changes.
//!
//! The listen address comes from the config, unless the environment
//! variable [`LISTEN_ENV`] is set: an `IP:PORT` replaces it, a bare IP keeps
//! the config's port (so a DaemonSet sets it from `status.podIP` through the
//! downward API, IPv4 or IPv6, and binds the pod's address only).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

/// Overrides `exporters.prometheus.listen`: `IP:PORT`, `[IPv6]:PORT`, or a
/// bare IP (the config's port stays).
pub const LISTEN_ENV: &str = "BURNWATCH_LISTEN";

/// `api`: optional authentication and TLS of the agent's HTTP port.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Api {
    #[serde(default)]
    pub auth: Option<Auth>,
    #[serde(default)]
    pub tls: Option<Tls>,
}

/// `api.auth`: a shared bearer token, as Prometheus' scrape config
/// `authorization: {credentials_file: ...}` sends it.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Auth {
    /// File holding the token (trailing newlines ignored).
    pub bearer_token_file: PathBuf,
}

/// `api.tls`: HTTPS on the API port.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// PEM certificate chain, the server's certificate first.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
}

/// Longest token accepted (a header line's worth).
const MAX_TOKEN_BYTES: usize = 4096;

/// Checks the section: the token file and the TLS files must be readable and
/// valid now. Returns (field path, message).
pub fn validate(api: &Api) -> Result<(), (String, String)> {
    if let Some(a) = &api.auth {
        read_token(&a.bearer_token_file)
            .map_err(|m| ("api.auth.bearer_token_file".to_string(), m))?;
    }
    if let Some(t) = &api.tls {
        load_tls(t)?;
    }
    Ok(())
}

/// The token in `path`: its bytes without trailing whitespace; printable
/// ASCII only (it travels in a header), 1 to 4096 bytes.
pub fn read_token(path: &Path) -> Result<Vec<u8>, String> {
    let mut token =
        std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    while token.last().is_some_and(u8::is_ascii_whitespace) {
        token.pop();
    }
    if token.is_empty() {
        return Err(format!("{}: the token file is empty", path.display()));
    }
    if token.len() > MAX_TOKEN_BYTES || !token.iter().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "{}: the token must be 1 to {MAX_TOKEN_BYTES} printable ASCII characters without spaces",
            path.display()
        ));
    }
    Ok(token)
}

/// The rustls server config of `tls`, with the ring provider the rest of
/// the agent (kube's client) already uses. Errors name the field.
pub fn load_tls(tls: &Tls) -> Result<Arc<rustls::ServerConfig>, (String, String)> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let cert_field = || "api.tls.cert_file".to_string();
    let key_field = || "api.tls.key_file".to_string();
    let certs = std::fs::read(&tls.cert_file).map_err(|e| {
        (
            cert_field(),
            format!("cannot read {}: {e}", tls.cert_file.display()),
        )
    })?;
    let certs = CertificateDer::pem_slice_iter(&certs)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| (cert_field(), format!("{}: {e}", tls.cert_file.display())))?;
    if certs.is_empty() {
        return Err((
            cert_field(),
            format!(
                "{}: no PEM certificate (-----BEGIN CERTIFICATE-----) in it",
                tls.cert_file.display()
            ),
        ));
    }
    let key = std::fs::read(&tls.key_file).map_err(|e| {
        (
            key_field(),
            format!("cannot read {}: {e}", tls.key_file.display()),
        )
    })?;
    let key = PrivateKeyDer::from_pem_slice(&key).map_err(|e| {
        (
            key_field(),
            format!("{}: no PEM private key: {e}", tls.key_file.display()),
        )
    })?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| (cert_field(), e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| {
        (
            key_field(),
            format!(
                "{} does not go with {}: {e}",
                tls.key_file.display(),
                tls.cert_file.display()
            ),
        )
    })?;
    let mut config = config;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Applies [`LISTEN_ENV`] to `listen` when it is set (and not empty).
pub fn listen_from_env(listen: &mut SocketAddr) -> Result<(), (String, String)> {
    match std::env::var(LISTEN_ENV) {
        Ok(v) if !v.trim().is_empty() => {
            *listen = parse_listen_override(v.trim(), listen.port()).ok_or_else(|| {
                (
                    "exporters.prometheus.listen".to_string(),
                    format!(
                        "{LISTEN_ENV}={v:?} is not an address (IP:PORT, [IPv6]:PORT or a bare IP)"
                    ),
                )
            })?;
            Ok(())
        }
        _ => Ok(()),
    }
}

/// `IP:PORT`, `[IPv6]:PORT`, or a bare IP (IPv4, IPv6, `[IPv6]`) with `port`.
pub fn parse_listen_override(v: &str, port: u16) -> Option<SocketAddr> {
    if let Ok(a) = v.parse::<SocketAddr>() {
        return Some(a);
    }
    let ip = v
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .unwrap_or(v);
    ip.parse::<IpAddr>()
        .ok()
        .map(|ip| SocketAddr::new(ip, port))
}

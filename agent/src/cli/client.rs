//! A small blocking client of the agent's JSON API.
//!
//! ureq (blocking, no async runtime): the CLI makes one request at a time, so
//! starting tokio + hyper for it would only add start-up time. HTTPS (an agent
//! with `api.tls`) goes through rustls with the ring provider the agent itself
//! uses, verified against `--ca-file` or the system's roots; a token
//! (`api.auth`) comes from `--token-file` or `BURNWATCH_TOKEN`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::de::DeserializeOwned;

use crate::api::types::{ApiError, GateAnswer, SlosResponse};

/// The token itself, for scripts that hold it in a variable (a file is
/// safer: `--token-file`; flags show in `ps`, so there is no `--token`).
pub const TOKEN_ENV: &str = "BURNWATCH_TOKEN";

/// How `status`, `top` and `gate` reach the agent.
#[derive(clap::Args, Clone, Debug)]
pub struct AgentArgs {
    /// The agent's address: http://host:port, or https:// for an agent with
    /// `api.tls`.
    #[arg(long, env = "BURNWATCH_AGENT", default_value = super::DEFAULT_AGENT)]
    pub agent: String,
    /// File holding the agent's API token (its `api.auth.bearer_token_file`),
    /// sent as `Authorization: Bearer`. Or set BURNWATCH_TOKEN to the token.
    #[arg(long, env = "BURNWATCH_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// PEM CA certificate(s) that signed the agent's certificate (https://);
    /// without it, the system's trust store.
    #[arg(long, env = "BURNWATCH_CA_FILE", value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
}

pub struct Client {
    base: String,
    http: ureq::Agent,
    /// `Bearer <token>`, when the agent asks for one.
    authorization: Option<String>,
}

impl Client {
    /// A client of the agent `args` names, with its token and CA (read now).
    pub fn connect(args: &AgentArgs) -> Result<Self> {
        let token = match &args.token_file {
            Some(path) => Some(
                crate::config::api::read_token(path)
                    .map_err(|e| anyhow::anyhow!("--token-file: {e}"))?,
            ),
            None => match std::env::var(TOKEN_ENV) {
                Ok(t) if !t.trim().is_empty() => Some(t.trim().as_bytes().to_vec()),
                _ => None,
            },
        };
        let authorization = token.map(|t| format!("Bearer {}", String::from_utf8_lossy(&t)));
        let roots = match &args.ca_file {
            Some(path) => {
                let pem = std::fs::read(path)
                    .with_context(|| format!("--ca-file: cannot read {}", path.display()))?;
                let certs = ureq::tls::parse_pem(&pem)
                    .filter_map(|item| match item {
                        Ok(ureq::tls::PemItem::Certificate(c)) => Some(Ok(c)),
                        Ok(_) => None,
                        Err(e) => Some(Err(e)),
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .with_context(|| format!("--ca-file: {}", path.display()))?;
                if certs.is_empty() {
                    bail!("--ca-file: no PEM certificate in {}", path.display());
                }
                ureq::tls::RootCerts::new_with_certs(&certs)
            }
            None => ureq::tls::RootCerts::PlatformVerifier,
        };
        let tls = ureq::tls::TlsConfig::builder()
            .provider(ureq::tls::TlsProvider::Rustls)
            .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .root_certs(roots)
            .build();
        Ok(Client::with(&args.agent, tls, authorization))
    }

    /// `base`: `http://host:port` (a bare `host:port` gets `http://`).
    fn with(base: &str, tls: ureq::tls::TlsConfig, authorization: Option<String>) -> Self {
        let base = base.trim_end_matches('/');
        let base = if base.contains("://") {
            base.to_owned()
        } else {
            format!("http://{base}")
        };
        let http = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(5)))
            .http_status_as_error(false)
            .tls_config(tls)
            .build()
            .into();
        Client {
            base,
            http,
            authorization,
        }
    }

    pub fn slos(&self) -> Result<SlosResponse> {
        self.get("/v1/slos", &[])
    }

    pub fn gate(&self, slo: &str, tenant: &str, risk: &str) -> Result<GateAnswer> {
        self.get(
            "/v1/gate",
            &[("slo", slo), ("tenant", tenant), ("risk", risk)],
        )
    }

    fn get<T: DeserializeOwned>(&self, path: &str, query: &[(&str, &str)]) -> Result<T> {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.get(&url);
        for (k, v) in query {
            request = request.query(*k, *v);
        }
        if let Some(a) = &self.authorization {
            request = request.header("Authorization", a);
        }
        let mut response = request.call().with_context(|| {
            format!("cannot reach the agent at {url} (is `burnwatch run` up? --agent URL)")
        })?;
        let status = response.status();
        let body = response
            .body_mut()
            .read_to_string()
            .with_context(|| format!("reading the answer of {url}"))?;
        if status == 401 {
            let hint = if self.authorization.is_some() {
                "the agent refused the token (--token-file / BURNWATCH_TOKEN)"
            } else {
                "the agent requires a token: --token-file FILE or BURNWATCH_TOKEN"
            };
            bail!("{url}: HTTP 401: {hint}");
        }
        if !status.is_success() {
            match serde_json::from_str::<ApiError>(&body) {
                Ok(e) => bail!("{}", e.error),
                Err(_) => bail!("{url}: HTTP {status}: {}", body.trim()),
            }
        }
        serde_json::from_str(&body)
            .with_context(|| format!("{url} answered something that is not the burnwatch API"))
    }
}

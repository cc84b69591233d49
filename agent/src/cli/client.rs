//! A small blocking client of the agent's JSON API.
//!
//! ureq (blocking, no TLS, no async runtime): the CLI makes one request at a time, so
//! starting tokio + hyper for it would only add start-up time; the agent serves plain
//! HTTP on the node, so TLS features stay off.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::de::DeserializeOwned;

use crate::api::types::{ApiError, GateAnswer, SlosResponse};

pub struct Client {
    base: String,
    http: ureq::Agent,
}

impl Client {
    /// `base`: `http://host:port` (a bare `host:port` gets `http://`).
    pub fn new(base: &str) -> Self {
        let base = base.trim_end_matches('/');
        let base = if base.contains("://") {
            base.to_owned()
        } else {
            format!("http://{base}")
        };
        let http = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(5)))
            .http_status_as_error(false)
            .build()
            .into();
        Client { base, http }
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
        let mut response = request.call().with_context(|| {
            format!("cannot reach the agent at {url} (is `burnwatch run` up? --agent URL)")
        })?;
        let status = response.status();
        let body = response
            .body_mut()
            .read_to_string()
            .with_context(|| format!("reading the answer of {url}"))?;
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

//! The agent's configuration: the YAML schema, its defaults, and validation
//! whose errors name the file, the line and the field.
//!
//! Parsing is serde with `deny_unknown_fields` everywhere, so a misspelt key
//! is an error rather than a silently ignored setting.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::engine::budget::BudgetPolicy;
use crate::engine::spec::{AlertingSpec, SloSpec};
use crate::engine::{SloConfig, SloSet};

pub const DEFAULT_TENANT_HEADER: &str = "X-Tenant-ID";
pub const DEFAULT_MISSING_TENANT: &str = "unknown";
pub const DEFAULT_LISTEN: &str = "0.0.0.0:9464";

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Services to watch. Empty: every HTTP/1.x server on the node, each
    /// named `<comm>:<port>`.
    #[serde(default)]
    pub services: Vec<Service>,
    /// Client side: outgoing HTTP/1.x requests of matching processes (or to
    /// a matching upstream port), counted per upstream.
    #[serde(default)]
    pub clients: Vec<Service>,
    #[serde(default)]
    pub tenant: Tenant,
    #[serde(default)]
    pub exporters: Exporters,
    /// SLOs as code (see `engine::spec`).
    #[serde(default)]
    pub slos: Vec<SloSpec>,
    #[serde(default)]
    pub alerting: AlertingSpec,
    #[serde(default)]
    pub budget_policy: BudgetPolicy,
    #[serde(default)]
    pub state: State,
    /// OpenSLO v1 files whose SLOs are added to `slos` (paths relative to
    /// this config file).
    #[serde(default)]
    pub openslo: Vec<PathBuf>,
    /// The HTTP API's authentication and TLS (see `config::api`).
    #[serde(default)]
    pub api: api::Api,
    /// How socket I/O is captured (see [`CaptureMode`]).
    #[serde(default)]
    pub capture: Capture,
}

/// `capture:`: which kernel front-end counts requests.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Capture {
    #[serde(default)]
    pub mode: CaptureMode,
}

/// `capture.mode`. `auto` (the default) takes the socket path where the
/// kernel has it (6.4+, x86_64) and the syscall path elsewhere; `socket`
/// and `syscalls` force one (the agent refuses to start when the forced one
/// cannot run).
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CaptureMode {
    #[default]
    Auto,
    Socket,
    Syscalls,
}

impl CaptureMode {
    /// The mode forced, `None` for `auto`.
    pub fn forced(self) -> Option<burnwatch_common::programs::CaptureMode> {
        match self {
            CaptureMode::Auto => None,
            CaptureMode::Socket => Some(burnwatch_common::programs::CaptureMode::Socket),
            CaptureMode::Syscalls => Some(burnwatch_common::programs::CaptureMode::Syscalls),
        }
    }
}

/// Durable state: where the SLO windows are checkpointed.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct State {
    /// Directory of the state store.
    #[serde(default = "default_state_dir")]
    pub dir: PathBuf,
    /// Seconds between checkpoints (also written on shutdown). The agent
    /// stretches it when a save takes over 2% of it (very many series).
    #[serde(default = "default_checkpoint_secs")]
    pub checkpoint_interval_secs: u64,
    /// bpffs directory where the kernel maps, programs and links are pinned,
    /// so the kernel keeps counting while the agent restarts. One per agent.
    #[serde(default = "default_bpffs_dir")]
    pub bpffs_dir: PathBuf,
}

impl Default for State {
    fn default() -> Self {
        State {
            dir: default_state_dir(),
            checkpoint_interval_secs: default_checkpoint_secs(),
            bpffs_dir: default_bpffs_dir(),
        }
    }
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/burnwatch")
}
pub fn default_bpffs_dir() -> PathBuf {
    PathBuf::from("/sys/fs/bpf/burnwatch")
}
fn default_checkpoint_secs() -> u64 {
    10
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// The `service` label value.
    pub name: String,
    #[serde(rename = "match")]
    pub matcher: Match,
}

/// Which processes (and ports) a service or client is. Every field given
/// must match.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Match {
    /// Services: the local TCP port the server listens on. Clients: the
    /// upstream's port.
    pub port: Option<u16>,
    /// The process name (`/proc/<pid>/comm`, at most 15 bytes), exactly.
    pub comm: Option<String>,
    /// The executable's absolute path (`/proc/<pid>/exe`), exactly.
    pub exe: Option<PathBuf>,
    /// A cgroup v2 path prefix (as in `/proc/<pid>/cgroup`), e.g.
    /// `/system.slice/nginx.service` or `/kubepods.slice/`: containers and
    /// systemd units.
    pub cgroup: Option<String>,
    /// Kubernetes: pods of this namespace (see `config::kubernetes`).
    #[serde(default)]
    pub namespace: Option<String>,
    /// Kubernetes: pods carrying all these labels.
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
}

impl Match {
    /// Only a port: matched by the kernel from the port alone.
    pub fn is_port_only(&self) -> bool {
        self.port.is_some()
            && self.comm.is_none()
            && self.exe.is_none()
            && self.cgroup.is_none()
            && !self.selects_pods()
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Tenant {
    /// Where the tenant id comes from.
    #[serde(default)]
    pub from: TenantFrom,
    /// Header carrying the tenant id (`from: header`), matched
    /// case-insensitively.
    #[serde(default = "default_tenant_header")]
    pub header: String,
    /// `from: path`: the path bytes before the tenant segment, e.g.
    /// `/tenants/` for `/tenants/{tenant}/...`.
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// Tenant label when the request carries none.
    #[serde(default = "default_missing")]
    pub missing: String,
    /// Distinct tenants kept per service; more go to `__overflow__`.
    #[serde(default = "default_max_per_service")]
    pub max_per_service: u32,
    /// Pseudonymise tenant ids (HMAC with `hash_key_file`) before they become
    /// labels: raw ids never leave the node.
    #[serde(default)]
    pub hash: Option<export::TenantHash>,
    #[serde(default)]
    pub hash_key_file: Option<PathBuf>,
    /// `from: namespace_label`: the namespace label holding the tenant.
    #[serde(default)]
    pub label: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TenantFrom {
    /// A request header (`tenant.header`).
    #[default]
    Header,
    /// The first label of the Host header (`acme` in `acme.shop.example`).
    Host,
    /// The path segment after `tenant.path_prefix`.
    Path,
    /// No tenant: every request gets the `missing` label.
    None,
    /// Kubernetes: the namespace of the server's pod.
    Namespace,
    /// Kubernetes: a label (`tenant.label`) of the server pod's namespace.
    NamespaceLabel,
}

impl Default for Tenant {
    fn default() -> Self {
        Tenant {
            from: TenantFrom::Header,
            header: default_tenant_header(),
            path_prefix: None,
            missing: default_missing(),
            max_per_service: default_max_per_service(),
            hash: None,
            hash_key_file: None,
            label: None,
        }
    }
}

/// The label of requests from tenants past `tenant.max_per_service`.
pub const OVERFLOW_TENANT: &str = "__overflow__";

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Exporters {
    #[serde(default)]
    pub prometheus: Prometheus,
    /// `environment`, `cluster`, `node` labels on every series and alert.
    #[serde(default)]
    pub labels: export::ExportLabels,
    #[serde(default)]
    pub otlp: Option<export::Otlp>,
    #[serde(default)]
    pub alertmanager: Option<export::Alertmanager>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Prometheus {
    /// Address of the HTTP server that serves `/metrics`.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
}

impl Default for Prometheus {
    fn default() -> Self {
        Prometheus {
            listen: default_listen(),
        }
    }
}

fn default_tenant_header() -> String {
    DEFAULT_TENANT_HEADER.to_string()
}
fn default_missing() -> String {
    DEFAULT_MISSING_TENANT.to_string()
}
fn default_max_per_service() -> u32 {
    1000
}
fn default_listen() -> SocketAddr {
    DEFAULT_LISTEN.parse().expect("valid default address")
}

impl Default for Config {
    /// The config `burnwatch run` uses without `--config`: every HTTP/1.x
    /// server on the node, tenant from `X-Tenant-ID`, Prometheus on :9464.
    fn default() -> Self {
        Config {
            services: Vec::new(),
            clients: Vec::new(),
            tenant: Tenant::default(),
            exporters: Exporters::default(),
            slos: Vec::new(),
            alerting: AlertingSpec::default(),
            budget_policy: BudgetPolicy::default(),
            state: State::default(),
            openslo: Vec::new(),
            api: api::Api::default(),
            capture: Capture::default(),
        }
    }
}

/// A config that could not be used, with where and why.
#[derive(Debug)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: Option<u32>,
    pub column: Option<u32>,
    /// Dotted path of the field, e.g. `services[1].match.port`.
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(col) = self.column {
                write!(f, ":{col}")?;
            }
        }
        write!(f, ": ")?;
        if let Some(field) = &self.field {
            write!(f, "{field}: ")?;
        }
        write!(f, "{}", self.message)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            line: None,
            column: None,
            field: None,
            message: format!("cannot read: {e}"),
        })?;
        // An empty file is a mistake (a save cut short, a ConfigMap key
        // emptied), not a request for the defaults: on reload it would wipe
        // every SLO and its budget. The defaults are what no --config gives.
        if text
            .lines()
            .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#') || l.trim() == "---")
        {
            return Err(ConfigError {
                file: path.to_path_buf(),
                line: None,
                column: None,
                field: None,
                message:
                    "the file is empty (no settings); to run on the default config, omit --config"
                        .into(),
            });
        }
        Config::parse(&text, path)
    }

    /// Parses and validates config text; `file` is only used in errors.
    pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
        let mut config: Config = if text.trim().is_empty() {
            Config::default()
        } else {
            serde_saphyr::from_str(text).map_err(|e| {
                let loc = e.location();
                ConfigError {
                    file: file.to_path_buf(),
                    line: loc.map(|l| l.line() as u32),
                    column: loc.map(|l| l.column() as u32),
                    field: None,
                    message: first_line(&e.to_string()),
                }
            })?
        };
        for (i, rel) in config.openslo.clone().iter().enumerate() {
            let path = file.parent().unwrap_or(Path::new(".")).join(rel);
            let specs = openslo::load(&path).map_err(|(field, message)| ConfigError {
                line: locate_field(text, &format!("openslo[{i}]")),
                file: file.to_path_buf(),
                column: None,
                field: Some(if field.is_empty() {
                    format!("openslo[{i}]")
                } else {
                    format!("openslo[{i}] ({}): {field}", path.display())
                }),
                message,
            })?;
            config.slos.extend(specs);
        }
        config
            .exporters
            .labels
            .expand_env()
            .and_then(|()| api::listen_from_env(&mut config.exporters.prometheus.listen))
            .and_then(|()| config.validate())
            .map_err(|(field, message)| ConfigError {
                line: locate_field(text, &field),
                file: file.to_path_buf(),
                column: None,
                field: Some(field),
                message,
            })?;
        Ok(config)
    }

    /// The SLO part of the config, for the engine.
    pub fn slo_config(&self) -> SloConfig {
        SloConfig {
            slos: self.slos.clone(),
            alerting: self.alerting.clone(),
            budget_policy: self.budget_policy,
        }
    }

    /// The compiled SLOs (the config was validated when loaded).
    pub fn slo_set(&self) -> SloSet {
        self.slo_config()
            .validate()
            .expect("SLOs were validated when the config was loaded")
    }

    /// Checks what serde cannot: returns (field path, message).
    fn validate(&self) -> Result<(), (String, String)> {
        if let Err(errors) = self.slo_config().validate()
            && let Some(e) = errors.0.first()
        {
            return Err((e.path.clone(), e.message.clone()));
        }
        if !self.services.is_empty() {
            for (i, slo) in self.slos.iter().enumerate() {
                if !self.services.iter().any(|s| s.name == slo.service) {
                    return Err((
                        format!("slos[{i}].service"),
                        format!(
                            "no service named {:?} (services: {})",
                            slo.service,
                            self.services
                                .iter()
                                .map(|s| s.name.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    ));
                }
            }
        }
        if self.state.checkpoint_interval_secs == 0 {
            return Err((
                "state.checkpoint_interval_secs".into(),
                "must be at least 1".into(),
            ));
        }
        for (list, what) in [(&self.services, "services"), (&self.clients, "clients")] {
            let mut names = std::collections::HashSet::new();
            let mut ports = std::collections::HashMap::new();
            for (i, s) in list.iter().enumerate() {
                let at = |f: &str| format!("{what}[{i}].{f}");
                if !valid_label_value(&s.name) {
                    return Err((
                        at("name"),
                        format!("{:?} must be 1 to 128 printable characters", s.name),
                    ));
                }
                if !names.insert(s.name.as_str()) {
                    return Err((at("name"), format!("duplicate name {:?}", s.name)));
                }
                validate_match(&s.matcher, &at)?;
                if let Some(p) = s.matcher.port
                    && s.matcher.is_port_only()
                    && let Some(other) = ports.insert(p, s.name.as_str())
                {
                    return Err((
                        at("match.port"),
                        format!("port {p} is already matched by {other:?}"),
                    ));
                }
            }
        }
        let h = &self.tenant.header;
        if h.is_empty() || h.len() > 64 || !h.bytes().all(is_token_byte) {
            return Err((
                "tenant.header".into(),
                format!("{h:?} is not a valid HTTP header name"),
            ));
        }
        if self.tenant.from == TenantFrom::Path {
            match &self.tenant.path_prefix {
                None => {
                    return Err((
                        "tenant.path_prefix".into(),
                        "required with `from: path` (e.g. /tenants/)".into(),
                    ));
                }
                Some(p) if !p.starts_with('/') || p.len() > 32 => {
                    return Err((
                        "tenant.path_prefix".into(),
                        format!("{p:?} must start with / and be at most 32 bytes"),
                    ));
                }
                Some(_) => {}
            }
        }
        if !(1..=100_000).contains(&self.tenant.max_per_service) {
            return Err((
                "tenant.max_per_service".into(),
                format!(
                    "{} must be between 1 and 100000",
                    self.tenant.max_per_service
                ),
            ));
        }
        if let Some(o) = &self.exporters.otlp {
            export::validate_otlp(o)?;
        }
        if let Some(a) = &self.exporters.alertmanager {
            export::validate_alertmanager(a)?;
        }
        match (&self.tenant.hash, &self.tenant.hash_key_file) {
            (Some(_), None) => {
                return Err((
                    "tenant.hash_key_file".into(),
                    "required with `hash` (a file holding a secret key)".into(),
                ));
            }
            (None, Some(_)) => {
                return Err(("tenant.hash".into(), "missing: hmac-sha256".into()));
            }
            (Some(_), Some(f)) => {
                export::read_hash_key(f).map_err(|m| ("tenant.hash_key_file".to_string(), m))?;
            }
            (None, None) => {}
        }
        kubernetes::validate(self)?;
        api::validate(&self.api)?;
        if !valid_label_value(&self.tenant.missing) {
            return Err((
                "tenant.missing".into(),
                format!(
                    "{:?} must be 1 to 128 printable characters",
                    self.tenant.missing
                ),
            ));
        }
        Ok(())
    }
}

/// A matcher's own checks: (field path, message) on error.
fn validate_match(m: &Match, at: &dyn Fn(&str) -> String) -> Result<(), (String, String)> {
    if m.port.is_none()
        && m.comm.is_none()
        && m.exe.is_none()
        && m.cgroup.is_none()
        && !m.selects_pods()
    {
        return Err((
            at("match"),
            "needs at least one of: port, comm, exe, cgroup, namespace, labels".to_string(),
        ));
    }
    if m.port == Some(0) {
        return Err((at("match.port"), "port 0 is not a valid port".into()));
    }
    if let Some(c) = &m.comm
        && (c.is_empty() || c.len() > 15 || c.contains('/'))
    {
        return Err((
            at("match.comm"),
            format!("{c:?} must be a process name of 1 to 15 bytes (the kernel keeps 15)"),
        ));
    }
    if let Some(e) = &m.exe
        && !e.is_absolute()
    {
        return Err((
            at("match.exe"),
            format!("{:?} must be an absolute path", e.display()),
        ));
    }
    if let Some(c) = &m.cgroup
        && !c.starts_with('/')
    {
        return Err((
            at("match.cgroup"),
            format!("{c:?} must be a cgroup path starting with / (as in /proc/<pid>/cgroup)"),
        ));
    }
    Ok(())
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or(s).to_string()
}

fn valid_label_value(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 && !s.chars().any(char::is_control)
}

/// RFC 9110 token characters.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Best-effort line of a validated field: finds the nth list item of the
/// top-level key and then the field's last key below it. Validation errors
/// come after parsing, when serde's positions are gone.
fn locate_field(text: &str, field: &str) -> Option<u32> {
    let mut parts = field.split('.');
    let first = parts.next()?;
    let (key, index) = match first.split_once('[') {
        Some((k, rest)) => (k, rest.trim_end_matches(']').parse::<usize>().ok()),
        None => (first, None),
    };
    let lines: Vec<&str> = text.lines().collect();
    let mut i = lines
        .iter()
        .position(|l| l.starts_with(&format!("{key}:")))?;
    if let Some(n) = index {
        let mut seen = 0;
        i += 1;
        loop {
            let l = lines.get(i)?;
            if l.trim_start().starts_with("- ") || l.trim() == "-" {
                if seen == n {
                    break;
                }
                seen += 1;
            } else if !l.starts_with(' ') && !l.trim().is_empty() && !l.starts_with('-') {
                return None;
            }
            i += 1;
        }
    }
    let Some(last) = field.rsplit('.').next().filter(|_| field.contains('.')) else {
        return Some(i as u32 + 1);
    };
    let last = last.split('[').next().unwrap_or(last);
    let start = i;
    for (j, l) in lines.iter().enumerate().skip(start) {
        let t = l.trim_start().trim_start_matches("- ");
        if t.starts_with(&format!("{last}:")) {
            return Some(j as u32 + 1);
        }
        if j > start && !l.starts_with(' ') && !l.starts_with('-') && !l.trim().is_empty() {
            break;
        }
    }
    Some(start as u32 + 1)
}

pub mod api;
pub mod export;
pub mod kubernetes;
pub mod openslo;
#[cfg(test)]
mod tests;

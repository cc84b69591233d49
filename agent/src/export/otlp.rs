//! OTLP export: the Prometheus instruments as OTLP metrics every
//! `interval`, and alert transitions as OTLP log records, over gRPC or
//! HTTP/protobuf.
//!
//! Why not `opentelemetry-otlp`'s exporters with the OpenTelemetry SDK: they
//! only take the SDK's aggregated data, whose types have crate-private
//! constructors, and the SDK has no instrument that accepts pre-aggregated
//! histogram buckets; burnwatch's histograms are bucketed by the kernel,
//! so the SDK would need one `record` call per request (or lose the exact
//! buckets). Its batch log processor also drops silently when full. So this
//! module builds the OTLP messages from `opentelemetry-proto` (the generated
//! types `opentelemetry-otlp` itself is built on) and sends them with the
//! same transports: tonic's generated gRPC client, reqwest for
//! HTTP/protobuf. That keeps histograms exact and makes the queue, retries
//! and drop accounting ours:
//!
//! - one task; the poll loop hands it alert events through a bounded
//!   channel (`try_send`: a full channel drops and counts, never blocks);
//! - every export (a metrics snapshot or a batch of log records) goes into
//!   a queue of at most `max_queue` exports; when it is full the oldest is
//!   dropped and counted (`burnwatch_export_dropped_total{exporter="otlp"}`);
//! - the head of the queue is retried with exponential backoff (1 s to
//!   30 s) while the collector is down or slow, each attempt bounded by
//!   `timeout`. Memory is bounded by `max_queue` exports.
//!
//! Metric names are the Prometheus family names (without `_total`), so the
//! same queries work after a collector's Prometheus exporter.

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, logs_service_client::LogsServiceClient,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, metrics_service_client::MetricsServiceClient,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs, SeverityNumber};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint,
    ResourceMetrics, ScopeMetrics, Sum, metric, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use burnwatch_common::maps::{conn_event, counter};

use super::{AlertEvent, SelfStats};
use crate::attribution::pods::PodLabels;
use crate::config::export::{Otlp, OtlpProtocol, Temporality};
use crate::engine::TransitionKind;
use crate::engine::state::AgentState;
use crate::engine::window::Window;

/// Alert events waiting for the exporter task.
const EVENT_CHANNEL: usize = 1024;
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(5);

pub struct Handle {
    events: mpsc::Sender<AlertEvent>,
    stats: Arc<SelfStats>,
    /// A reloaded `exporters.otlp`, applied by the task between exports.
    settings: mpsc::UnboundedSender<Settings>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

/// What a reload can change in a running exporter. Built (and checked)
/// before it is handed over, so a bad endpoint or header is a reload
/// error and the running exporter carries on.
pub struct Settings {
    transport: Transport,
    resource: Resource,
    interval: Duration,
    temporality: Temporality,
    max_queue: usize,
}

impl Settings {
    pub fn new(config: &Otlp, labels: &[(&'static str, String)]) -> Result<Settings> {
        Ok(Settings {
            transport: Transport::new(config)?,
            resource: resource(labels),
            interval: config.interval.as_duration(),
            temporality: config.temporality,
            max_queue: config.max_queue,
        })
    }
}

impl Handle {
    /// Queues an alert event; drops and counts it when the exporter is
    /// that far behind.
    pub fn send(&self, event: AlertEvent) {
        if self.events.try_send(event).is_err() {
            self.stats.otlp_logs.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Switches the running exporter to `settings` (a reload): what is
    /// queued goes to the new endpoint, delta state carries over when the
    /// temporality is unchanged.
    pub fn reconfigure(&self, settings: Settings) {
        let _ = self.settings.send(settings);
    }

    pub async fn shutdown(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

pub fn start(
    config: &Otlp,
    labels: Vec<(&'static str, String)>,
    state: Arc<RwLock<AgentState>>,
    stats: Arc<SelfStats>,
) -> Result<Handle> {
    let settings = Settings::new(config, &labels)?;
    let (events, rx) = mpsc::channel(EVENT_CHANNEL);
    let (settings_tx, settings_rx) = mpsc::unbounded_channel();
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let exporter = Exporter {
        transport: settings.transport,
        resource: settings.resource,
        state,
        stats: stats.clone(),
        interval: settings.interval,
        temporality: settings.temporality,
        max_queue: settings.max_queue,
        queue: VecDeque::new(),
        started_ns: now_ns(),
        last_export_ns: now_ns(),
        deltas: Deltas::new(settings.temporality),
    };
    let task = tokio::spawn(exporter.run(rx, settings_rx, stopped));
    Ok(Handle {
        events,
        stats,
        settings: settings_tx,
        stop,
        task,
    })
}

/// Resource attributes: who is reporting.
fn resource(labels: &[(&'static str, String)]) -> Resource {
    let mut attrs = vec![
        kv("service.name", "burnwatch"),
        kv("service.version", env!("CARGO_PKG_VERSION")),
    ];
    if let Some(host) = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
    {
        attrs.push(kv("host.name", &host));
    }
    let env_node = ["K8S_NODE_NAME", "NODE_NAME"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()));
    let config_node = labels
        .iter()
        .find(|(k, _)| *k == "node")
        .map(|(_, v)| v.clone());
    if let Some(node) = env_node.or(config_node) {
        attrs.push(kv("k8s.node.name", &node));
    }
    for (k, v) in labels {
        match *k {
            "environment" => attrs.push(kv("deployment.environment.name", v)),
            "cluster" => attrs.push(kv("k8s.cluster.name", v)),
            _ => {}
        }
    }
    Resource {
        attributes: attrs,
        ..Default::default()
    }
}

fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_string())),
        }),
        ..Default::default()
    }
}

fn kv_f64(key: &str, value: f64) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::DoubleValue(value)),
        }),
        ..Default::default()
    }
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn scope() -> Option<InstrumentationScope> {
    Some(InstrumentationScope {
        name: "burnwatch".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        ..Default::default()
    })
}

enum Export {
    Metrics(ExportMetricsServiceRequest),
    /// The request and its number of log records.
    Logs(ExportLogsServiceRequest, u64),
}

// One per agent, never moved in a hot loop: the size difference is moot.
#[allow(clippy::large_enum_variant)]
enum Transport {
    Grpc {
        metrics: MetricsServiceClient<tonic::transport::Channel>,
        logs: LogsServiceClient<tonic::transport::Channel>,
        headers: tonic::metadata::MetadataMap,
        timeout: Duration,
    },
    Http {
        client: reqwest::Client,
        metrics_url: String,
        logs_url: String,
        headers: reqwest::header::HeaderMap,
    },
}

impl Transport {
    fn new(config: &Otlp) -> Result<Transport> {
        let timeout = config.timeout.as_duration();
        Ok(match config.protocol {
            OtlpProtocol::Grpc => {
                let channel = tonic::transport::Endpoint::from_shared(config.endpoint.clone())
                    .with_context(|| format!("OTLP endpoint {:?}", config.endpoint))?
                    .connect_timeout(timeout)
                    .timeout(timeout)
                    .connect_lazy();
                let mut headers = tonic::metadata::MetadataMap::new();
                for (k, v) in &config.headers {
                    let key = tonic::metadata::MetadataKey::from_bytes(k.to_lowercase().as_bytes())
                        .with_context(|| format!("OTLP header {k:?}"))?;
                    let value = v
                        .parse()
                        .with_context(|| format!("OTLP header {k:?} value"))?;
                    headers.insert(key, value);
                }
                Transport::Grpc {
                    metrics: MetricsServiceClient::new(channel.clone()),
                    logs: LogsServiceClient::new(channel),
                    headers,
                    timeout,
                }
            }
            OtlpProtocol::Http => {
                let mut headers = reqwest::header::HeaderMap::new();
                for (k, v) in &config.headers {
                    headers.insert(
                        reqwest::header::HeaderName::from_bytes(k.as_bytes())
                            .with_context(|| format!("OTLP header {k:?}"))?,
                        v.parse()
                            .with_context(|| format!("OTLP header {k:?} value"))?,
                    );
                }
                headers.insert(
                    reqwest::header::CONTENT_TYPE,
                    reqwest::header::HeaderValue::from_static("application/x-protobuf"),
                );
                let base = config.endpoint.trim_end_matches('/');
                Transport::Http {
                    client: reqwest::Client::builder()
                        .timeout(timeout)
                        .build()
                        .context("building the OTLP HTTP client")?,
                    metrics_url: format!("{base}/v1/metrics"),
                    logs_url: format!("{base}/v1/logs"),
                    headers,
                }
            }
        })
    }

    async fn send(&mut self, export: &Export) -> Result<()> {
        match self {
            Transport::Grpc {
                metrics,
                logs,
                headers,
                timeout,
            } => {
                let call = async {
                    match export {
                        Export::Metrics(r) => {
                            let mut req = tonic::Request::new(r.clone());
                            *req.metadata_mut() = headers.clone();
                            metrics.export(req).await.map(|_| ())
                        }
                        Export::Logs(r, _) => {
                            let mut req = tonic::Request::new(r.clone());
                            *req.metadata_mut() = headers.clone();
                            logs.export(req).await.map(|_| ())
                        }
                    }
                };
                tokio::time::timeout(*timeout, call)
                    .await
                    .context("timed out")?
                    .map_err(|s| anyhow::anyhow!("gRPC {:?}: {}", s.code(), s.message()))
            }
            Transport::Http {
                client,
                metrics_url,
                logs_url,
                headers,
            } => {
                let (url, body) = match export {
                    Export::Metrics(r) => (&*metrics_url, r.encode_to_vec()),
                    Export::Logs(r, _) => (&*logs_url, r.encode_to_vec()),
                };
                let response = client
                    .post(url)
                    .headers(headers.clone())
                    .body(body)
                    .send()
                    .await?;
                let status = response.status();
                if !status.is_success() {
                    anyhow::bail!("HTTP {status} from {url}");
                }
                Ok(())
            }
        }
    }
}

struct Exporter {
    transport: Transport,
    resource: Resource,
    state: Arc<RwLock<AgentState>>,
    stats: Arc<SelfStats>,
    interval: Duration,
    temporality: Temporality,
    max_queue: usize,
    queue: VecDeque<Export>,
    started_ns: u64,
    last_export_ns: u64,
    deltas: Deltas,
}

impl Exporter {
    async fn run(
        mut self,
        mut events: mpsc::Receiver<AlertEvent>,
        mut reconfig: mpsc::UnboundedReceiver<Settings>,
        mut stopped: tokio::sync::oneshot::Receiver<()>,
    ) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut backoff = BACKOFF_MIN;
        let mut next_attempt = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let export = Export::Metrics(self.metrics_export());
                    self.enqueue(export);
                }
                Some(first) = events.recv() => {
                    let mut batch = vec![first];
                    while batch.len() < 512 {
                        match events.try_recv() {
                            Ok(e) => batch.push(e),
                            Err(_) => break,
                        }
                    }
                    let n = batch.len() as u64;
                    self.enqueue(Export::Logs(self.logs_export(&batch), n));
                }
                _ = tokio::time::sleep_until(next_attempt), if !self.queue.is_empty() => {
                    if self.send_head().await {
                        backoff = BACKOFF_MIN;
                        next_attempt = tokio::time::Instant::now();
                    } else {
                        next_attempt = tokio::time::Instant::now() + backoff;
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                    }
                }
                Some(new) = reconfig.recv() => {
                    self.transport = new.transport;
                    self.resource = new.resource;
                    self.max_queue = new.max_queue;
                    if new.temporality != self.temporality {
                        // Deltas of one temporality mean nothing to the other.
                        self.temporality = new.temporality;
                        self.deltas = Deltas::new(new.temporality);
                    }
                    if new.interval != self.interval {
                        self.interval = new.interval;
                        tick = tokio::time::interval(self.interval);
                        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    }
                    while self.queue.len() > self.max_queue.max(1)
                        && let Some(old) = self.queue.pop_front()
                    {
                        let n = match &old {
                            Export::Metrics(_) => 1,
                            Export::Logs(_, n) => *n,
                        };
                        self.counters(&old).dropped.fetch_add(n, Ordering::Relaxed);
                    }
                    // The new collector gets what is queued at once.
                    backoff = BACKOFF_MIN;
                    next_attempt = tokio::time::Instant::now();
                }
                _ = &mut stopped => break,
            }
        }
        // One last try for what is queued, stopping at the first failure and
        // bounded in total so a slow collector cannot hold up shutdown.
        let flush = async {
            while !self.queue.is_empty() {
                if !self.send_head().await {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(SHUTDOWN_FLUSH, flush).await;
    }

    fn counters(&self, export: &Export) -> &super::ExportCounters {
        match export {
            Export::Metrics(_) => &self.stats.otlp_metrics,
            Export::Logs(..) => &self.stats.otlp_logs,
        }
    }

    fn enqueue(&mut self, export: Export) {
        if self.queue.len() >= self.max_queue
            && let Some(old) = self.queue.pop_front()
        {
            let n = match &old {
                Export::Metrics(_) => 1,
                Export::Logs(_, n) => *n,
            };
            self.counters(&old).dropped.fetch_add(n, Ordering::Relaxed);
        }
        self.queue.push_back(export);
    }

    /// Sends the oldest queued export; true on success.
    async fn send_head(&mut self) -> bool {
        let Some(head) = self.queue.pop_front() else {
            return true;
        };
        match self.transport.send(&head).await {
            Ok(()) => {
                self.counters(&head).sent.fetch_add(1, Ordering::Relaxed);
                debug!("OTLP export sent");
                true
            }
            Err(e) => {
                self.counters(&head).failed.fetch_add(1, Ordering::Relaxed);
                warn!("OTLP export failed (retrying with backoff): {e:#}");
                self.queue.push_front(head);
                false
            }
        }
    }

    fn metrics_export(&mut self) -> ExportMetricsServiceRequest {
        let now = now_ns();
        self.deltas.begin_round();
        let start = match self.temporality {
            Temporality::Cumulative => self.started_ns,
            Temporality::Delta => self.last_export_ns,
        };
        self.last_export_ns = now;
        let temporality = match self.temporality {
            Temporality::Cumulative => AggregationTemporality::Cumulative,
            Temporality::Delta => AggregationTemporality::Delta,
        } as i32;
        let state = self.state.clone();
        let st = state.read().unwrap_or_else(|e| e.into_inner());
        let mut scratch = Vec::new();
        let mut metrics = Vec::new();

        let point =
            |attrs: Vec<KeyValue>, v: number_data_point::Value, start: u64| NumberDataPoint {
                attributes: attrs,
                start_time_unix_nano: start,
                time_unix_nano: now,
                value: Some(v),
                ..Default::default()
            };

        let mut requests = Vec::new();
        for s in &st.requests.series {
            let status = format!("{:03}", s.labels.status);
            let mut attrs = vec![
                kv("service", &s.labels.service),
                kv("tenant", &s.labels.tenant),
                kv("method", s.labels.method),
                kv("status_code", &status),
            ];
            let (pod, n) = PodLabels::pairs_of(s.labels.pod.as_deref());
            attrs.extend(pod[..n].iter().map(|(k, v)| kv(k, v)));
            self.deltas.value(
                identity(&(
                    "req",
                    &s.labels.service,
                    &s.labels.tenant,
                    s.labels.method,
                    s.labels.status,
                    &s.labels.pod,
                )),
                &[s.stats.count],
                &mut scratch,
            );
            requests.push(point(
                attrs,
                number_data_point::Value::AsInt(scratch[0] as i64),
                start,
            ));
        }
        metrics.push(sum(
            "burnwatch_http_requests",
            "HTTP requests seen by the kernel, by service, tenant, method and status code (000: no response).",
            "{request}",
            requests,
            temporality,
        ));

        let mut client_requests = Vec::new();
        for (l, n) in &st.clients.series {
            let status = format!("{:03}", l.status);
            let mut attrs = vec![
                kv("service", &l.service),
                kv("upstream", &l.upstream),
                kv("tenant", &l.tenant),
                kv("method", l.method),
                kv("status_code", &status),
            ];
            let (pod, np) = PodLabels::pairs_of(l.pod.as_deref());
            attrs.extend(pod[..np].iter().map(|(k, v)| kv(k, v)));
            self.deltas
                .value(identity(&("client", l)), &[*n], &mut scratch);
            client_requests.push(point(
                attrs,
                number_data_point::Value::AsInt(scratch[0] as i64),
                start,
            ));
        }
        if !client_requests.is_empty() {
            metrics.push(sum(
                "burnwatch_http_client_requests",
                "HTTP requests watched clients made, by client, upstream (ip:port), tenant, method and status code (000: no response).",
                "{request}",
                client_requests,
                temporality,
            ));
        }

        let bounds = st.latency_bounds_s.clone();
        let mut histograms = Vec::new();
        for l in &st.requests.latency {
            let mut current: Vec<u64> = l.buckets.to_vec();
            current.push(l.count);
            current.push(l.sum_ns);
            self.deltas.value(
                identity(&("lat", &l.service, &l.tenant, &l.pod)),
                &current,
                &mut scratch,
            );
            let n = l.buckets.len();
            histograms.push(HistogramDataPoint {
                attributes: {
                    let (pod, n) = PodLabels::pairs_of(l.pod.as_deref());
                    let mut a = vec![kv("service", &l.service), kv("tenant", &l.tenant)];
                    a.extend(pod[..n].iter().map(|(k, v)| kv(k, v)));
                    a
                },
                start_time_unix_nano: start,
                time_unix_nano: now,
                count: scratch[n],
                sum: Some(scratch[n + 1] as f64 / 1e9),
                // The kernel's buckets are per-bucket counts, as OTLP wants.
                bucket_counts: scratch[..n].to_vec(),
                explicit_bounds: bounds.iter().copied().take(n.saturating_sub(1)).collect(),
                ..Default::default()
            });
        }
        metrics.push(Metric {
            name: "burnwatch_http_request_duration_seconds".into(),
            description: "Time from the first byte of a request read to the first byte of its response written.".into(),
            unit: "s".into(),
            data: Some(metric::Data::Histogram(Histogram {
                data_points: histograms,
                aggregation_temporality: temporality,
            })),
            ..Default::default()
        });

        let mut events = Vec::new();
        for ((id, tenant), (good, bad)) in &st.slo_events {
            let Some(slo) = st.engine.slos().get(*id) else {
                continue;
            };
            for (outcome, n) in [("good", good), ("bad", bad)] {
                self.deltas.value(
                    identity(&("slo", &*slo.name, tenant, outcome)),
                    &[*n],
                    &mut scratch,
                );
                events.push(point(
                    vec![
                        kv("slo", &slo.name),
                        kv("tenant", tenant),
                        kv("outcome", outcome),
                    ],
                    number_data_point::Value::AsInt(scratch[0] as i64),
                    start,
                ));
            }
        }
        metrics.push(sum(
            "burnwatch_slo_events",
            "Events classified by the SLO's SLI since the agent started, by outcome.",
            "{event}",
            events,
            temporality,
        ));

        let mut burn = Vec::new();
        let mut remaining = Vec::new();
        let mut firing = Vec::new();
        let mut exhaustion = Vec::new();
        let mut low_traffic = Vec::new();
        let mut status = Vec::new();
        for snap in st.engine.snapshots(st.now) {
            let base = || vec![kv("slo", snap.slo_name), kv("tenant", snap.tenant)];
            for (w, stats) in Window::ALL.iter().zip(snap.windows.iter()) {
                let mut a = base();
                a.push(kv("window", w.label()));
                burn.push(point(
                    a,
                    number_data_point::Value::AsDouble(stats.burn_rate),
                    0,
                ));
            }
            let mut a = base();
            a.push(kv("window", "period"));
            burn.push(point(
                a,
                number_data_point::Value::AsDouble(snap.period.burn_rate),
                0,
            ));
            remaining.push(point(
                base(),
                number_data_point::Value::AsDouble(snap.budget_remaining),
                0,
            ));
            if let Some(f) = &snap.firing {
                let mut a = base();
                a.push(kv("severity", f.tier.severity.as_str()));
                a.push(kv("long_window", f.tier.long.label()));
                a.push(kv("short_window", f.tier.short.label()));
                firing.push(point(a, number_data_point::Value::AsInt(1), 0));
            }
            if let Some(t) = snap.time_to_exhaustion_secs {
                exhaustion.push(point(base(), number_data_point::Value::AsDouble(t), 0));
            }
            low_traffic.push(point(
                base(),
                number_data_point::Value::AsInt(i64::from(snap.low_traffic)),
                0,
            ));
            for (s, name) in super::prometheus::STATUSES {
                let mut a = base();
                a.push(kv("status", name));
                status.push(point(
                    a,
                    number_data_point::Value::AsInt(i64::from(snap.status == s)),
                    0,
                ));
            }
        }
        metrics.push(gauge(
            "burnwatch_slo_burn_rate",
            "Error-budget burn rate over each window (1 = spending exactly the budget over the period).",
            "1",
            burn,
        ));
        metrics.push(gauge(
            "burnwatch_slo_error_budget_remaining_ratio",
            "Share of the period's error budget left (negative when overspent).",
            "1",
            remaining,
        ));
        metrics.push(gauge(
            "burnwatch_slo_alert_firing",
            "1 for the highest multiwindow burn-rate alert tier firing for the (slo, tenant).",
            "1",
            firing,
        ));
        metrics.push(gauge(
            "burnwatch_slo_time_to_exhaustion_seconds",
            "Time until the error budget is spent at the last hour's burn rate (absent when not burning).",
            "s",
            exhaustion,
        ));
        metrics.push(gauge(
            "burnwatch_slo_low_traffic",
            "1 when the whole period's error budget is less than one event at the observed rate.",
            "1",
            low_traffic,
        ));
        metrics.push(gauge(
            "burnwatch_slo_budget_status",
            "Budget policy status of the (slo, tenant): the current status is 1, the others 0.",
            "1",
            status,
        ));
        let mut tcp = Vec::new();
        let mut anomalies = Vec::new();
        for (service, kind, n) in &st.conn_events.series {
            let (name, out) = if let Some(name) = conn_event::failure_name(*kind) {
                (name, &mut tcp)
            } else if let Some(name) = conn_event::anomaly_name(*kind) {
                (name, &mut anomalies)
            } else {
                continue;
            };
            self.deltas
                .value(identity(&("conn", &**service, *kind)), &[*n], &mut scratch);
            out.push(point(
                vec![kv("service", service), kv("kind", name)],
                number_data_point::Value::AsInt(scratch[0] as i64),
                start,
            ));
        }
        metrics.push(sum(
            "burnwatch_tcp_failures",
            "TCP failures the application never reports: resets and refusals on the service's port, connections closed with requests unanswered.",
            "{event}",
            tcp,
            temporality,
        ));
        metrics.push(sum(
            "burnwatch_capture_anomalies",
            "What the capture could not see or match, per service: how complete each SLI is.",
            "{event}",
            anomalies,
            temporality,
        ));
        let mut dropped = Vec::new();
        for (i, name) in counter::NAMES.iter().enumerate() {
            let n = st.capture_counters.get(i).copied().unwrap_or(0);
            self.deltas
                .value(identity(&("dropped", *name)), &[n], &mut scratch);
            dropped.push(point(
                vec![kv("reason", name)],
                number_data_point::Value::AsInt(scratch[0] as i64),
                start,
            ));
        }
        metrics.push(sum(
            "burnwatch_dropped_events",
            "Events the capture lost before attributing them: counts may be low by this much.",
            "{event}",
            dropped,
            temporality,
        ));
        let objectives = st
            .engine
            .slos()
            .iter()
            .map(|s| {
                point(
                    vec![kv("slo", &s.name)],
                    number_data_point::Value::AsDouble(s.objective / 100.0),
                    0,
                )
            })
            .collect();
        let capabilities = st
            .capabilities
            .iter()
            .map(|(feature, up)| {
                point(
                    vec![kv("feature", feature)],
                    number_data_point::Value::AsInt(i64::from(*up)),
                    0,
                )
            })
            .collect();
        metrics.push(gauge(
            "burnwatch_capability",
            super::CAPABILITY_HELP,
            "1",
            capabilities,
        ));
        metrics.push(gauge(
            "burnwatch_slo_objective_ratio",
            "The SLO's objective as a ratio (0.999 for 99.9%).",
            "1",
            objectives,
        ));
        drop(st);
        self.deltas.end_round();

        ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(self.resource.clone()),
                scope_metrics: vec![ScopeMetrics {
                    scope: scope(),
                    metrics,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    fn logs_export(&self, events: &[AlertEvent]) -> ExportLogsServiceRequest {
        let observed = now_ns();
        let records = events
            .iter()
            .map(|e| {
                let (number, text) = match (e.kind, e.severity) {
                    (TransitionKind::Resolved, _) => (SeverityNumber::Info, "INFO"),
                    (_, "page") => (SeverityNumber::Error, "ERROR"),
                    _ => (SeverityNumber::Warn, "WARN"),
                };
                let mut attributes = vec![
                    kv("burnwatch.alert.transition", e.kind_str()),
                    kv("slo", &e.slo),
                    kv("tenant", &e.tenant),
                    kv("service", &e.service),
                    kv("severity", e.severity),
                    kv("long_window", e.long_window),
                    kv("short_window", e.short_window),
                    kv_f64("long_burn_rate", e.long_burn_rate),
                    kv_f64("short_burn_rate", e.short_burn_rate),
                    kv_f64("threshold", e.threshold),
                    kv_f64("objective", e.objective),
                ];
                if let Some(p) = e.previous_severity {
                    attributes.push(kv("previous_severity", p));
                }
                LogRecord {
                    time_unix_nano: e.at.saturating_mul(1_000_000_000),
                    observed_time_unix_nano: observed,
                    severity_number: number as i32,
                    severity_text: text.into(),
                    event_name: "burnwatch.slo.alert".into(),
                    body: Some(AnyValue {
                        value: Some(any_value::Value::StringValue(format!(
                            "SLO alert {}: slo={} tenant={} {} {}/{} burn {:.3}/{:.3} > {:.3}",
                            e.kind_str(),
                            e.slo,
                            e.tenant,
                            e.severity,
                            e.long_window,
                            e.short_window,
                            e.long_burn_rate,
                            e.short_burn_rate,
                            e.threshold
                        ))),
                    }),
                    attributes,
                    ..Default::default()
                }
            })
            .collect();
        ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: Some(self.resource.clone()),
                scope_logs: vec![ScopeLogs {
                    scope: scope(),
                    log_records: records,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }
}

/// Values of counter data points as exported: cumulative as read, or for
/// delta temporality the increase since the previous export of the same
/// point (the whole value for a new point or after a counter reset).
struct Deltas {
    temporality: Temporality,
    /// Cumulative values last exported per point identity, with the round
    /// they were last seen in (points that disappear are forgotten, so
    /// memory follows the live series).
    previous: HashMap<u64, (u64, Vec<u64>)>,
    round: u64,
}

impl Deltas {
    fn new(temporality: Temporality) -> Self {
        Deltas {
            temporality,
            previous: HashMap::new(),
            round: 0,
        }
    }

    fn begin_round(&mut self) {
        self.round += 1;
    }

    fn end_round(&mut self) {
        let round = self.round;
        self.previous.retain(|_, (r, _)| *r == round);
    }

    /// Writes the exported values of the point `identity` into `out`.
    fn value(&mut self, identity: u64, current: &[u64], out: &mut Vec<u64>) {
        out.clear();
        if self.temporality == Temporality::Cumulative {
            out.extend_from_slice(current);
            return;
        }
        let entry = self
            .previous
            .entry(identity)
            .or_insert_with(|| (0, vec![0; current.len()]));
        entry.0 = self.round;
        let reset =
            entry.1.len() != current.len() || current.iter().zip(&entry.1).any(|(c, p)| c < p);
        for (i, c) in current.iter().enumerate() {
            out.push(if reset { *c } else { c - entry.1[i] });
        }
        entry.1.clear();
        entry.1.extend_from_slice(current);
    }
}

fn identity(key: &impl Hash) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    h.finish()
}

fn sum(
    name: &str,
    description: &str,
    unit: &str,
    points: Vec<NumberDataPoint>,
    temporality: i32,
) -> Metric {
    Metric {
        name: name.into(),
        description: description.into(),
        unit: unit.into(),
        data: Some(metric::Data::Sum(Sum {
            data_points: points,
            aggregation_temporality: temporality,
            is_monotonic: true,
        })),
        ..Default::default()
    }
}

fn gauge(name: &str, description: &str, unit: &str, points: Vec<NumberDataPoint>) -> Metric {
    Metric {
        name: name.into(),
        description: description.into(),
        unit: unit.into(),
        data: Some(metric::Data::Gauge(Gauge {
            data_points: points,
        })),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(d: &mut Deltas, points: &[(u64, &[u64])]) -> Vec<Vec<u64>> {
        d.begin_round();
        let mut out = Vec::new();
        let got = points
            .iter()
            .map(|(id, v)| {
                d.value(*id, v, &mut out);
                out.clone()
            })
            .collect();
        d.end_round();
        got
    }

    #[test]
    fn delta_is_the_increase_since_the_last_export() {
        let mut d = Deltas::new(Temporality::Delta);
        assert_eq!(round(&mut d, &[(1, &[10, 2])]), [vec![10, 2]]);
        assert_eq!(round(&mut d, &[(1, &[15, 2])]), [vec![5, 0]]);
        // A counter that went down was reset: its whole value is new.
        assert_eq!(round(&mut d, &[(1, &[3, 2])]), [vec![3, 2]]);
        // A point missing from a round is forgotten; back, it starts over.
        assert_eq!(round(&mut d, &[(2, &[7])]), [vec![7]]);
        assert_eq!(d.previous.len(), 1);
        assert_eq!(
            round(&mut d, &[(1, &[4, 2]), (2, &[9])]),
            [vec![4, 2], vec![2]]
        );
    }

    #[test]
    fn cumulative_passes_values_through() {
        let mut d = Deltas::new(Temporality::Cumulative);
        assert_eq!(round(&mut d, &[(1, &[10])]), [vec![10]]);
        assert_eq!(round(&mut d, &[(1, &[15])]), [vec![15]]);
        assert!(d.previous.is_empty());
    }

    #[test]
    fn resource_names_the_node() {
        let r = resource(&[("environment", "prod".into()), ("node", "n1".into())]);
        let get = |k: &str| {
            r.attributes
                .iter()
                .find(|a| a.key == k)
                .and_then(|a| a.value.clone())
                .and_then(|v| v.value)
        };
        assert_eq!(
            get("service.name"),
            Some(any_value::Value::StringValue("burnwatch".into()))
        );
        assert_eq!(
            get("deployment.environment.name"),
            Some(any_value::Value::StringValue("prod".into()))
        );
        if std::env::var_os("K8S_NODE_NAME").is_none() && std::env::var_os("NODE_NAME").is_none() {
            assert_eq!(
                get("k8s.node.name"),
                Some(any_value::Value::StringValue("n1".into()))
            );
        }
    }
}

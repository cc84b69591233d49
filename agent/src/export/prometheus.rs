//! The Prometheus exposition, encoded straight from the agent's state at
//! scrape time (a `prometheus-client` custom collector): the kernel's
//! counters are already cumulative, so there is nothing to increment and no
//! per-request work in userspace.

use std::borrow::Cow;
use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};

use burnwatch_common::maps::{conn_event, counter};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeCounterValue, EncodeExemplarValue, EncodeGaugeValue, EncodeLabel,
    EncodeLabelSet, EncodeLabelValue, LabelSetEncoder, LabelValueEncoder, MetricEncoder,
    NoLabelSet,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::exemplar::Exemplar;
use prometheus_client::registry::{Registry, Unit};

use super::CAPABILITY_HELP;
use crate::attribution::pods::PodLabels;
use crate::engine::budget::BudgetStatus;
use crate::engine::state::AgentState;
use crate::engine::window::Window;
use crate::export::SelfStats;

pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The classic Prometheus text format, for scrapers that do not ask for
/// OpenMetrics (older Prometheus, many agents, curl).
pub const CONTENT_TYPE_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

struct StateCollector {
    state: Arc<RwLock<AgentState>>,
    stats: Arc<SelfStats>,
}

impl fmt::Debug for StateCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StateCollector")
    }
}

/// A registry with every burnwatch metric family; `labels` (the config's
/// `environment`, `cluster`, `node`) are added to every series. The
/// registry writes them as given, so their values are escaped here, once
/// (with [`write_label_value`], like every other label value).
pub fn registry(
    state: Arc<RwLock<AgentState>>,
    stats: Arc<SelfStats>,
    labels: Vec<(&'static str, String)>,
) -> Registry {
    let mut r = registry_with_labels(labels);
    r.register_collector(Box::new(StateCollector { state, stats }));
    r
}

fn registry_with_labels(labels: Vec<(&'static str, String)>) -> Registry {
    Registry::with_labels(
        labels
            .into_iter()
            .map(|(k, v)| (Cow::Borrowed(k), Cow::Owned(escape_label_value(&v)))),
    )
}

// Label values.
//
// `prometheus-client` 0.24 writes label values as given: a tenant id with a
// `"` or a trailing `\` made the whole exposition unparseable, and one with
// `",x="y` added labels. Both text formats escape label values alike
// (`\` as `\\`, `"` as `\"`, newline as `\n`; everything else is UTF-8 as
// is), so the escaping is the same for both and done here, once: the
// collector never touches `prometheus-client`'s encoders, only [`Encoder`],
// [`Metric`] and [`Series`], which take label sets only as
// [`LabelPairs`] (static names, string values) and escape every value as
// it is written. A label added anywhere in the collector is escaped; there
// is no way to write a raw one. Control characters and invalid UTF-8 are
// replaced upstream, where the bytes become strings
// (`attribution::tenant_label`).

/// Writes `value` as a label value's text between its quotes: escaped in
/// pieces straight into `w`, no allocation; one scan and one write when
/// nothing needs escaping (nearly always).
pub fn write_label_value<W: fmt::Write + ?Sized>(w: &mut W, value: &str) -> fmt::Result {
    if !needs_escape(value.as_bytes()) {
        return w.write_str(value);
    }
    let mut rest = value;
    while let Some(i) = rest.bytes().position(|b| matches!(b, b'\\' | b'"' | b'\n')) {
        if i > 0 {
            w.write_str(&rest[..i])?;
        }
        w.write_str(match rest.as_bytes()[i] {
            b'\\' => "\\\\",
            b'"' => "\\\"",
            _ => "\\n",
        })?;
        // The byte at `i` is ASCII: `i + 1` is a character boundary.
        rest = &rest[i + 1..];
    }
    w.write_str(rest)
}

/// Whether `bytes` hold a `\`, `"` or newline: eight bytes at a time
/// (this runs for every label of every series of a scrape).
fn needs_escape(bytes: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    // A high bit set in each byte of `x` equal to `b` (and maybe in
    // bytes above one that is: enough to tell whether any is).
    let has = |x: u64, b: u8| {
        let y = x ^ (ONES * u64::from(b));
        y.wrapping_sub(ONES) & !y & HIGHS
    };
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let x = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        if has(x, b'\\') | has(x, b'"') | has(x, b'\n') != 0 {
            return true;
        }
    }
    chunks
        .remainder()
        .iter()
        .any(|b| matches!(b, b'\\' | b'"' | b'\n'))
}

/// [`write_label_value`] into a new string (for values escaped once, such
/// as the registry's constant labels).
pub fn escape_label_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    // Writing into a String cannot fail.
    let _ = write_label_value(&mut out, value);
    out
}

/// A label value that is escaped as it is encoded.
#[derive(Clone, Copy, Debug)]
pub struct Escaped<'a>(pub &'a str);

impl EncodeLabelValue for Escaped<'_> {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), fmt::Error> {
        write_label_value(encoder, self.0)
    }
}

/// The label sets the collector writes: `[("service", name), ...]` (names
/// are static: only values come from outside), a slice of such pairs, or
/// two sets one after the other (a series' own labels, then its pod's).
pub trait LabelPairs {
    fn encode_escaped(&self, encoder: &mut LabelSetEncoder) -> Result<(), fmt::Error>;
}

fn encode_pairs(
    pairs: &[(&'static str, &str)],
    encoder: &mut LabelSetEncoder,
) -> Result<(), fmt::Error> {
    for (name, value) in pairs {
        debug_assert!(
            name.bytes().enumerate().all(|(i, b)| b == b'_'
                || b.is_ascii_alphabetic()
                || (i > 0 && b.is_ascii_digit())),
            "label name {name:?}"
        );
        (*name, Escaped(value)).encode(encoder.encode_label())?;
    }
    Ok(())
}

impl<const N: usize> LabelPairs for [(&'static str, &str); N] {
    fn encode_escaped(&self, encoder: &mut LabelSetEncoder) -> Result<(), fmt::Error> {
        encode_pairs(self, encoder)
    }
}

impl LabelPairs for [(&'static str, &str)] {
    fn encode_escaped(&self, encoder: &mut LabelSetEncoder) -> Result<(), fmt::Error> {
        encode_pairs(self, encoder)
    }
}

impl<T: LabelPairs + ?Sized> LabelPairs for &T {
    fn encode_escaped(&self, encoder: &mut LabelSetEncoder) -> Result<(), fmt::Error> {
        (**self).encode_escaped(encoder)
    }
}

impl<A: LabelPairs, B: LabelPairs> LabelPairs for (A, B) {
    fn encode_escaped(&self, encoder: &mut LabelSetEncoder) -> Result<(), fmt::Error> {
        self.0.encode_escaped(encoder)?;
        self.1.encode_escaped(encoder)
    }
}

/// [`LabelPairs`] as `prometheus-client` takes label sets.
struct Escaping<'a, S: ?Sized>(&'a S);

impl<S: LabelPairs + ?Sized> EncodeLabelSet for Escaping<'_, S> {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), fmt::Error> {
        self.0.encode_escaped(encoder)
    }
}

/// Label sets of exemplars: none (the agent writes no exemplars; an
/// exemplar's labels would bypass the escaping).
pub trait NoExemplar: EncodeLabelSet {}
impl NoExemplar for NoLabelSet {}

/// The collector's descriptor encoder: `prometheus-client`'s, with every
/// label value escaped. Same method names and arguments, so the collector
/// reads as plain `prometheus-client` code.
pub struct Encoder<'a>(DescriptorEncoder<'a>);

impl Encoder<'_> {
    pub fn encode_descriptor<'s>(
        &'s mut self,
        name: &'s str,
        help: &str,
        unit: Option<&'s Unit>,
        metric_type: MetricType,
    ) -> Result<Metric<'s>, fmt::Error> {
        Ok(Metric(self.0.encode_descriptor(
            name,
            help,
            unit,
            metric_type,
        )?))
    }
}

/// One metric family being encoded (see [`Encoder`]).
pub struct Metric<'a>(MetricEncoder<'a>);

impl<'a> Metric<'a> {
    /// The series of this family with `labels`.
    pub fn encode_family<'s, S: LabelPairs + ?Sized>(
        &'s mut self,
        labels: &'s S,
    ) -> Result<Series<'s, 'a, S>, fmt::Error> {
        Ok(Series {
            metric: &mut self.0,
            labels,
        })
    }

    /// A gauge without labels of its own (label-less counters and
    /// histograms are not needed yet).
    pub fn encode_gauge<V: EncodeGaugeValue>(&mut self, v: &V) -> Result<(), fmt::Error> {
        self.0.encode_gauge(v)
    }

    pub fn encode_info<S: LabelPairs + ?Sized>(&mut self, labels: &S) -> Result<(), fmt::Error> {
        self.0.encode_info(&Escaping(labels))
    }
}

/// One labelled series of a family: its value methods encode the labels,
/// escaped, then the value (nothing allocated).
pub struct Series<'s, 'a, S: ?Sized> {
    metric: &'s mut MetricEncoder<'a>,
    labels: &'s S,
}

impl<S: LabelPairs + ?Sized> Series<'_, '_, S> {
    pub fn encode_counter<X: NoExemplar, V: EncodeCounterValue, E: EncodeExemplarValue>(
        &mut self,
        v: &V,
        _exemplar: Option<&Exemplar<X, E>>,
    ) -> Result<(), fmt::Error> {
        self.metric
            .encode_family(&Escaping(self.labels))?
            .encode_counter::<NoLabelSet, V, E>(v, None)
    }

    pub fn encode_gauge<V: EncodeGaugeValue>(&mut self, v: &V) -> Result<(), fmt::Error> {
        self.metric
            .encode_family(&Escaping(self.labels))?
            .encode_gauge(v)
    }

    pub fn encode_histogram<X: NoExemplar>(
        &mut self,
        sum: f64,
        count: u64,
        buckets: &[(f64, u64)],
        _exemplars: Option<&std::collections::HashMap<usize, Exemplar<X, f64>>>,
    ) -> Result<(), fmt::Error> {
        self.metric
            .encode_family(&Escaping(self.labels))?
            .encode_histogram::<NoLabelSet>(sum, count, buckets, None)
    }
}

/// Encodes the registry in the OpenMetrics text format.
#[cfg(test)] // tests read the exposition whole
pub fn encode(registry: &Registry) -> Result<String, fmt::Error> {
    let mut out = String::with_capacity(64 * 1024);
    prometheus_client::encoding::text::encode(&mut out, registry)?;
    Ok(out)
}

/// Encodes the registry into `w` (OpenMetrics, or the text format, as `w`
/// converts).
pub fn encode_into<W: std::io::Write>(
    registry: &Registry,
    w: &mut ScrapeWriter<W>,
) -> std::io::Result<()> {
    match prometheus_client::encoding::text::encode(w, registry) {
        Ok(()) => Ok(()),
        // A write error is kept by the writer and returned by `finish`.
        Err(fmt::Error) if w.error.is_some() => Ok(()),
        Err(e) => Err(std::io::Error::other(e)),
    }
}

/// True when an `Accept` header asks for OpenMetrics (Prometheus does by
/// default); anything else gets the classic text format.
pub fn wants_openmetrics(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| a.contains("application/openmetrics-text"))
}

/// Rewrites OpenMetrics text (as `prometheus-client` writes it) into the
/// classic Prometheus text format 0.0.4 (see [`ScrapeWriter`]).
#[cfg(test)]
pub fn to_text_format(openmetrics: &str) -> String {
    let mut w = ScrapeWriter::new(Vec::new(), true);
    // Writing into a Vec cannot fail.
    let _ = fmt::Write::write_str(&mut w, openmetrics);
    let (out, _) = w.finish().unwrap_or_default();
    String::from_utf8(out).unwrap_or_default()
}

/// Where a scrape's text goes, as `prometheus-client` encodes it: straight
/// to `out` (a buffer, or a gzip stream), converted on the fly, line by
/// line, to the classic text format when the scraper did not ask for
/// OpenMetrics. At 10,000 tenants the exposition is ~40 MiB: holding it
/// whole, then a converted copy, then compressing it (with the doubling
/// growth of the first buffer) was most of the agent's memory peak while
/// scraping; this way a gzip scrape holds only the compressed bytes.
///
/// The conversion is by hand because `prometheus-client` only encodes
/// OpenMetrics, and a second encoder of every family (or a second metrics
/// crate) would double the exposition code. For the metric types burnwatch
/// uses (counter, gauge, histogram, info; no exemplars, no created
/// timestamps) the formats differ only in framing lines: OpenMetrics names
/// a counter family without `_total` and an info family without `_info` in
/// `# HELP`/`# TYPE` (0.0.4 names them like their samples; info becomes a
/// gauge), has `# UNIT` lines and ends with `# EOF`. Sample lines are
/// identical and copied through.
pub struct ScrapeWriter<W: std::io::Write> {
    out: W,
    text_format: bool,
    /// The line being assembled (text format only; the encoder writes a
    /// line in many small pieces).
    line: String,
    /// A `# HELP` line's rest, held until the `# TYPE` line that says how
    /// to rename it.
    help: Option<String>,
    /// Bytes written to `out` (before compression).
    bytes: u64,
    error: Option<std::io::Error>,
}

impl<W: std::io::Write> ScrapeWriter<W> {
    pub fn new(out: W, text_format: bool) -> Self {
        ScrapeWriter {
            out,
            text_format,
            line: String::with_capacity(256),
            help: None,
            bytes: 0,
            error: None,
        }
    }

    /// The sink and the bytes written to it; the first write error, if any.
    pub fn finish(mut self) -> std::io::Result<(W, u64)> {
        if !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            self.text_line(&line);
        }
        match self.error {
            Some(e) => Err(e),
            None => Ok((self.out, self.bytes)),
        }
    }

    fn emit(&mut self, parts: &[&str]) {
        if self.error.is_some() {
            return;
        }
        for p in parts {
            if let Err(e) = self.out.write_all(p.as_bytes()) {
                self.error = Some(e);
                return;
            }
            self.bytes += p.len() as u64;
        }
    }

    /// One complete OpenMetrics line (without its newline), in text format.
    fn text_line(&mut self, line: &str) {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            self.help = Some(rest.to_string());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.rsplit_once(' ').unwrap_or((rest, "untyped"));
            let (suffix, kind) = match kind {
                "counter" => ("_total", "counter"),
                "info" => ("_info", "gauge"),
                "stateset" | "gaugehistogram" | "unknown" => ("", "untyped"),
                other => ("", other),
            };
            if let Some(h) = self.help.take() {
                let text = h.strip_prefix(name).unwrap_or(&h);
                self.emit(&["# HELP ", name, suffix, text, "\n"]);
            }
            self.emit(&["# TYPE ", name, suffix, " ", kind, "\n"]);
        } else if line.starts_with("# UNIT ") || line == "# EOF" {
        } else {
            if let Some(h) = self.help.take() {
                self.emit(&["# HELP ", &h, "\n"]);
            }
            self.emit(&[line, "\n"]);
        }
    }
}

impl<W: std::io::Write> fmt::Write for ScrapeWriter<W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if !self.text_format {
            self.emit(&[s]);
        } else {
            let mut rest = s;
            while let Some((head, tail)) = rest.split_once('\n') {
                if self.line.is_empty() {
                    self.text_line(head);
                } else {
                    self.line.push_str(head);
                    let line = std::mem::take(&mut self.line);
                    self.text_line(&line);
                    // Keep the buffer's capacity for the next line.
                    self.line = line;
                    self.line.clear();
                }
                rest = tail;
            }
            self.line.push_str(rest);
        }
        if self.error.is_some() {
            Err(fmt::Error)
        } else {
            Ok(())
        }
    }
}

impl Collector for StateCollector {
    fn encode(&self, enc: DescriptorEncoder) -> Result<(), fmt::Error> {
        // From here on only the escaping wrapper is in reach.
        let mut enc = Encoder(enc);
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());

        let mut m = enc.encode_descriptor(
            "burnwatch_build",
            "Build information about the running agent.",
            None,
            MetricType::Info,
        )?;
        m.encode_info(&[("version", env!("CARGO_PKG_VERSION"))])?;

        let mut m = enc.encode_descriptor(
            "burnwatch_http_requests",
            "HTTP requests seen by the kernel, by service, tenant, method and status code (000: no response).",
            None,
            MetricType::Counter,
        )?;
        let mut status = String::with_capacity(3);
        for s in &state.requests.series {
            status.clear();
            use std::fmt::Write;
            write!(status, "{:03}", s.labels.status)?;
            let labels = [
                ("service", &*s.labels.service),
                ("tenant", &*s.labels.tenant),
                ("method", s.labels.method),
                ("status_code", status.as_str()),
            ];
            let (pod, n) = PodLabels::pairs_of(s.labels.pod.as_deref());
            m.encode_family(&(labels, &pod[..n]))?
                .encode_counter::<NoLabelSet, _, u64>(&s.stats.count, None)?;
        }

        let mut m = enc.encode_descriptor(
            "burnwatch_http_client_requests",
            "HTTP requests watched clients made, by client, upstream (ip:port), tenant, method and status code (000: no response).",
            None,
            MetricType::Counter,
        )?;
        for (l, n) in &state.clients.series {
            status.clear();
            use std::fmt::Write;
            write!(status, "{:03}", l.status)?;
            let labels = [
                ("service", &*l.service),
                ("upstream", &*l.upstream),
                ("tenant", &*l.tenant),
                ("method", l.method),
                ("status_code", status.as_str()),
            ];
            let (pod, np) = PodLabels::pairs_of(l.pod.as_deref());
            m.encode_family(&(labels, &pod[..np]))?
                .encode_counter::<NoLabelSet, _, u64>(n, None)?;
        }

        let mut m = enc.encode_descriptor(
            "burnwatch_http_request_duration_seconds",
            "Time from the first byte of a request read to the first byte of its response written.",
            None,
            MetricType::Histogram,
        )?;
        let bounds = &state.latency_bounds_s;
        let mut buckets: Vec<(f64, u64)> = Vec::with_capacity(bounds.len() + 1);
        for l in &state.requests.latency {
            buckets.clear();
            for (i, n) in l.buckets.iter().enumerate() {
                let bound = bounds.get(i).copied().unwrap_or(f64::MAX);
                buckets.push((bound, *n));
            }
            let labels = [("service", &*l.service), ("tenant", &*l.tenant)];
            let (pod, n) = PodLabels::pairs_of(l.pod.as_deref());
            m.encode_family(&(labels, &pod[..n]))?
                .encode_histogram::<NoLabelSet>(l.sum_ns as f64 / 1e9, l.count, &buckets, None)?;
        }

        let mut m = enc.encode_descriptor(
            "burnwatch_dropped_events",
            "Events the capture lost before attributing them (a full kernel map, an unreadable buffer): counts may be low by this much.",
            None,
            MetricType::Counter,
        )?;
        for (i, name) in counter::NAMES.iter().enumerate() {
            m.encode_family(&[("reason", *name)])?
                .encode_counter::<NoLabelSet, _, u64>(&state.capture_counters[i], None)?;
        }

        let mut m = enc.encode_descriptor(
            "burnwatch_capture_anomalies",
            "What the capture could not see or match, per service: how complete each SLI is.",
            None,
            MetricType::Counter,
        )?;
        for (service, kind, n) in &state.conn_events.series {
            if let Some(name) = conn_event::anomaly_name(*kind) {
                m.encode_family(&[("service", &**service), ("kind", name)])?
                    .encode_counter::<NoLabelSet, _, u64>(n, None)?;
            }
        }

        let mut m = enc.encode_descriptor(
            "burnwatch_tcp_failures",
            "TCP failures the application never reports: resets and refusals on the service's port, connections closed with requests unanswered.",
            None,
            MetricType::Counter,
        )?;
        for (service, kind, n) in &state.conn_events.series {
            if let Some(name) = conn_event::failure_name(*kind) {
                m.encode_family(&[("service", &**service), ("kind", name)])?
                    .encode_counter::<NoLabelSet, _, u64>(n, None)?;
            }
        }

        let mut m = enc.encode_descriptor(
            "burnwatch_tenant_overflow",
            "Distinct tenants counted under tenant=\"__overflow__\" because the service reached tenant.max_per_service.",
            None,
            MetricType::Counter,
        )?;
        for (service, n) in state.requests.tenant_overflow() {
            m.encode_family(&[("service", &**service)])?
                .encode_counter::<NoLabelSet, _, u64>(&(n as u64), None)?;
        }

        encode_slos(&state, &mut enc)?;

        let mut m = enc.encode_descriptor(
            "burnwatch_bpf_program_runs",
            "Runs of each eBPF program (counted while kernel.bpf_stats_enabled=1).",
            None,
            MetricType::Counter,
        )?;
        for p in &state.bpf_stats {
            m.encode_family(&[("program", p.name)])?
                .encode_counter::<NoLabelSet, _, u64>(&p.runs, None)?;
        }
        let mut m = enc.encode_descriptor(
            "burnwatch_bpf_program_run_seconds",
            "Time spent in each eBPF program (counted while kernel.bpf_stats_enabled=1).",
            None,
            MetricType::Counter,
        )?;
        for p in &state.bpf_stats {
            m.encode_family(&[("program", p.name)])?
                .encode_counter::<NoLabelSet, _, f64>(&(p.run_ns as f64 / 1e9), None)?;
        }
        let mut m = enc.encode_descriptor(
            "burnwatch_bpf_program_recursion_misses",
            "Runs of each eBPF program the kernel skipped because a BPF program was already \
             running on that CPU (an interrupt during a syscall program): events the capture \
             may have missed.",
            None,
            MetricType::Counter,
        )?;
        for p in &state.bpf_stats {
            m.encode_family(&[("program", p.name)])?
                .encode_counter::<NoLabelSet, _, u64>(&p.recursion_misses, None)?;
        }

        let mut m = enc.encode_descriptor(
            "burnwatch_probes_attached",
            "eBPF programs attached on this node.",
            None,
            MetricType::Gauge,
        )?;
        m.encode_gauge(&(state.probes.len() as i64))?;
        let mut m = enc.encode_descriptor(
            "burnwatch_capability",
            CAPABILITY_HELP,
            None,
            MetricType::Gauge,
        )?;
        for (feature, up) in &state.capabilities {
            m.encode_family(&[("feature", *feature)])?
                .encode_gauge(&i64::from(*up))?;
        }
        drop(state);
        encode_self_stats(&self.stats, &mut enc)
    }
}

/// The agent's own costs and the push exporters' health.
fn encode_self_stats(s: &SelfStats, enc: &mut Encoder) -> Result<(), fmt::Error> {
    let secs = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed) as f64 / 1e9;
    for (name, help, value) in [
        (
            "burnwatch_scrape_duration_seconds",
            "Time the previous /metrics answer took to encode.",
            secs(&s.scrape_ns),
        ),
        (
            "burnwatch_scrape_size_bytes",
            "Size of the previous /metrics answer.",
            s.scrape_bytes.load(Ordering::Relaxed) as f64,
        ),
        (
            "burnwatch_poll_duration_seconds",
            "Time of the last read of the kernel maps into series, SLO evaluation included.",
            secs(&s.poll_ns),
        ),
        (
            "burnwatch_evaluation_duration_seconds",
            "Time of the last SLO evaluation (classification, windows, alert state machines).",
            secs(&s.evaluation_ns),
        ),
    ] {
        enc.encode_descriptor(name, help, None, MetricType::Gauge)?
            .encode_gauge(&value)?;
    }
    let mut m = enc.encode_descriptor(
        "burnwatch_map_entries",
        "Entries in each kernel map at the last read; new series are lost when a map is full.",
        None,
        MetricType::Gauge,
    )?;
    m.encode_family(&[("map", "COUNTS")])?
        .encode_gauge(&(s.counts_entries.load(Ordering::Relaxed) as i64))?;
    m.encode_family(&[("map", "CONN_EVENTS")])?
        .encode_gauge(&(s.conn_events_entries.load(Ordering::Relaxed) as i64))?;
    let mut m = enc.encode_descriptor(
        "burnwatch_map_capacity",
        "Maximum entries of each kernel map.",
        None,
        MetricType::Gauge,
    )?;
    m.encode_family(&[("map", "COUNTS")])?
        .encode_gauge(&i64::from(burnwatch_common::maps::COUNTS_MAX))?;
    m.encode_family(&[("map", "CONN_EVENTS")])?
        .encode_gauge(&i64::from(burnwatch_common::maps::CONN_EVENTS_MAX))?;

    let mut m = enc.encode_descriptor(
        "burnwatch_api_rejected",
        "API requests and connections the agent turned away: scrapes over the in-flight cap \
(answered 503), connections that sent no request head in time, sat idle, or stopped reading, \
idle connections closed to make room for new ones (idle_evicted), connections refused with \
every slot busy (connection_limit), requests without the API token (unauthorized), failed TLS \
handshakes (tls_handshake).",
        None,
        MetricType::Counter,
    )?;
    for (reason, c) in [
        ("scrapes_in_flight", &s.api.scrapes_refused),
        ("timeout", &s.api.timed_out),
        ("idle_evicted", &s.api.evicted),
        ("connection_limit", &s.api.refused),
        ("unauthorized", &s.api.unauthorized),
        ("tls_handshake", &s.api.tls_failed),
    ] {
        m.encode_family(&[("reason", reason)])?
            .encode_counter::<NoLabelSet, _, u64>(&c.load(Ordering::Relaxed), None)?;
    }

    enc.encode_descriptor(
        "burnwatch_api_connections",
        "Connections open to the agent's HTTP port.",
        None,
        MetricType::Gauge,
    )?
    .encode_gauge(&(s.api.connections.load(Ordering::Relaxed) as i64))?;

    let sinks = [
        ("otlp", "metrics", &s.otlp_metrics),
        ("otlp", "logs", &s.otlp_logs),
        ("alertmanager", "alerts", &s.alertmanager),
    ];
    for (name, help, pick) in [
        (
            "burnwatch_export_requests",
            "Export requests the peer accepted, per push exporter and signal.",
            0,
        ),
        (
            "burnwatch_export_failures",
            "Export attempts that failed (each retry counts).",
            1,
        ),
        (
            "burnwatch_export_dropped",
            "Items a push exporter gave up on: queue full while the peer was down or slow, or retries exhausted.",
            2,
        ),
    ] {
        let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
        for (exporter, signal, c) in sinks {
            let v = [&c.sent, &c.failed, &c.dropped][pick].load(Ordering::Relaxed);
            m.encode_family(&[("exporter", exporter), ("signal", signal)])?
                .encode_counter::<NoLabelSet, _, u64>(&v, None)?;
        }
    }
    Ok(())
}

pub(crate) const STATUSES: [(BudgetStatus, &str); 5] = [
    (BudgetStatus::Healthy, "healthy"),
    (BudgetStatus::Attention, "attention"),
    (BudgetStatus::Warning, "warning"),
    (BudgetStatus::Critical, "critical"),
    (BudgetStatus::Exhausted, "exhausted"),
];

/// The SLO families, from the engine's snapshots at the last evaluation.
fn encode_slos(state: &AgentState, enc: &mut Encoder) -> Result<(), fmt::Error> {
    let now = state.now;
    let engine = &state.engine;

    let mut m = enc.encode_descriptor(
        "burnwatch_slo_series",
        "Active (slo, tenant) series in the SLO engine.",
        None,
        MetricType::Gauge,
    )?;
    m.encode_gauge(&(engine.series_count() as i64))?;
    let mut m = enc.encode_descriptor(
        "burnwatch_slo_engine_memory_bytes",
        "Approximate memory held by the SLO engine's windows.",
        None,
        MetricType::Gauge,
    )?;
    m.encode_gauge(&(engine.approx_memory_bytes() as i64))?;

    let mut m = enc.encode_descriptor(
        "burnwatch_slo_objective_ratio",
        "The SLO's objective as a ratio (0.999 for 99.9%).",
        None,
        MetricType::Gauge,
    )?;
    for slo in engine.slos().iter() {
        m.encode_family(&[("slo", &*slo.name)])?
            .encode_gauge(&(slo.objective / 100.0))?;
    }

    let mut m = enc.encode_descriptor(
        "burnwatch_slo_events",
        "Events classified by the SLO's SLI since the agent started, by outcome.",
        None,
        MetricType::Counter,
    )?;
    for ((id, tenant), (good, bad)) in &state.slo_events {
        let Some(slo) = engine.slos().get(*id) else {
            continue;
        };
        for (outcome, n) in [("good", good), ("bad", bad)] {
            m.encode_family(&[
                ("slo", &*slo.name),
                ("tenant", &**tenant),
                ("outcome", outcome),
            ])?
            .encode_counter::<NoLabelSet, _, u64>(n, None)?;
        }
    }

    let mut m = enc.encode_descriptor(
        "burnwatch_slo_burn_rate",
        "Error-budget burn rate over each window (1 = spending exactly the budget over the period).",
        None,
        MetricType::Gauge,
    )?;
    for snap in engine.snapshots(now) {
        for (w, stats) in Window::ALL.iter().zip(snap.windows.iter()) {
            m.encode_family(&[
                ("slo", snap.slo_name),
                ("tenant", snap.tenant),
                ("window", w.label()),
            ])?
            .encode_gauge(&stats.burn_rate)?;
        }
        m.encode_family(&[
            ("slo", snap.slo_name),
            ("tenant", snap.tenant),
            ("window", "period"),
        ])?
        .encode_gauge(&snap.period.burn_rate)?;
    }

    let mut m = enc.encode_descriptor(
        "burnwatch_slo_error_budget_remaining_ratio",
        "Share of the period's error budget left (negative when overspent).",
        None,
        MetricType::Gauge,
    )?;
    for snap in engine.snapshots(now) {
        m.encode_family(&[("slo", snap.slo_name), ("tenant", snap.tenant)])?
            .encode_gauge(&snap.budget_remaining)?;
    }

    let mut m = enc.encode_descriptor(
        "burnwatch_slo_time_to_exhaustion_seconds",
        "Time until the error budget is spent at the last hour's burn rate (absent when not burning).",
        None,
        MetricType::Gauge,
    )?;
    for snap in engine.snapshots(now) {
        if let Some(t) = snap.time_to_exhaustion_secs {
            m.encode_family(&[("slo", snap.slo_name), ("tenant", snap.tenant)])?
                .encode_gauge(&t)?;
        }
    }

    let mut m = enc.encode_descriptor(
        "burnwatch_slo_alert_firing",
        "1 for the highest multiwindow burn-rate alert tier firing for the (slo, tenant).",
        None,
        MetricType::Gauge,
    )?;
    for snap in engine.snapshots(now) {
        if let Some(f) = &snap.firing {
            m.encode_family(&[
                ("slo", snap.slo_name),
                ("tenant", snap.tenant),
                ("severity", f.tier.severity.as_str()),
                ("long_window", f.tier.long.label()),
                ("short_window", f.tier.short.label()),
            ])?
            .encode_gauge(&1i64)?;
        }
    }

    let mut m = enc.encode_descriptor(
        "burnwatch_slo_low_traffic",
        "1 when the whole period's error budget is less than one event at the observed rate: one failure spends it all, alerts are unreliable.",
        None,
        MetricType::Gauge,
    )?;
    for snap in engine.snapshots(now) {
        m.encode_family(&[("slo", snap.slo_name), ("tenant", snap.tenant)])?
            .encode_gauge(&i64::from(snap.low_traffic))?;
    }

    let mut m = enc.encode_descriptor(
        "burnwatch_slo_budget_status",
        "Budget policy status of the (slo, tenant), as a state set: the current status is 1, the others 0.",
        None,
        MetricType::Gauge,
    )?;
    for snap in engine.snapshots(now) {
        for (status, name) in STATUSES {
            m.encode_family(&[
                ("slo", snap.slo_name),
                ("tenant", snap.tenant),
                ("status", name),
            ])?
            .encode_gauge(&i64::from(snap.status == status))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_format_renames_counter_and_info_families() {
        let om = "# HELP a_requests Requests.\n# TYPE a_requests counter\na_requests_total{x=\"1\"} 3\n\
# HELP a_build Build.\n# TYPE a_build info\na_build_info{version=\"1\"} 1\n\
# HELP a_g G.\n# TYPE a_g gauge\n# UNIT a_g seconds\na_g 1.5\n# EOF\n";
        assert_eq!(
            to_text_format(om),
            "# HELP a_requests_total Requests.\n# TYPE a_requests_total counter\na_requests_total{x=\"1\"} 3\n\
# HELP a_build_info Build.\n# TYPE a_build_info gauge\na_build_info{version=\"1\"} 1\n\
# HELP a_g G.\n# TYPE a_g gauge\na_g 1.5\n"
        );
    }

    /// The encoder writes lines in small pieces: any split gives the same
    /// text format as the whole, and OpenMetrics passes through unchanged.
    #[test]
    fn scrape_writer_converts_lines_written_in_pieces() {
        use std::fmt::Write as _;
        let om = "# HELP a_requests Requests.\n# TYPE a_requests counter\na_requests_total{x=\"1\"} 3\n\
# HELP a_g G.\n# TYPE a_g gauge\n# UNIT a_g seconds\na_g 1.5\n# EOF\n";
        let whole = to_text_format(om);
        for piece in 1..om.len() {
            for text_format in [true, false] {
                let mut w = ScrapeWriter::new(Vec::new(), text_format);
                let mut rest = om;
                while !rest.is_empty() {
                    let mut cut = piece.min(rest.len());
                    while !rest.is_char_boundary(cut) {
                        cut += 1;
                    }
                    w.write_str(&rest[..cut]).unwrap();
                    rest = &rest[cut..];
                }
                let (out, n) = w.finish().unwrap();
                assert_eq!(n as usize, out.len());
                let want = if text_format { whole.as_str() } else { om };
                assert_eq!(String::from_utf8(out).unwrap(), want, "pieces of {piece}");
            }
        }
    }

    #[test]
    fn accept_header_negotiation() {
        assert!(wants_openmetrics(Some(
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
        )));
        assert!(!wants_openmetrics(Some("text/plain")));
        assert!(!wants_openmetrics(None));
    }

    #[test]
    fn config_labels_are_on_every_series() {
        let state = Arc::new(RwLock::new(AgentState::new(
            10,
            vec!["p".into()],
            vec![0.1],
            crate::engine::SloConfig::default().validate().unwrap(),
        )));
        let r = registry(
            state,
            Arc::default(),
            vec![("cluster", "eu-1".into()), ("node", "n1".into())],
        );
        let text = encode(&r).unwrap();
        let samples: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert!(samples.len() > 10, "{text}");
        for l in samples {
            assert!(
                l.contains("cluster=\"eu-1\"") && l.contains("node=\"n1\""),
                "{l}"
            );
        }
    }

    /// (name, labels, value) of one sample line.
    type ParsedSample = (String, Vec<(String, String)>, String);

    /// One sample line parsed strictly as both text formats define it:
    /// `name{k="v",...} value`, values escaped only as `\\`, `\"`, `\n`.
    fn parse_sample(line: &str) -> Result<ParsedSample, String> {
        let (name, rest) = line.split_once('{').ok_or("no labels")?;
        let mut labels = Vec::new();
        let mut chars = rest.chars();
        loop {
            let mut key = String::new();
            loop {
                match chars.next().ok_or("end in a label name")? {
                    '=' => break,
                    '}' if key.is_empty() => {
                        let value: String = chars.collect();
                        let value = value.strip_prefix(' ').ok_or("no value")?.to_string();
                        if value.contains([' ', '{', '}', '"']) {
                            return Err(format!("trailing text {value:?}"));
                        }
                        return Ok((name.to_string(), labels, value));
                    }
                    c if c == '_' || c.is_ascii_alphanumeric() => key.push(c),
                    c => return Err(format!("{c:?} in a label name")),
                }
            }
            if chars.next() != Some('"') {
                return Err("no opening quote".into());
            }
            let mut value = String::new();
            loop {
                match chars.next().ok_or("unexpected end of label value")? {
                    '"' => break,
                    '\\' => match chars.next() {
                        Some('\\') => value.push('\\'),
                        Some('"') => value.push('"'),
                        Some('n') => value.push('\n'),
                        other => return Err(format!("bad escape {other:?}")),
                    },
                    '\n' => return Err("raw newline".into()),
                    c => value.push(c),
                }
            }
            labels.push((key, value));
            match chars.next() {
                Some(',') => {}
                Some('}') => {
                    let value: String = chars.collect();
                    let value = value.strip_prefix(' ').ok_or("no value")?.to_string();
                    if value.contains([' ', '{', '}', '"']) {
                        return Err(format!("trailing text {value:?}"));
                    }
                    return Ok((name.to_string(), labels, value));
                }
                other => return Err(format!("{other:?} after a label value")),
            }
        }
    }

    #[test]
    fn needs_escape_finds_every_special_byte_anywhere() {
        for len in 0..20 {
            for at in 0..len {
                for (b, special) in [
                    (b'"', true),
                    (b'\\', true),
                    (b'\n', true),
                    (b'!', false),
                    (0xdc, false),
                    (0x5d, false),
                    (0x0b, false),
                    (0xa2, false),
                ] {
                    let mut v = vec![b'a'; len];
                    v[at] = b;
                    assert_eq!(needs_escape(&v), special, "{v:?}");
                }
            }
        }
    }

    #[test]
    fn label_values_are_escaped() {
        for (value, want) in [
            ("acme", "acme"),
            ("", ""),
            ("\"", "\\\""),
            ("\\", "\\\\"),
            ("end\\", "end\\\\"),
            ("a\nb", "a\\nb"),
            ("\",tenant=\"x", "\\\",tenant=\\\"x"),
            ("\\\"\n\\", "\\\\\\\"\\n\\\\"),
            ("{}#= ünï €😀", "{}#= ünï €😀"),
        ] {
            assert_eq!(escape_label_value(value), want, "{value:?}");
        }
    }

    /// Every string, as any label value of any family, and as a registry
    /// label: each series is one line that parses back to the same values,
    /// in both formats.
    #[test]
    fn any_label_value_round_trips_through_both_formats() {
        const POOL: &[char] = &[
            '"', '\\', '\n', '{', '}', ',', '=', '#', ' ', 'a', 'z', '0', '_', 'é', '€', '😀',
            '\u{fffd}', '\r', '\t', '\u{7f}', '\u{9b}', '\u{2028}', '\u{0}',
        ];
        struct Hostile(Vec<String>);
        impl fmt::Debug for Hostile {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("Hostile")
            }
        }
        impl Collector for Hostile {
            fn encode(&self, enc: DescriptorEncoder) -> Result<(), fmt::Error> {
                let mut enc = Encoder(enc);
                let mut m = enc.encode_descriptor("t_build", "B.", None, MetricType::Info)?;
                m.encode_info(&[("version", self.0[0].as_str())])?;
                let mut m = enc.encode_descriptor("t_requests", "R.", None, MetricType::Counter)?;
                for v in &self.0 {
                    let pod: [(&'static str, &str); 1] = [("pod", v)];
                    m.encode_family(&([("tenant", v.as_str()), ("method", "GET")], &pod[..]))?
                        .encode_counter::<NoLabelSet, _, u64>(&1u64, None)?;
                }
                let mut m = enc.encode_descriptor("t_ratio", "G.", None, MetricType::Gauge)?;
                for v in &self.0 {
                    m.encode_family(&[("slo", v.as_str()), ("tenant", v)])?
                        .encode_gauge(&0.5)?;
                }
                let mut m =
                    enc.encode_descriptor("t_seconds", "H.", None, MetricType::Histogram)?;
                for v in &self.0 {
                    m.encode_family(&[("tenant", v.as_str())])?
                        .encode_histogram::<NoLabelSet>(1.0, 2, &[(0.1, 1), (f64::MAX, 2)], None)?;
                }
                Ok(())
            }
        }
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for round in 0..300 {
            let values: Vec<String> = (0..8)
                .map(|_| {
                    let len = (next() % 24) as usize;
                    (0..len)
                        .map(|_| POOL[(next() % POOL.len() as u64) as usize])
                        .collect()
                })
                .collect();
            let mut r = registry_with_labels(vec![("node", values[1].clone())]);
            r.register_collector(Box::new(Hostile(values.clone())));
            let om = encode(&r).unwrap();
            for (format, text) in [("openmetrics", om.clone()), ("text", to_text_format(&om))] {
                let samples: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
                // info 1, counters 8, gauges 8, histograms 8 x (sum, count, 2 buckets)
                assert_eq!(samples.len(), 1 + 8 + 8 + 32, "{format} {values:?}\n{text}");
                let (mut counters, mut gauges) = (0, 0);
                for line in samples {
                    let (name, labels, _) = parse_sample(line)
                        .unwrap_or_else(|e| panic!("{format} round {round}: {e}: {line:?}"));
                    assert_eq!(
                        labels[0],
                        ("node".to_string(), values[1].clone()),
                        "{line:?}"
                    );
                    let got: Vec<&str> = labels[1..].iter().map(|(_, v)| v.as_str()).collect();
                    match name.as_str() {
                        "t_build_info" => assert_eq!(got, [&values[0]]),
                        "t_requests_total" => {
                            let v = &values[counters];
                            assert_eq!(got, [v.as_str(), "GET", v.as_str()], "{line:?}");
                            counters += 1;
                        }
                        "t_ratio" => {
                            let v = &values[gauges];
                            assert_eq!(got, [v.as_str(), v.as_str()], "{line:?}");
                            gauges += 1;
                        }
                        _ => assert!(name.starts_with("t_seconds"), "{line:?}"),
                    }
                }
                assert_eq!((counters, gauges), (8, 8));
            }
        }
    }

    /// What escaping costs a scrape: 100,000 series of four labels, encoded
    /// raw (as before) and escaped, into the text format. Run with
    /// `cargo test -p burnwatch --release scrape_encoding_cost -- --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement"]
    fn scrape_encoding_cost() {
        struct Series100k {
            tenants: Vec<String>,
            escaped: bool,
        }
        impl fmt::Debug for Series100k {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("Series100k")
            }
        }
        impl Collector for Series100k {
            fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), fmt::Error> {
                if self.escaped {
                    let mut enc = Encoder(enc);
                    let mut m =
                        enc.encode_descriptor("t_requests", "R.", None, MetricType::Counter)?;
                    for t in &self.tenants {
                        let labels = [
                            ("service", "nginx:8080"),
                            ("tenant", t.as_str()),
                            ("method", "GET"),
                            ("status_code", "200"),
                        ];
                        m.encode_family(&labels)?
                            .encode_counter::<NoLabelSet, _, u64>(&12345u64, None)?;
                    }
                } else {
                    let mut m =
                        enc.encode_descriptor("t_requests", "R.", None, MetricType::Counter)?;
                    for t in &self.tenants {
                        let labels = [
                            ("service", "nginx:8080"),
                            ("tenant", t.as_str()),
                            ("method", "GET"),
                            ("status_code", "200"),
                        ];
                        m.encode_family(&labels)?
                            .encode_counter::<NoLabelSet, _, u64>(&12345u64, None)?;
                    }
                }
                Ok(())
            }
        }
        let tenants: Vec<String> = (0..100_000).map(|i| format!("tenant-{i:06}")).collect();
        let mut times = [Vec::new(), Vec::new()];
        for _ in 0..41 {
            for (i, escaped) in [false, true].into_iter().enumerate() {
                let mut r = Registry::default();
                r.register_collector(Box::new(Series100k {
                    tenants: tenants.clone(),
                    escaped,
                }));
                let mut w = ScrapeWriter::new(std::io::sink(), true);
                let t = std::time::Instant::now();
                encode_into(&r, &mut w).unwrap();
                let (_, bytes) = w.finish().unwrap();
                times[i].push(t.elapsed().as_secs_f64() * 1e3);
                assert!(bytes > 7_000_000);
            }
        }
        for t in &mut times {
            t.sort_by(f64::total_cmp);
        }
        let (raw, esc) = (&times[0], &times[1]);
        println!(
            "100,000 series x 4 labels, text format, 41 runs interleaved: \
raw min {:.1} / median {:.1} ms, escaped min {:.1} / median {:.1} ms ({:+.1}% / {:+.1}%)",
            raw[0],
            raw[20],
            esc[0],
            esc[20],
            (esc[0] / raw[0] - 1.0) * 100.0,
            (esc[20] / raw[20] - 1.0) * 100.0
        );
    }
}

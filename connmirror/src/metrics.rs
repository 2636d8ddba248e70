//! Prometheus metrics: a `/metrics` endpoint in the OpenMetrics text format
//! (which Prometheus scrapes natively), built with `prometheus-client`.
//!
//! The daemon's state lives in its single-threaded event loop (the flow table,
//! the capture maps, the journal, the takeover reports), so the endpoint does
//! not share it. Each scrape instead sends a [`Scrape`] request into the loop,
//! which answers with a fresh [`Family`] snapshot between two ring drains: the
//! numbers are exact at that instant, never a cached copy from a timer. A loop
//! busy for more than [`SCRAPE_WAIT`] (a takeover in progress) gets the scrape
//! a `503` rather than a stale answer.
//!
//! Every name carries the `connmirror_` prefix; counters end in `_total`, and
//! units (`_bytes`, `_seconds`) are in the names. docs/metrics.md lists the metrics.

use std::{
    fmt,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    str::FromStr,
    time::Duration,
};

use anyhow::Context as _;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _, NoLabelSet},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::{Registry, Unit},
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::{mpsc, oneshot},
};

/// Where metrics are served unless `--metrics` says otherwise.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9464));

/// How long a scrape waits for the event loop before answering `503`.
pub const SCRAPE_WAIT: Duration = Duration::from_secs(2);

/// Largest request head read from a scraper.
const MAX_REQUEST: usize = 8 << 10;

/// The OpenMetrics text content type, served to scrapers that accept it
/// (Prometheus asks for it).
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The classic Prometheus text format, served to everyone else (`curl`,
/// `promtool check metrics`, whose parser reads only this format).
const TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The `--metrics` flag, shared by every daemon.
#[derive(Clone, Debug, clap::Args)]
pub struct MetricsArgs {
    /// Serve Prometheus metrics at http://IP:PORT/metrics, or `off`. Keep it on
    /// localhost (the default) unless a firewall guards the port: the numbers
    /// describe the protected connections.
    #[arg(
        long = "metrics",
        value_name = "IP:PORT|off",
        default_value = "127.0.0.1:9464"
    )]
    pub listen: Listen,
}

/// A `--metrics` value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listen {
    /// No endpoint.
    Off,
    /// Serve on this address.
    At(SocketAddr),
}

impl FromStr for Listen {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text == "off" {
            return Ok(Self::Off);
        }
        text.parse()
            .map(Self::At)
            .map_err(|_| format!("{text:?} is not IP:PORT or `off`"))
    }
}

impl MetricsArgs {
    /// Binds the endpoint (an error names the address) and starts serving it.
    pub fn start(&self) -> anyhow::Result<Exporter> {
        let Listen::At(addr) = self.listen else {
            return Ok(Exporter { scrapes: None });
        };
        let listener = std::net::TcpListener::bind(addr)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .and_then(TcpListener::from_std)
            .with_context(|| {
                format!("binding the metrics endpoint {addr} (choose another with --metrics IP:PORT, or --metrics off)")
            })?;
        tracing::info!(%addr, "serving metrics at /metrics");
        let (tx, rx) = mpsc::channel(8);
        tokio::spawn(serve(listener, tx));
        Ok(Exporter { scrapes: Some(rx) })
    }
}

/// The event loop's end of the endpoint: scrape requests to answer.
#[derive(Debug)]
pub struct Exporter {
    scrapes: Option<mpsc::Receiver<Scrape>>,
}

impl Exporter {
    /// The next scrape; pending forever when metrics are off.
    pub async fn next(&mut self) -> Scrape {
        match self.scrapes.as_mut() {
            Some(rx) => match rx.recv().await {
                Some(scrape) => scrape,
                None => std::future::pending().await,
            },
            None => std::future::pending().await,
        }
    }
}

/// One scrape waiting for the event loop's numbers.
#[derive(Debug)]
pub struct Scrape {
    reply: oneshot::Sender<Vec<Family>>,
}

impl Scrape {
    /// Answers the scrape with these families.
    pub fn answer(self, families: Vec<Family>) {
        // The scraper may have timed out and gone; nothing to do then.
        let _ = self.reply.send(families);
    }
}

/// One metric family at the instant of a scrape.
#[derive(Clone, Debug)]
pub struct Family {
    name: &'static str,
    help: &'static str,
    unit: Option<Unit>,
    kind: Kind,
    samples: Vec<(Labels, Value)>,
}

/// A sample's labels.
pub type Labels = Vec<(&'static str, String)>;

/// The type of a [`Family`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// A sample's value.
#[derive(Clone, Debug)]
enum Value {
    Counter(u64),
    Gauge(f64),
    Histogram(Histogram),
}

/// A histogram's state. The encoder makes the bucket counts cumulative.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Histogram {
    /// `(upper bound, observations above the previous bound and ≤ this one)`,
    /// ending with `+Inf`.
    pub buckets: Vec<(f64, u64)>,
    /// Sum of the observations.
    pub sum: f64,
    /// Number of observations.
    pub count: u64,
}

impl Histogram {
    /// A histogram over `bounds` (ascending, in seconds) of `observations`.
    pub fn of(bounds: &[f64], observations: impl IntoIterator<Item = f64>) -> Self {
        let bounds = bounds.iter().copied().chain([f64::INFINITY]);
        let mut histogram = Self {
            buckets: bounds.map(|bound| (bound, 0)).collect(),
            sum: 0.0,
            count: 0,
        };
        for value in observations {
            histogram.record(value);
        }
        histogram
    }

    /// Adds one observation.
    pub fn record(&mut self, value: f64) {
        let bucket = self.buckets.partition_point(|&(bound, _)| bound < value);
        self.buckets[bucket].1 += 1;
        self.sum += value;
        self.count += 1;
    }
}

impl Family {
    fn new(name: &'static str, help: &'static str, unit: Option<Unit>, kind: Kind) -> Self {
        Self {
            name,
            help,
            unit,
            kind,
            samples: Vec::new(),
        }
    }

    /// A counter; `name` leaves out the unit and `_total`, which are added.
    pub fn counter(name: &'static str, help: &'static str, unit: Option<Unit>) -> Self {
        Self::new(name, help, unit, Kind::Counter)
    }

    /// A gauge; `name` leaves out the unit, which is added.
    pub fn gauge(name: &'static str, help: &'static str, unit: Option<Unit>) -> Self {
        Self::new(name, help, unit, Kind::Gauge)
    }

    /// A histogram; `name` leaves out the unit, which is added.
    pub fn histogram(name: &'static str, help: &'static str, unit: Option<Unit>) -> Self {
        Self::new(name, help, unit, Kind::Histogram)
    }

    /// Adds a counter sample.
    pub fn count(mut self, labels: Labels, value: u64) -> Self {
        self.samples.push((labels, Value::Counter(value)));
        self
    }

    /// Adds a gauge sample.
    pub fn set(mut self, labels: Labels, value: f64) -> Self {
        self.samples.push((labels, Value::Gauge(value)));
        self
    }

    /// Adds a histogram sample.
    pub fn observe(mut self, labels: Labels, histogram: Histogram) -> Self {
        self.samples.push((labels, Value::Histogram(histogram)));
        self
    }

    /// Adds label `name="value"` to every sample (after their own),
    /// for families that several sources export apart (one per standby).
    pub fn labelled(mut self, name: &'static str, value: &str) -> Self {
        for (labels, _) in &mut self.samples {
            labels.push((name, value.to_owned()));
        }
        self
    }

    /// `families` with those of the same name, unit and type made one (their
    /// samples in order): an exposition names each family once, so the
    /// same families of several sources, told apart by a label
    /// ([`Family::labelled`]), are merged before a scrape is answered.
    pub fn merge(families: impl IntoIterator<Item = Family>) -> Vec<Family> {
        let mut merged: Vec<Family> = Vec::new();
        for family in families {
            let same = |f: &&mut Family| {
                f.name == family.name
                    && f.unit.as_ref().map(Unit::as_str) == family.unit.as_ref().map(Unit::as_str)
                    && f.kind == family.kind
            };
            match merged.iter_mut().find(same) {
                Some(into) => into.samples.extend(family.samples),
                None => merged.push(family),
            }
        }
        merged
    }

    /// The name as exposed, before any `_total`: prefix, name, unit.
    fn full_name(&self) -> String {
        match &self.unit {
            Some(unit) => format!("connmirror_{}_{}", self.name, unit.as_str()),
            None => format!("connmirror_{}", self.name),
        }
    }

    fn encode(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        let metric_type = match self.kind {
            Kind::Counter => MetricType::Counter,
            Kind::Gauge => MetricType::Gauge,
            Kind::Histogram => MetricType::Histogram,
        };
        let mut family =
            encoder.encode_descriptor(self.name, self.help, self.unit.as_ref(), metric_type)?;
        for (labels, value) in &self.samples {
            let sample = family.encode_family(labels)?;
            match value {
                Value::Counter(n) => ConstCounter::new(*n).encode(sample)?,
                Value::Gauge(x) => ConstGauge::new(*x).encode(sample)?,
                Value::Histogram(h) => {
                    let mut sample = sample;
                    sample.encode_histogram::<NoLabelSet>(h.sum, h.count, &h.buckets, None)?
                }
            }
        }
        Ok(())
    }
}

/// A snapshot, registered for one scrape.
#[derive(Debug)]
struct Snapshot(Vec<Family>);

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        self.0
            .iter()
            .try_for_each(|family| family.encode(&mut encoder))
    }
}

/// The families in the OpenMetrics text format, names prefixed `connmirror_`.
pub fn encode(families: Vec<Family>) -> String {
    let mut registry = Registry::with_prefix("connmirror");
    registry.register_collector(Box::new(Snapshot(families)));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)
        .expect("writing to a String cannot fail");
    text
}

/// The families in the Prometheus text format 0.0.4: the OpenMetrics text
/// without `# UNIT` and `# EOF`, and with each counter's `HELP` and `TYPE`
/// under its sample name (`..._total`), which is where that format's parser
/// looks for them.
pub fn encode_text(families: Vec<Family>) -> String {
    let counters: Vec<String> = (families.iter())
        .filter(|f| matches!(f.kind, Kind::Counter))
        .map(Family::full_name)
        .collect();
    let mut text = String::new();
    for line in encode(families).lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|tag| {
            let rest = line.strip_prefix(tag)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .iter()
                .any(|c| c == name)
                .then(|| format!("{tag}{name}_total {tail}"))
        });
        text.push_str(renamed.as_deref().unwrap_or(line));
        text.push('\n');
    }
    text
}

async fn serve(listener: TcpListener, scrapes: mpsc::Sender<Scrape>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(answer(stream, scrapes.clone()));
            }
            Err(err) => {
                tracing::warn!(%err, "accepting a metrics connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Serves one HTTP/1.x request and closes the connection.
async fn answer(mut stream: TcpStream, scrapes: mpsc::Sender<Scrape>) {
    let response = match tokio::time::timeout(SCRAPE_WAIT, read_head(&mut stream)).await {
        Ok(Ok(head)) => respond(&head, &scrapes).await,
        Ok(Err(err)) => {
            tracing::debug!(%err, "reading a metrics request");
            return;
        }
        Err(_) => return,
    };
    if let Err(err) = stream.write_all(&response).await {
        tracing::debug!(%err, "writing a metrics response");
    }
    let _ = stream.shutdown().await;
}

/// Reads up to the blank line that ends a request head.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<String> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 || head.len() + n > MAX_REQUEST {
            return Err(std::io::Error::other(
                "request head incomplete or too large",
            ));
        }
        head.extend_from_slice(&buf[..n]);
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

async fn respond(head: &str, scrapes: &mpsc::Sender<Scrape>) -> Vec<u8> {
    let mut words = head.split_ascii_whitespace();
    match (words.next(), words.next()) {
        (Some("GET"), Some("/metrics")) => {}
        (Some("GET"), Some(_)) => return http(404, "text/plain", "not found: try /metrics\n"),
        _ => return http(405, "text/plain", "only GET /metrics is served\n"),
    }
    let (reply, families) = oneshot::channel();
    if scrapes.send(Scrape { reply }).await.is_err() {
        return http(503, "text/plain", "the daemon is shutting down\n");
    }
    match tokio::time::timeout(SCRAPE_WAIT, families).await {
        Ok(Ok(families)) if accepts_openmetrics(head) => http(200, OPENMETRICS, &encode(families)),
        Ok(Ok(families)) => http(200, TEXT, &encode_text(families)),
        _ => http(
            503,
            "text/plain",
            "the daemon is busy (a takeover?); retry\n",
        ),
    }
}

/// Whether the request's `Accept` header names OpenMetrics.
fn accepts_openmetrics(head: &str) -> bool {
    head.lines().any(|line| {
        line.split_once(':').is_some_and(|(name, value)| {
            name.eq_ignore_ascii_case("accept") && value.contains("application/openmetrics-text")
        })
    })
}

fn http(status: u16, content_type: &str, body: &str) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_encode_with_prefix_units_and_suffixes() {
        let text = encode(vec![
            Family::counter("captured_packets", "Segments captured.", None).count(
                vec![("iface", "gw-c".into()), ("direction", "ingress".into())],
                7,
            ),
            Family::gauge("replication_lag", "Bytes waiting.", Some(Unit::Bytes))
                .set(Vec::new(), 3.0),
            Family::histogram("restore", "Restore step.", Some(Unit::Seconds))
                .observe(Vec::new(), Histogram::of(&[0.1, 1.0], [0.05, 0.5, 2.0])),
        ]);
        assert_eq!(
            text,
            "# HELP connmirror_captured_packets Segments captured.\n\
             # TYPE connmirror_captured_packets counter\n\
             connmirror_captured_packets_total{iface=\"gw-c\",direction=\"ingress\"} 7\n\
             # HELP connmirror_replication_lag_bytes Bytes waiting.\n\
             # TYPE connmirror_replication_lag_bytes gauge\n\
             # UNIT connmirror_replication_lag_bytes bytes\n\
             connmirror_replication_lag_bytes 3.0\n\
             # HELP connmirror_restore_seconds Restore step.\n\
             # TYPE connmirror_restore_seconds histogram\n\
             # UNIT connmirror_restore_seconds seconds\n\
             connmirror_restore_seconds_sum 2.55\n\
             connmirror_restore_seconds_count 3\n\
             connmirror_restore_seconds_bucket{le=\"0.1\"} 1\n\
             connmirror_restore_seconds_bucket{le=\"1.0\"} 2\n\
             connmirror_restore_seconds_bucket{le=\"+Inf\"} 3\n\
             # EOF\n"
        );
    }

    #[test]
    fn text_format_names_counters_by_their_samples() {
        let text = encode_text(vec![
            Family::counter("journal_written", "Journal bytes.", Some(Unit::Bytes))
                .count(Vec::new(), 9),
            Family::gauge("flows", "Flows.", None).set(vec![("readiness", "ready".into())], 2.0),
        ]);
        assert_eq!(
            text,
            "# HELP connmirror_journal_written_bytes_total Journal bytes.\n\
             # TYPE connmirror_journal_written_bytes_total counter\n\
             connmirror_journal_written_bytes_total 9\n\
             # HELP connmirror_flows Flows.\n\
             # TYPE connmirror_flows gauge\n\
             connmirror_flows{readiness=\"ready\"} 2.0\n"
        );
    }

    #[test]
    fn the_same_families_of_several_sources_merge_under_their_label() {
        let of = |standby: &str, n| {
            [
                Family::counter("replication_sent", "Sent.", Some(Unit::Bytes))
                    .count(Vec::new(), n),
                Family::gauge("replication_exposure", "Exposure.", Some(Unit::Bytes))
                    .set(vec![("service", "198.18.1.2:7000".into())], n as f64),
            ]
            .map(|family| family.labelled("standby", standby))
        };
        let merged = Family::merge(
            of("198.18.1.1:7402", 1)
                .into_iter()
                .chain(of("[fd00::1]:7402", 2)),
        );
        assert_eq!(
            encode_text(merged),
            "# HELP connmirror_replication_sent_bytes_total Sent.\n\
             # TYPE connmirror_replication_sent_bytes_total counter\n\
             connmirror_replication_sent_bytes_total{standby=\"198.18.1.1:7402\"} 1\n\
             connmirror_replication_sent_bytes_total{standby=\"[fd00::1]:7402\"} 2\n\
             # HELP connmirror_replication_exposure_bytes Exposure.\n\
             # TYPE connmirror_replication_exposure_bytes gauge\n\
             connmirror_replication_exposure_bytes{service=\"198.18.1.2:7000\",standby=\"198.18.1.1:7402\"} 1.0\n\
             connmirror_replication_exposure_bytes{service=\"198.18.1.2:7000\",standby=\"[fd00::1]:7402\"} 2.0\n"
        );
    }

    #[test]
    fn openmetrics_only_when_accepted() {
        assert!(accepts_openmetrics(
            "GET /metrics HTTP/1.1\r\nAccept: application/openmetrics-text;version=1.0.0,text/plain;q=0.5\r\n\r\n"
        ));
        assert!(!accepts_openmetrics(
            "GET /metrics HTTP/1.1\r\nAccept: */*\r\n\r\n"
        ));
    }

    #[test]
    fn listen_takes_an_address_or_off() {
        assert_eq!("off".parse(), Ok(Listen::Off));
        assert_eq!("127.0.0.1:9464".parse(), Ok(Listen::At(DEFAULT_LISTEN)));
        assert_eq!(
            "localhost".parse::<Listen>(),
            Err("\"localhost\" is not IP:PORT or `off`".to_owned())
        );
    }
}

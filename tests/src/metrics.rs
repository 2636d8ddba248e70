//! Scraping a daemon's Prometheus endpoint from inside its namespace, and
//! checking the exposition with `promtool check metrics` (Debian's
//! `prometheus` package).

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::netns::Netns;

/// Where the daemons serve metrics by default.
pub const DEFAULT_ENDPOINT: &str = "127.0.0.1:9464";

/// One scrape: the raw text, and every sample by its series
/// (`name{labels}` exactly as exposed).
#[derive(Clone, Debug)]
pub struct Scrape {
    /// The response body.
    pub text: String,
    /// Sample values by series.
    pub samples: BTreeMap<String, f64>,
}

impl Scrape {
    /// The value of `series`; panics, listing what there is, when absent.
    pub fn get(&self, series: &str) -> f64 {
        *self
            .samples
            .get(series)
            .unwrap_or_else(|| panic!("no series {series} in the scrape:\n{}", self.text))
    }

    /// The value of `series` as a counter.
    pub fn count(&self, series: &str) -> u64 {
        let value = self.get(series);
        assert!(
            value >= 0.0 && value.fract() == 0.0,
            "{series} = {value} is not a count"
        );
        value as u64
    }

    /// How much `series` grew since `before` (where a label set not yet
    /// exposed counts as 0).
    pub fn delta(&self, before: &Scrape, series: &str) -> u64 {
        let earlier = before
            .samples
            .get(series)
            .map_or(0, |_| before.count(series));
        self.count(series) - earlier
    }

    /// The sum of the series of `name` whose labels include `label`
    /// (`state="protected"`).
    pub fn sum_where(&self, name: &str, label: &str) -> u64 {
        let prefix = format!("{name}{{");
        (self.samples.iter())
            .filter(|(series, _)| series.starts_with(&prefix))
            .filter(|(series, _)| {
                series[prefix.len()..]
                    .split(',')
                    .any(|l| l.trim_end_matches('}') == label)
            })
            .map(|(_, value)| *value as u64)
            .sum()
    }

    /// The cumulative buckets of histogram `name` (no labels but `le`):
    /// (upper bound, observations up to it), by bound.
    pub fn buckets(&self, name: &str) -> Vec<(f64, f64)> {
        let prefix = format!("{name}_bucket{{le=\"");
        let mut buckets: Vec<(f64, f64)> = (self.samples.iter())
            .filter_map(|(series, count)| {
                let le = series.strip_prefix(&prefix)?.strip_suffix("\"}")?;
                let bound = match le {
                    "+Inf" => f64::INFINITY,
                    le => le.parse().ok()?,
                };
                Some((bound, *count))
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        buckets
    }

    /// The upper bound of the bucket of histogram `name` (no labels but
    /// `le`) that holds its `q` quantile; `None` without observations.
    pub fn histogram_quantile(&self, name: &str, q: f64) -> Option<f64> {
        let buckets = self.buckets(name);
        let total = buckets.last()?.1;
        (total > 0.0).then_some(())?;
        (buckets.iter())
            .find(|(_, count)| *count >= q * total)
            .map(|(bound, _)| *bound)
    }

    /// The sum of every series of `name` (all label sets).
    pub fn sum(&self, name: &str) -> u64 {
        let prefix = format!("{name}{{");
        (self.samples.iter())
            .filter(|(series, _)| series.as_str() == name || series.starts_with(&prefix))
            .map(|(_, value)| *value as u64)
            .sum()
    }
}

impl Scrape {
    /// A scrape of `text` (the Prometheus text format).
    pub fn parse(text: String) -> Scrape {
        Scrape {
            samples: parse(&text),
            text,
        }
    }

    /// The sample lines of the families named in `names`, as exposed.
    pub fn lines_of(&self, names: &[&str]) -> Vec<&str> {
        (self.text.lines())
            .filter(|line| !line.starts_with('#'))
            .filter(|line| {
                let name = line.split(['{', ' ']).next().unwrap_or_default();
                names.contains(&name)
            })
            .collect()
    }
}

/// `GET /metrics` at `endpoint` inside `ns`: returns the status line and the body.
pub fn get(ns: &Netns, endpoint: &str, path: &str) -> (String, String) {
    let endpoint: SocketAddr = endpoint.parse().expect("endpoint");
    ns.run(|| {
        let mut stream = TcpStream::connect_timeout(&endpoint, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connect to the metrics endpoint {endpoint}: {e}"));
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        write!(stream, "GET {path} HTTP/1.1\r\nHost: {endpoint}\r\n\r\n").expect("request");
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("response");
        let (head, body) = response
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("no header end in {response:?}"));
        let status = head.lines().next().unwrap_or_default().to_owned();
        (status, body.to_owned())
    })
}

/// Scrapes `endpoint` inside `ns`, asserting `200 OK` and that `promtool
/// check metrics` accepts the text.
pub fn scrape(ns: &Netns, endpoint: &str) -> Scrape {
    let (status, text) = get(ns, endpoint, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK", "body: {text}");
    promtool_check(&text);
    Scrape::parse(text)
}

/// Scrapes the default endpoint in `ns` until the reader has applied every
/// record the kernel wrote and `done` holds, then returns that scrape.
/// Panics with the last scrape after `timeout`.
pub fn scrape_settled(ns: &Netns, timeout: Duration, done: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let now = scrape(ns, DEFAULT_ENDPOINT);
        let caught_up = now.count("connmirror_ring_records_total")
            == now.count("connmirror_ebpf_records_total")
            && now.get("connmirror_replication_lag_bytes") == 0.0;
        if caught_up && done(&now) {
            return now;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the metrics never settled:\n{}",
            now.text
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `promtool check metrics` over `text`; panics with its complaints.
pub fn promtool_check(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("running promtool (Debian package `prometheus`; `cargo xtask test` installs it): {e}")
        });
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics failed: {}{}\non:\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Samples by series from the text format.
fn parse(text: &str) -> BTreeMap<String, f64> {
    (text.lines())
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| {
            let (series, value) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("unparsable sample line {line:?}"));
            let value = match value {
                "+Inf" => f64::INFINITY,
                v => v
                    .parse()
                    .unwrap_or_else(|e| panic!("value in {line:?}: {e}")),
            };
            (series.to_owned(), value)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only the series of the name with that exact label count, whatever
    /// the label's place.
    #[test]
    fn sum_where_adds_the_series_with_the_label() {
        let scrape = Scrape::parse(
            "connmirror_live_connections{service=\"a\",state=\"protected\",reason=\"\"} 3\n\
             connmirror_live_connections{service=\"b\",state=\"protected\",reason=\"\"} 4\n\
             connmirror_live_connections{service=\"a\",state=\"divergent\",reason=\"\"} 5\n\
             connmirror_flows{readiness=\"ready\"} 7\n\
             connmirror_flows{readiness=\"ready-ish\"} 9\n"
                .to_owned(),
        );

        let protected = scrape.sum_where("connmirror_live_connections", "state=\"protected\"");
        assert_eq!(protected, 7);
        assert_eq!(
            scrape.sum_where("connmirror_flows", "readiness=\"ready\""),
            7
        );
    }
}

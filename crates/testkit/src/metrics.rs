//! Reads a node's `/metrics` with a real Prometheus text-format parser.

use std::net::SocketAddr;

/// One scrape of a node's metrics.
pub struct Scrape {
    samples: Vec<prometheus_parse::Sample>,
}

/// Scrapes `/metrics` at `addr`.
pub async fn scrape(addr: SocketAddr) -> Scrape {
    let response = crate::get(addr, "/metrics", &[]).await;
    assert_eq!(response.status, 200, "{}", response.body);
    let lines = response.body.lines().map(|l| Ok(l.to_owned()));
    let parsed = prometheus_parse::Scrape::parse(lines).unwrap();
    Scrape { samples: parsed.samples }
}

impl Scrape {
    /// The value of the counter or gauge `name` whose labels include
    /// `labels`; panics when there is none.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.find(name, labels).unwrap_or_else(|| panic!("no sample {name}{labels:?}"))
    }

    pub fn find(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .filter(|s| s.metric == name)
            .find(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                prometheus_parse::Value::Histogram(ref buckets) => buckets.last().map_or(0.0, |b| b.count),
                prometheus_parse::Value::Summary(_) => f64::NAN,
            })
    }
}

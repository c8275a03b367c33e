//! Prometheus `/metrics`: request counts and latency histograms by verb, resource and code.

use std::{collections::BTreeMap, fmt::Write, sync::Mutex, time::Duration};

const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

#[derive(Debug, Default)]
struct Series {
    count: u64,
    sum: f64,
    buckets: [u64; BUCKETS.len()],
}

/// Counters for every (verb, resource, code) served.
#[derive(Debug, Default)]
pub struct Metrics {
    series: Mutex<BTreeMap<(String, String, u16), Series>>,
}

impl Metrics {
    pub fn observe(&self, verb: &str, resource: &str, code: u16, took: Duration) {
        let secs = took.as_secs_f64();
        let mut series = self
            .series
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let s = series
            .entry((verb.to_owned(), resource.to_owned(), code))
            .or_default();
        s.count += 1;
        s.sum += secs;
        for (i, le) in BUCKETS.iter().enumerate() {
            if secs <= *le {
                s.buckets[i] += 1;
            }
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let series = self
            .series
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut out = String::new();
        out.push_str("# HELP apiserver_request_total Counter of apiserver requests broken out for each verb, resource and HTTP response code.\n");
        out.push_str("# TYPE apiserver_request_total counter\n");
        for ((verb, resource, code), s) in series.iter() {
            let _ = writeln!(
                out,
                "apiserver_request_total{{verb=\"{verb}\",resource=\"{resource}\",code=\"{code}\"}} {}",
                s.count
            );
        }
        out.push_str("# HELP apiserver_request_duration_seconds Response latency distribution in seconds for each verb and resource.\n");
        out.push_str("# TYPE apiserver_request_duration_seconds histogram\n");
        let mut merged: BTreeMap<(&str, &str), Series> = BTreeMap::new();
        for ((verb, resource, _), s) in series.iter() {
            let m = merged.entry((verb, resource)).or_default();
            m.count += s.count;
            m.sum += s.sum;
            for (i, b) in s.buckets.iter().enumerate() {
                m.buckets[i] += b;
            }
        }
        for ((verb, resource), s) in &merged {
            let labels = format!("verb=\"{verb}\",resource=\"{resource}\"");
            for (i, le) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "apiserver_request_duration_seconds_bucket{{{labels},le=\"{le}\"}} {}",
                    s.buckets[i]
                );
            }
            let _ = writeln!(
                out,
                "apiserver_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}",
                s.count
            );
            let _ = writeln!(
                out,
                "apiserver_request_duration_seconds_sum{{{labels}}} {}",
                s.sum
            );
            let _ = writeln!(
                out,
                "apiserver_request_duration_seconds_count{{{labels}}} {}",
                s.count
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_show_as_counters_and_cumulative_buckets() {
        let m = Metrics::default();
        m.observe("GET", "pods", 200, Duration::from_millis(3));
        m.observe("GET", "pods", 404, Duration::from_millis(30));
        let text = m.render();
        assert!(
            text.contains(r#"apiserver_request_total{verb="GET",resource="pods",code="200"} 1"#)
        );
        assert!(text.contains(
            r#"apiserver_request_duration_seconds_bucket{verb="GET",resource="pods",le="0.005"} 1"#
        ));
        assert!(text.contains(
            r#"apiserver_request_duration_seconds_bucket{verb="GET",resource="pods",le="0.05"} 2"#
        ));
        assert!(
            text.contains(
                r#"apiserver_request_duration_seconds_count{verb="GET",resource="pods"} 2"#
            )
        );
    }
}

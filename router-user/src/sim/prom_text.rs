//! Prometheus text exposition format 0.0.4, written the way Python's `prometheus_client` writes
//! it (vLLM and SGLang use it): `# HELP`/`# TYPE` per family, counters named `*_total` in both,
//! floats formatted as Python does (`1.0`, `0.001`, `8.128902e+06`), histograms as cumulative
//! `_bucket{le=...}` plus `_count` and `_sum`.
//!
//! Written here rather than with `prometheus-client`: that crate emits OpenMetrics (`# EOF`,
//! counters typed without `_total`), and the simulator must look exactly like the real servers
//! to the scrapers under test.
use std::fmt::Write as _;

use super::hist::Histogram;

/// Content type of this format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Python's `repr(float)` adjusted the way `prometheus_client.utils.floatToGoString` does.
pub fn format_value(value: f64) -> String {
    if value == f64::INFINITY {
        return "+Inf".to_owned();
    }
    if value == f64::NEG_INFINITY {
        return "-Inf".to_owned();
    }
    if value.is_nan() {
        return "NaN".to_owned();
    }
    // Rust's `{:?}` matches Python's repr for the magnitudes metrics take (< 1e16).
    let repr = format!("{value:?}");
    if value > 0.0
        && let Some(dot) = repr.find('.')
        && dot > 6
        && !repr.contains('e')
    {
        // Go-style exponent: 8128902.0 -> 8.128902e+06.
        let digits = format!("{}{}", &repr[1..dot], &repr[dot + 1..]);
        let mantissa = format!("{}.{}", &repr[..1], digits);
        let mantissa = mantissa.trim_end_matches('0').trim_end_matches('.');
        // Python writes "e+0" then the exponent: e+06, and e+010 past nine digits.
        return format!("{mantissa}e+0{}", dot - 1);
    }
    repr
}

fn escape(value: &str, out: &mut String) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LabelOrder {
    /// In the order given, `le` last (prometheus_client's single-process registry).
    AsGiven,
    /// Sorted by name (prometheus_client's multiprocess collector, which SGLang uses).
    Sorted,
}

#[derive(Debug)]
pub struct PromWriter {
    out: String,
    order: LabelOrder,
}

impl PromWriter {
    pub fn new(order: LabelOrder) -> Self {
        Self {
            out: String::with_capacity(16 * 1024),
            order,
        }
    }

    pub fn finish(self) -> String {
        self.out
    }

    fn family(&mut self, name: &str, help: &str, kind: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn sample(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        extra: Option<(&str, &str)>,
        value: f64,
    ) {
        self.out.push_str(name);
        let mut all: Vec<(&str, &str)> = labels.to_vec();
        if let Some(extra) = extra {
            all.push(extra);
        }
        if self.order == LabelOrder::Sorted {
            all.sort_by(|a, b| a.0.cmp(b.0));
        }
        if !all.is_empty() {
            self.out.push('{');
            for (index, (key, value)) in all.iter().enumerate() {
                if index > 0 {
                    self.out.push(',');
                }
                self.out.push_str(key);
                self.out.push_str("=\"");
                escape(value, &mut self.out);
                self.out.push('"');
            }
            self.out.push('}');
        }
        self.out.push(' ');
        self.out.push_str(&format_value(value));
        self.out.push('\n');
    }

    pub fn gauge(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: f64) {
        self.family(name, help, "gauge");
        self.sample(name, labels, None, value);
    }

    /// A gauge family with several series (e.g. one per label combination).
    pub fn gauge_series(&mut self, name: &str, help: &str, series: &[(Vec<(&str, &str)>, f64)]) {
        self.family(name, help, "gauge");
        for (labels, value) in series {
            self.sample(name, labels, None, *value);
        }
    }

    /// `name` without `_total`; the family and sample are written as `name_total`.
    pub fn counter(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: f64) {
        self.counter_series(name, help, &[(labels.to_vec(), value)]);
    }

    pub fn counter_series(&mut self, name: &str, help: &str, series: &[(Vec<(&str, &str)>, f64)]) {
        let total = format!("{name}_total");
        self.family(&total, help, "counter");
        for (labels, value) in series {
            self.sample(&total, labels, None, *value);
        }
    }

    pub fn histogram(&mut self, name: &str, help: &str, labels: &[(&str, &str)], hist: &Histogram) {
        self.family(name, help, "histogram");
        let bucket = format!("{name}_bucket");
        let mut le = String::new();
        for (bound, count) in hist
            .bounds()
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(hist.cumulative())
        {
            le.clear();
            le.push_str(&format_value(bound));
            self.sample(&bucket, labels, Some(("le", &le)), count as f64);
        }
        self.sample(&format!("{name}_count"), labels, None, hist.count() as f64);
        self.sample(&format!("{name}_sum"), labels, None, hist.sum());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_format_like_python_prometheus_client() {
        assert_eq!(format_value(1.0), "1.0");
        assert_eq!(format_value(0.001), "0.001");
        assert_eq!(format_value(2560.0), "2560.0");
        assert_eq!(format_value(123456.0), "123456.0");
        assert_eq!(format_value(8_128_902.0), "8.128902e+06");
        assert_eq!(format_value(10_000_000.0), "1e+07");
        assert_eq!(format_value(12_345_678_901.0), "1.2345678901e+010");
        assert_eq!(format_value(0.0), "0.0");
        assert_eq!(format_value(f64::INFINITY), "+Inf");
        assert_eq!(format_value(0.007507552643049313), "0.007507552643049313");
    }

    #[test]
    fn families_counters_and_histograms() {
        let mut writer = PromWriter::new(LabelOrder::AsGiven);
        writer.counter(
            "x:tokens",
            "Tokens.",
            &[("model_name", "m\"1"), ("engine", "0")],
            3.0,
        );
        let mut hist = Histogram::new(&[0.1, 1.0]);
        hist.observe(0.5);
        writer.histogram("x:lat", "Latency.", &[("model_name", "m")], &hist);
        let text = writer.finish();
        assert!(text.contains("# TYPE x:tokens_total counter\n"));
        assert!(text.contains("x:tokens_total{model_name=\"m\\\"1\",engine=\"0\"} 3.0\n"));
        assert!(text.contains("x:lat_bucket{model_name=\"m\",le=\"0.1\"} 0.0\n"));
        assert!(text.contains("x:lat_bucket{model_name=\"m\",le=\"+Inf\"} 1.0\n"));
        assert!(
            text.contains("x:lat_count{model_name=\"m\"} 1.0\nx:lat_sum{model_name=\"m\"} 0.5\n")
        );
        let mut sorted = PromWriter::new(LabelOrder::Sorted);
        sorted.histogram("y", "h", &[("model_name", "m")], &hist);
        assert!(
            sorted
                .finish()
                .contains("y_bucket{le=\"1.0\",model_name=\"m\"} 1.0")
        );
    }
}

//! Benchmark results as files: JSON records, a markdown report and latency-vs-rate plots.
//!
//! The types are independent of how the figures were obtained: the cluster simulation fills
//! them today, a live benchmark (real processes behind the proxy) can fill the same ones, and
//! every tool downstream reads one schema ([`SCHEMA`], documented in `docs/bench.md`).
mod markdown;
mod plot;

use std::{
    io::Write,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

pub use markdown::{markdown_report, ttft_p90_table};
pub use plot::{PlotFiles, plot_workload};

use super::metrics::RunMetrics;

/// Schema identifier written into every JSON report; bumped when a field changes meaning or
/// disappears (adding fields keeps it).
pub const SCHEMA: &str = "switchyard.bench.routing/v1";

/// The figures of one policy at one offered rate on one workload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub workload: String,
    pub policy: String,
    /// Offered mean request rate, requests per second.
    pub rate_rps: f64,
    #[serde(flatten)]
    pub metrics: RunMetrics,
}

/// A workload as run: its parameters and the rates swept.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkloadInfo {
    pub name: String,
    /// The generator's kind and parameters as given (or the trace file).
    pub parameters: serde_json::Value,
    pub requests: usize,
    /// Prompt plus output tokens over all requests.
    pub total_tokens: u64,
    /// Estimated cluster capacity for this workload (requests per second), when the rate grid
    /// was calibrated from it.
    pub capacity_rps: Option<f64>,
    pub rates_rps: Vec<f64>,
}

/// The cluster the policies ran on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClusterInfo {
    pub servers: usize,
    /// Engine model (simulation profile name, or the server type of a live run).
    pub engine: String,
    /// How often load samples reached the router, when sampled.
    pub load_interval_ms: Option<f64>,
    pub gpu_interval_ms: Option<f64>,
    pub sheddable_share: f64,
    /// Share of each run's earliest arrivals not measured (cache warm-up).
    pub warmup_share: f64,
}

/// How the report was produced.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    /// `simulation` (virtual time) or `live`.
    pub mode: String,
    /// `switchyard` version.
    pub version: String,
    /// The command line that produced the report.
    pub command: String,
    pub seed: u64,
    pub policies: Vec<String>,
    pub cluster: ClusterInfo,
    /// Worker threads and wall-clock time of the whole sweep (the only figures that differ
    /// between two runs with the same seed).
    pub threads: usize,
    pub wall_time_s: f64,
}

/// A whole report: what was run and one record per workload, policy and rate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub schema: String,
    pub meta: Meta,
    pub workloads: Vec<WorkloadInfo>,
    pub records: Vec<Record>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot encode the report as JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("cannot draw {path}: {reason}")]
    Plot { path: PathBuf, reason: String },
}

impl Report {
    /// Records of one workload, in sweep order.
    pub fn records_of<'a>(&'a self, workload: &'a str) -> impl Iterator<Item = &'a Record> + 'a {
        self.records.iter().filter(move |r| r.workload == workload)
    }

    pub fn to_json(&self) -> Result<String, ReportError> {
        Ok(serde_json::to_string_pretty(self)?)
    }

    /// Writes the JSON report to `path` (parent directories created).
    pub fn write_json(&self, path: &Path) -> Result<(), ReportError> {
        write_file(path, self.to_json()?.as_bytes())
    }
}

/// Writes `bytes` to `path`, creating parent directories.
pub(crate) fn write_file(path: &Path, bytes: &[u8]) -> Result<(), ReportError> {
    let wrap = |source| ReportError::Write {
        path: path.to_owned(),
        source,
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(wrap)?;
    }
    let mut file = std::fs::File::create(path).map_err(wrap)?;
    file.write_all(bytes).map_err(wrap)?;
    file.flush().map_err(wrap)
}

#[cfg(test)]
pub(crate) mod tests;

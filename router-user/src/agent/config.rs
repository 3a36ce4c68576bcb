//! `switchyard agent` settings: flags, environment variables and a YAML config file.
//!
//! Precedence: a flag, then its environment variable (clap reads both), then the config file
//! (`--config agent.yaml`), then the default. The file's keys are the flags' long names, e.g.
//!
//! ```yaml
//! node-name: gpu-node-7
//! endpoints: [127.0.0.1:8001, 127.0.0.1:8002]
//! epp: switchyard-epp.default.svc:9002
//! pool: ["10.96.0.10:8000=127.0.0.1:8001,127.0.0.1:8002"]
//! scrape-interval: 50ms
//! metrics-port: 9091
//! ```
//!
//! A key that is not a flag is an error naming it; a value that does not parse is an error
//! naming the key and the problem, exactly as the flag would report it.
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use clap::{CommandFactory, ValueEnum};

use super::endpoints::{GpuMapping, LabelSelector, PortRef};
use super::pools::StaticPool;
use super::tls::TlsArgs;
use crate::dataplane::DEFAULT_PIN_ROOT;
use crate::telemetry::EngineKind;
use crate::telemetry::gpu_source::TelemetryMode;
use crate::telemetry::scrape::ScrapeTarget;

/// `--engine auto|vllm|sglang|trtllm|triton` (auto: detected from each metrics page).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EngineSetting(pub Option<EngineKind>);

impl FromStr for EngineSetting {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.trim().eq_ignore_ascii_case("auto") || text.trim().is_empty() {
            Ok(Self(None))
        } else {
            text.trim().parse().map(|kind| Self(Some(kind)))
        }
    }
}

/// The flags of `switchyard agent` (running). Defaults are applied after the config file, so
/// none is set here; the help text names them.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct RunArgs {
    /// YAML config file whose keys are these flags' names; flags and environment override it.
    #[arg(long, env = "SWITCHYARD_AGENT_CONFIG")]
    pub config: Option<PathBuf>,
    /// This node's name (Kubernetes: `$(NODE_NAME)`); with no --endpoints, the agent watches
    /// this node's pods for model servers. Default: the host name.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// Static model servers, `IP:PORT[/PATH][@ENGINE]`, comma-separated or repeated.
    #[arg(long, value_delimiter = ',', env = "SWITCHYARD_ENDPOINTS")]
    pub endpoints: Vec<ScrapeTarget>,
    /// Model-server engine: auto (detected), vllm, sglang, trtllm or triton.
    #[arg(long, env = "SWITCHYARD_ENGINE")]
    pub engine: Option<EngineSetting>,
    /// Kubernetes: labels a pod must carry to be a model server (`key=value,...`). Default:
    /// every pod of the node with a matching port.
    #[arg(long, env = "SWITCHYARD_ENDPOINT_SELECTOR")]
    pub endpoint_selector: Option<LabelSelector>,
    /// Kubernetes: the model-server container port, by number or name (repeatable). Default 8000.
    #[arg(
        long = "endpoint-port",
        value_delimiter = ',',
        env = "SWITCHYARD_ENDPOINT_PORTS"
    )]
    pub endpoint_ports: Vec<PortRef>,
    /// The EPP's node-report address, host:port (its gRPC port, 9002).
    #[arg(long, env = "SWITCHYARD_EPP")]
    pub epp: Option<String>,
    /// Program only the --pool pools, not the pools the EPP knows a VIP for.
    #[arg(long)]
    pub no_epp_pools: bool,
    /// A pool to steer: `VIP=ADDR[,ADDR...]` (repeatable).
    #[arg(long = "pool")]
    pub pools: Vec<StaticPool>,
    /// GPU readings: auto (NVML, else the simulated view with --sim-endpoint, else none),
    /// nvml, sim or off. Default auto.
    #[arg(long, value_enum, env = "SWITCHYARD_TELEMETRY")]
    pub telemetry: Option<TelemetryMode>,
    /// A simulated server whose `/sim/gpu` is read (repeatable; with --telemetry sim the
    /// endpoints by default).
    #[arg(long = "sim-endpoint")]
    pub sim_endpoints: Vec<SocketAddr>,
    /// Time allowed for one `/sim/gpu` request. Default 200ms.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub sim_timeout: Option<Duration>,
    /// NVML library to load (repeatable; default libnvidia-ml.so.1, then libnvidia-ml.so).
    #[arg(long = "nvml-library")]
    pub nvml_libraries: Vec<PathBuf>,
    /// Static endpoints with NVML: `ADDR=INDEX[,INDEX...]`, the GPUs an endpoint runs on.
    #[arg(long = "gpu-map")]
    pub gpu_map: Vec<GpuMapping>,
    /// The host's /proc (GPU process → pod). Default /proc (the chart runs with hostPID).
    #[arg(long, env = "SWITCHYARD_PROC_ROOT")]
    pub proc_root: Option<PathBuf>,
    /// cgroup v2 whose connects are steered (attaches the dataplane). Without it the agent
    /// adopts what is pinned under --pin-root, or runs without steering.
    #[arg(long, env = "SWITCHYARD_CGROUP")]
    pub cgroup: Option<PathBuf>,
    /// bpffs directory of the dataplane's pins. Default /sys/fs/bpf/switchyard.
    #[arg(long, env = "SWITCHYARD_PIN_ROOT")]
    pub pin_root: Option<PathBuf>,
    /// Time between two scrapes of one model server. Default 50ms.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub scrape_interval: Option<Duration>,
    /// Budget of one scrape, at most the interval. Default 40ms.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub scrape_timeout: Option<Duration>,
    /// Always fetch whole metrics pages (no `?name[]=` filtering).
    #[arg(long)]
    pub no_server_side_filter: bool,
    /// Time between two node reports to the EPP. Default 50ms (20 a second).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub report_interval: Option<Duration>,
    /// Time between two GPU readings. Default 100ms.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub gpu_interval: Option<Duration>,
    /// A model server failing at the transport level this long is drained. Default 300ms.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub unreachable_after: Option<Duration>,
    /// A load sample older than this is unknown (never idle). Default 500ms.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub load_stale_after: Option<Duration>,
    /// Cluster weights are trusted fully for this long after they arrive. Default 3s.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub cluster_fresh_for: Option<Duration>,
    /// Then their trust halves every this long, toward local scores. Default 10s.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub cluster_half_life: Option<Duration>,
    /// Port of /metrics, /healthz, /readyz, /debug/state (0: any free port). Default 9091.
    #[arg(long, env = "SWITCHYARD_METRICS_PORT")]
    pub metrics_port: Option<u16>,
    /// Address the metrics port listens on. Default 0.0.0.0.
    #[arg(long)]
    pub metrics_address: Option<IpAddr>,
    #[command(flatten)]
    pub tls: TlsArgs,
    /// Name the EPP's certificate must carry (default: the host of --epp).
    #[arg(long)]
    pub tls_server_name: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {reason}")]
    Yaml { path: PathBuf, reason: String },
    #[error("config file {path}: unknown key `{key}` (keys are the flag names: {known})")]
    UnknownKey {
        path: PathBuf,
        key: String,
        known: String,
    },
    #[error("config file {path}: `{key}`: {reason}")]
    Value {
        path: PathBuf,
        key: String,
        reason: String,
    },
}

/// Every setting, resolved.
#[derive(Clone, Debug)]
pub struct AgentSettings {
    pub node_name: Option<String>,
    pub endpoints: Vec<ScrapeTarget>,
    pub engine: Option<EngineKind>,
    pub endpoint_selector: LabelSelector,
    pub endpoint_ports: Vec<PortRef>,
    pub epp: Option<String>,
    pub epp_pools: bool,
    pub pools: Vec<StaticPool>,
    pub telemetry: TelemetryMode,
    pub sim_endpoints: Vec<SocketAddr>,
    pub sim_timeout: Duration,
    pub nvml_libraries: Vec<PathBuf>,
    pub gpu_map: Vec<GpuMapping>,
    pub proc_root: PathBuf,
    pub cgroup: Option<PathBuf>,
    pub pin_root: PathBuf,
    pub scrape_interval: Duration,
    pub scrape_timeout: Duration,
    pub server_side_filter: bool,
    pub report_interval: Duration,
    pub gpu_interval: Duration,
    pub unreachable_after: Duration,
    pub load_stale_after: Duration,
    pub cluster_fresh_for: Duration,
    pub cluster_half_life: Duration,
    pub metrics: SocketAddr,
    pub tls: TlsArgs,
    pub tls_server_name: Option<String>,
}

/// The config file: flag name → value.
struct FileConfig {
    path: PathBuf,
    values: BTreeMap<String, serde_yaml::Value>,
}

impl FileConfig {
    fn empty() -> Self {
        Self {
            path: PathBuf::new(),
            values: BTreeMap::new(),
        }
    }

    fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &text)
    }

    fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let values: BTreeMap<String, serde_yaml::Value> = if text.trim().is_empty() {
            BTreeMap::new()
        } else {
            serde_yaml::from_str(text).map_err(|err| ConfigError::Yaml {
                path: path.to_path_buf(),
                reason: err.to_string(),
            })?
        };
        let known = file_keys();
        if let Some(key) = values.keys().find(|key| !known.contains(key)) {
            return Err(ConfigError::UnknownKey {
                path: path.to_path_buf(),
                key: key.clone(),
                known: known.join(", "),
            });
        }
        Ok(Self {
            path: path.to_path_buf(),
            values,
        })
    }

    fn error(&self, key: &str, reason: impl Into<String>) -> ConfigError {
        ConfigError::Value {
            path: self.path.clone(),
            key: key.to_owned(),
            reason: reason.into(),
        }
    }

    /// The scalar at `key` as text.
    fn text(&self, key: &str, value: &serde_yaml::Value) -> Result<String, ConfigError> {
        match value {
            serde_yaml::Value::String(text) => Ok(text.clone()),
            serde_yaml::Value::Number(number) => Ok(number.to_string()),
            serde_yaml::Value::Bool(flag) => Ok(flag.to_string()),
            _ => Err(self.error(key, "expected a single value")),
        }
    }

    fn one<T>(
        &self,
        key: &str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<Option<T>, ConfigError> {
        let Some(value) = self.values.get(key) else {
            return Ok(None);
        };
        let text = self.text(key, value)?;
        parse(&text)
            .map(Some)
            .map_err(|reason| self.error(key, reason))
    }

    fn many<T>(
        &self,
        key: &str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<Vec<T>, ConfigError> {
        let Some(value) = self.values.get(key) else {
            return Ok(Vec::new());
        };
        let items: Vec<&serde_yaml::Value> = match value {
            serde_yaml::Value::Sequence(items) => items.iter().collect(),
            single => vec![single],
        };
        items
            .into_iter()
            .enumerate()
            .map(|(index, item)| {
                let text = self.text(key, item)?;
                parse(&text).map_err(|reason| self.error(&format!("{key}[{index}]"), reason))
            })
            .collect()
    }

    fn flag(&self, key: &str) -> Result<bool, ConfigError> {
        Ok(self
            .one(key, |text| {
                text.parse::<bool>()
                    .map_err(|_| format!("`{text}` is not true or false"))
            })?
            .unwrap_or(false))
    }
}

/// The keys a config file may use: every long flag but `config`.
fn file_keys() -> Vec<String> {
    #[derive(clap::Parser)]
    struct Probe {
        #[command(flatten)]
        run: RunArgs,
    }
    Probe::command()
        .get_arguments()
        .filter_map(|arg| arg.get_long())
        .filter(|long| *long != "config")
        .map(str::to_owned)
        .collect()
}

fn from_str<T: FromStr>(text: &str) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    text.parse::<T>().map_err(|err| err.to_string())
}

fn duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|err| format!("`{text}`: {err}"))
}

const fn ms(millis: u64) -> Duration {
    Duration::from_millis(millis)
}

const fn secs(seconds: u64) -> Duration {
    Duration::from_secs(seconds)
}

fn pick<T>(flag: Option<T>, file: Option<T>, default: T) -> T {
    flag.or(file).unwrap_or(default)
}

fn pick_list<T>(flag: Vec<T>, file: Vec<T>) -> Vec<T> {
    if flag.is_empty() { file } else { flag }
}

impl RunArgs {
    /// Resolves flags (and environment) over the config file over the defaults.
    pub fn resolve(&self) -> Result<AgentSettings, ConfigError> {
        let file = match &self.config {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::empty(),
        };
        self.resolve_with(&file)
    }

    fn resolve_with(&self, file: &FileConfig) -> Result<AgentSettings, ConfigError> {
        let a = self.clone();
        let telemetry = file.one("telemetry", |text| TelemetryMode::from_str(text, true))?;
        // A duration: the flag, else the file's value, else the default.
        let dur = |flag: Option<Duration>, key: &str, default: Duration| {
            Ok::<_, ConfigError>(pick(flag, file.one(key, duration)?, default))
        };
        Ok(AgentSettings {
            node_name: a.node_name.or(file.one("node-name", |t| Ok(t.to_owned()))?),
            endpoints: pick_list(a.endpoints, file.many("endpoints", from_str)?),
            engine: pick(a.engine, file.one("engine", from_str)?, EngineSetting(None)).0,
            endpoint_selector: pick(
                a.endpoint_selector,
                file.one("endpoint-selector", from_str)?,
                LabelSelector::default(),
            ),
            endpoint_ports: {
                let ports = pick_list(a.endpoint_ports, file.many("endpoint-port", from_str)?);
                if ports.is_empty() {
                    vec![PortRef::Number(8000)]
                } else {
                    ports
                }
            },
            epp: a.epp.or(file.one("epp", |t| Ok(t.to_owned()))?),
            epp_pools: !(a.no_epp_pools || file.flag("no-epp-pools")?),
            pools: pick_list(a.pools, file.many("pool", from_str)?),
            telemetry: pick(a.telemetry, telemetry, TelemetryMode::Auto),
            sim_endpoints: pick_list(a.sim_endpoints, file.many("sim-endpoint", from_str)?),
            sim_timeout: dur(a.sim_timeout, "sim-timeout", ms(200))?,
            nvml_libraries: pick_list(a.nvml_libraries, file.many("nvml-library", from_str)?),
            gpu_map: pick_list(a.gpu_map, file.many("gpu-map", from_str)?),
            proc_root: pick(
                a.proc_root,
                file.one("proc-root", from_str)?,
                PathBuf::from("/proc"),
            ),
            cgroup: a.cgroup.or(file.one("cgroup", from_str)?),
            pin_root: pick(
                a.pin_root,
                file.one("pin-root", from_str)?,
                PathBuf::from(DEFAULT_PIN_ROOT),
            ),
            scrape_interval: dur(a.scrape_interval, "scrape-interval", ms(50))?,
            scrape_timeout: dur(a.scrape_timeout, "scrape-timeout", ms(40))?,
            server_side_filter: !(a.no_server_side_filter || file.flag("no-server-side-filter")?),
            report_interval: dur(a.report_interval, "report-interval", ms(50))?,
            gpu_interval: dur(a.gpu_interval, "gpu-interval", ms(100))?,
            unreachable_after: dur(a.unreachable_after, "unreachable-after", ms(300))?,
            load_stale_after: dur(a.load_stale_after, "load-stale-after", ms(500))?,
            cluster_fresh_for: dur(a.cluster_fresh_for, "cluster-fresh-for", secs(3))?,
            cluster_half_life: dur(a.cluster_half_life, "cluster-half-life", secs(10))?,
            metrics: SocketAddr::new(
                pick(
                    a.metrics_address,
                    file.one("metrics-address", from_str)?,
                    IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                ),
                pick(a.metrics_port, file.one("metrics-port", from_str)?, 9091),
            ),
            tls: TlsArgs {
                tls_cert: a.tls.tls_cert.or(file.one("tls-cert", from_str)?),
                tls_key: a.tls.tls_key.or(file.one("tls-key", from_str)?),
                tls_ca: a.tls.tls_ca.or(file.one("tls-ca", from_str)?),
            },
            tls_server_name: a
                .tls_server_name
                .or(file.one("tls-server-name", |t| Ok(t.to_owned()))?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        run: RunArgs,
    }

    fn file(text: &str) -> Result<FileConfig, ConfigError> {
        FileConfig::parse(Path::new("agent.yaml"), text)
    }

    #[test]
    fn defaults_apply_when_nothing_is_given() {
        let settings = RunArgs::default().resolve().unwrap();
        assert_eq!(settings.scrape_interval, Duration::from_millis(50));
        assert_eq!(settings.metrics, "0.0.0.0:9091".parse().unwrap());
        assert_eq!(settings.endpoint_ports, [PortRef::Number(8000)]);
        assert_eq!(settings.telemetry, TelemetryMode::Auto);
        assert!(settings.epp_pools && settings.server_side_filter);
        assert_eq!(settings.pin_root, PathBuf::from(DEFAULT_PIN_ROOT));
    }

    #[test]
    fn the_file_fills_in_and_flags_override_it() {
        let config = file(
            "node-name: n7\nendpoints: [127.0.0.1:8001, 127.0.0.1:8002@sglang]\nmetrics-port: 9999\n\
             scrape-interval: 100ms\nscrape-timeout: 80ms\ntelemetry: sim\npool: 10.96.0.1:80=127.0.0.1:8001\n\
             no-epp-pools: true\nendpoint-port: [8000, http]\nengine: vllm\n",
        )
        .unwrap();
        let flags = Cli::parse_from([
            "x",
            "--metrics-port",
            "1234",
            "--endpoints",
            "127.0.0.1:9000",
        ])
        .run;
        let settings = flags.resolve_with(&config).unwrap();
        assert_eq!(settings.node_name.as_deref(), Some("n7"));
        assert_eq!(settings.metrics.port(), 1234, "the flag wins");
        assert_eq!(
            settings.endpoints.len(),
            1,
            "a list flag replaces the file's list"
        );
        assert_eq!(settings.scrape_interval, Duration::from_millis(100));
        assert_eq!(settings.telemetry, TelemetryMode::Sim);
        assert_eq!(settings.pools.len(), 1);
        assert!(!settings.epp_pools);
        assert_eq!(
            settings.endpoint_ports,
            [PortRef::Number(8000), PortRef::Name("http".into())]
        );
        assert_eq!(settings.engine, Some(EngineKind::Vllm));
    }

    #[test]
    fn bad_files_name_the_key() {
        let err = file("scrape-intervall: 50ms\n").err().unwrap().to_string();
        assert!(
            err.contains("unknown key `scrape-intervall`") && err.contains("scrape-interval"),
            "{err}"
        );
        let config = file("scrape-interval: soon\n").unwrap();
        let err = RunArgs::default()
            .resolve_with(&config)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`scrape-interval`") && err.contains("soon"),
            "{err}"
        );
        let config = file("pool: [\"10.96.0.1:80=x\"]\n").unwrap();
        let err = RunArgs::default()
            .resolve_with(&config)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("pool[0]") && err.contains("backend `x`"),
            "{err}"
        );
        let config = file("endpoints: {a: 1}\n").unwrap();
        assert!(RunArgs::default().resolve_with(&config).is_err());
        assert!(file("- a\n").is_err());
        let err = RunArgs {
            config: Some("/nonexistent/agent.yaml".into()),
            ..RunArgs::default()
        }
        .resolve()
        .unwrap_err()
        .to_string();
        assert!(err.contains("/nonexistent/agent.yaml"), "{err}");
    }

    #[test]
    fn engine_setting_accepts_auto() {
        assert_eq!(
            "auto".parse::<EngineSetting>().unwrap(),
            EngineSetting(None)
        );
        assert_eq!(
            "SGLang".parse::<EngineSetting>().unwrap(),
            EngineSetting(Some(EngineKind::Sglang))
        );
        assert!("tgi".parse::<EngineSetting>().is_err());
    }
}

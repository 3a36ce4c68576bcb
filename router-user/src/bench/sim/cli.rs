//! `switchyard bench sim`: flags, the sweep on worker threads, and the report files.
use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::Context;
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};

use super::{
    Policy, RateGrid, RunLength, SimConfig, SweepPlan, run_sweep,
    sweep::{CALIBRATION_POLICY, DEFAULT_LOAD_FRACTIONS},
};
use crate::{
    bench::{
        report::{ClusterInfo, Meta, Report, SCHEMA, markdown_report, plot_workload, write_file},
        workload::{TraceParams, WorkloadKind, WorkloadSpec},
    },
    clock::Micros,
    scheduling::BUILTIN_PROFILES,
    sim::Profile,
};

/// `--workload` values: a built-in workload or all of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum WorkloadChoice {
    All,
    SharedPrefix,
    Conversations,
    MultiTurn,
    MultiLora,
    Bursts,
    Heterogeneous,
}

impl WorkloadChoice {
    fn kinds(self) -> Vec<WorkloadKind> {
        match self {
            Self::All => WorkloadKind::ALL.to_vec(),
            Self::SharedPrefix => vec![WorkloadKind::SharedPrefix],
            Self::Conversations => vec![WorkloadKind::Conversations],
            Self::MultiTurn => vec![WorkloadKind::MultiTurn],
            Self::MultiLora => vec![WorkloadKind::MultiLora],
            Self::Bursts => vec![WorkloadKind::Bursts],
            Self::Heterogeneous => vec![WorkloadKind::Heterogeneous],
        }
    }
}

fn parse_interval(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|err| format!("`{text}`: {err} (e.g. 50ms, 1s)"))
}

#[derive(Debug, Args)]
pub struct SimBenchArgs {
    /// Workloads to run (comma-separated or repeated); `all` runs the six built-ins.
    #[arg(
        long = "workload",
        short = 'w',
        value_enum,
        value_delimiter = ',',
        default_value = "shared-prefix",
        conflicts_with = "trace"
    )]
    pub workloads: Vec<WorkloadChoice>,
    /// Replay a CSV trace (`arrival_s,input_tokens,output_tokens[,prefix_group]`) instead of a
    /// generator; arrivals are rescaled to each swept rate.
    #[arg(long)]
    pub trace: Option<PathBuf>,
    /// Leading tokens shared by trace requests of one prefix group.
    #[arg(long, default_value_t = 2_048)]
    pub trace_prefix_tokens: u32,
    /// Built-in policies to compare (comma-separated); default: all seven.
    #[arg(long, value_delimiter = ',')]
    pub policies: Vec<String>,
    /// A custom scheduler profile (GIE EndpointPickerConfig YAML) to compare as well; repeatable.
    #[arg(long = "config")]
    pub configs: Vec<PathBuf>,
    /// Simulated model servers (1-64).
    #[arg(long, default_value_t = 8)]
    pub servers: usize,
    /// Request rates to run (requests per second, comma-separated); default: calibrated from
    /// each workload's estimated capacity with --load-fractions.
    #[arg(long, value_delimiter = ',')]
    pub rates: Vec<f64>,
    /// Fractions of the estimated capacity to run when --rates is not given.
    #[arg(long, value_delimiter = ',', default_values_t = DEFAULT_LOAD_FRACTIONS)]
    pub load_fractions: Vec<f64>,
    /// Virtual time of arrivals per run: a run at R req/s sends R × duration requests (at
    /// least --min-requests).
    #[arg(long, default_value = "60s", value_parser = parse_interval)]
    pub duration: Duration,
    /// Fewest requests per run when --duration sets the length.
    #[arg(long, default_value_t = 2_000)]
    pub min_requests: usize,
    /// Share of each run's first arrivals that warm the caches and are not measured.
    #[arg(long, default_value_t = 0.1)]
    pub warmup: f64,
    /// Send this many requests per run instead, whatever the rate (a trace: at most this many
    /// of its rows).
    #[arg(long)]
    pub requests: Option<usize>,
    /// Seeds the workload, the arrivals and the schedulers: same seed, same numbers.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// How often each server's load sample reaches the router.
    #[arg(long, default_value = "50ms", value_parser = parse_interval)]
    pub load_interval: Duration,
    /// How often each server's GPU sample reaches the router.
    #[arg(long, default_value = "50ms", value_parser = parse_interval)]
    pub gpu_interval: Duration,
    /// Share of requests marked sheddable (dropped with 429 when every server is saturated).
    #[arg(long, default_value_t = 0.0)]
    pub sheddable_share: f64,
    /// Engine profile of every server (YAML/JSON, see `switchyard sim --profile`).
    #[arg(long)]
    pub profile: Option<PathBuf>,
    /// Directory for report.md, results.json and the plots.
    #[arg(long, default_value = "bench-results")]
    pub out: PathBuf,
    /// Also write the JSON report here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Worker threads (default: the machine's cores).
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Skip the PNG/SVG plots.
    #[arg(long)]
    pub no_plots: bool,
    #[command(flatten)]
    pub shape: WorkloadFlags,
}

/// Overrides of the built-in workloads' parameters.
#[derive(Debug, Args)]
#[command(next_help_heading = "Workload parameters")]
pub struct WorkloadFlags {
    /// shared-prefix: system prompts (groups).
    #[arg(long)]
    pub groups: Option<u32>,
    /// shared-prefix: distinct questions per group.
    #[arg(long)]
    pub prompts_per_group: Option<u32>,
    /// shared-prefix and multi-turn: system prompt tokens.
    #[arg(long)]
    pub system_tokens: Option<u32>,
    /// shared-prefix: question tokens.
    #[arg(long)]
    pub question_tokens: Option<u32>,
    /// shared-prefix: output tokens per request.
    #[arg(long)]
    pub output_tokens: Option<u32>,
    /// multi-turn: turns per conversation.
    #[arg(long)]
    pub turns: Option<u32>,
    /// multi-turn: mean think time between an answer and the next turn, seconds.
    #[arg(long)]
    pub think_time: Option<f64>,
    /// multi-lora: adapters.
    #[arg(long)]
    pub adapters: Option<u32>,
    /// multi-lora: Zipf exponent of adapter popularity.
    #[arg(long)]
    pub zipf: Option<f64>,
    /// multi-lora: adapter slots per server.
    #[arg(long)]
    pub max_loras: Option<u32>,
    /// bursts: seconds with arrivals per cycle.
    #[arg(long)]
    pub burst_on: Option<f64>,
    /// bursts: seconds without arrivals per cycle.
    #[arg(long)]
    pub burst_off: Option<f64>,
    /// heterogeneous: slow servers.
    #[arg(long)]
    pub slow_servers: Option<u32>,
    /// heterogeneous: how many times slower they are.
    #[arg(long)]
    pub slowdown: Option<f64>,
}

impl WorkloadFlags {
    fn apply(&self, spec: &mut WorkloadSpec) {
        fn set<T: Copy>(target: &mut T, value: Option<T>) {
            if let Some(value) = value {
                *target = value;
            }
        }
        match spec {
            WorkloadSpec::SharedPrefix(p) => {
                set(&mut p.groups, self.groups);
                set(&mut p.prompts_per_group, self.prompts_per_group);
                set(&mut p.system_tokens, self.system_tokens);
                set(&mut p.question_tokens, self.question_tokens);
                set(&mut p.output_tokens, self.output_tokens);
            }
            WorkloadSpec::MultiTurn(p) => {
                set(&mut p.turns, self.turns);
                set(&mut p.system_tokens, self.system_tokens);
                set(&mut p.think_time_s, self.think_time);
            }
            WorkloadSpec::MultiLora(p) => {
                set(&mut p.adapters, self.adapters);
                set(&mut p.zipf_exponent, self.zipf);
                set(&mut p.max_loras, self.max_loras);
            }
            WorkloadSpec::Bursts(p) => {
                set(&mut p.on_s, self.burst_on);
                set(&mut p.off_s, self.burst_off);
            }
            WorkloadSpec::Heterogeneous(p) => {
                set(&mut p.slow_servers, self.slow_servers);
                set(&mut p.slowdown, self.slowdown);
            }
            WorkloadSpec::Conversations(_) | WorkloadSpec::Trace(_) => {}
        }
    }
}

fn micros(duration: Duration) -> Micros {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

fn policies(args: &SimBenchArgs) -> anyhow::Result<Vec<Policy>> {
    let names: Vec<String> = if args.policies.is_empty() {
        BUILTIN_PROFILES
            .iter()
            .map(|name| (*name).to_owned())
            .collect()
    } else {
        args.policies.clone()
    };
    let mut policies = names
        .iter()
        .map(|name| Policy::builtin(name.trim()))
        .collect::<Result<Vec<_>, _>>()?;
    for path in &args.configs {
        let mut policy = Policy::from_file(path)?;
        if policies.iter().any(|p| p.name() == policy.name()) {
            let renamed = format!("{} ({})", policy.name(), path.display());
            policy = policy.with_name(renamed);
        }
        policies.push(policy);
    }
    Ok(policies)
}

fn specs(args: &SimBenchArgs) -> Vec<WorkloadSpec> {
    if let Some(path) = &args.trace {
        return vec![WorkloadSpec::Trace(TraceParams {
            path: path.clone(),
            prefix_tokens: args.trace_prefix_tokens,
        })];
    }
    let mut kinds: Vec<WorkloadKind> = Vec::new();
    for choice in &args.workloads {
        for kind in choice.kinds() {
            if !kinds.contains(&kind) {
                kinds.push(kind);
            }
        }
    }
    kinds
        .into_iter()
        .map(|kind| {
            let mut spec = WorkloadSpec::default_for(kind);
            args.shape.apply(&mut spec);
            spec
        })
        .collect()
}

pub async fn run(args: SimBenchArgs) -> anyhow::Result<()> {
    let profile = match &args.profile {
        Some(path) => Profile::load(path)?,
        None => Profile::default(),
    };
    let config = SimConfig {
        servers: args.servers,
        load_interval: micros(args.load_interval),
        gpu_interval: micros(args.gpu_interval),
        sheddable_share: args.sheddable_share,
        warmup: args.warmup,
        seed: args.seed,
        profile,
    };
    config.validate()?;
    let policies = policies(&args)?;
    let workloads = specs(&args);
    for spec in &workloads {
        // Catch bad parameters before any run starts.
        spec.generate(1, args.seed)
            .with_context(|| format!("workload {}", spec.name()))?;
    }
    let length = match args.requests {
        Some(count) if count > 0 => RunLength::Requests(count),
        Some(_) => anyhow::bail!("--requests must be at least 1"),
        None if args.duration.is_zero() => anyhow::bail!("--duration must be positive"),
        None => RunLength::Duration {
            duration: micros(args.duration),
            min_requests: args.min_requests,
        },
    };
    let rates = if args.rates.is_empty() {
        RateGrid::Calibrated {
            fractions: args.load_fractions.clone(),
        }
    } else {
        RateGrid::Fixed(args.rates.clone())
    };
    let threads = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let plan = SweepPlan {
        workloads,
        policies,
        rates,
        length,
        config,
        threads,
    };
    let progress = ProgressBar::new(0);
    progress.set_style(
        ProgressStyle::with_template(
            "{spinner} {msg} [{elapsed_precise}] {wide_bar} {pos}/{len} runs (eta {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    progress.enable_steady_tick(Duration::from_millis(200));
    let started = Instant::now();
    let (plan, output) = {
        let progress = progress.clone();
        tokio::task::spawn_blocking(move || {
            let output = run_sweep(&plan, &progress);
            (plan, output)
        })
        .await?
    };
    progress.finish_and_clear();
    let output = output?;
    let wall_time_s = started.elapsed().as_secs_f64();
    let report = Report {
        schema: SCHEMA.to_owned(),
        meta: Meta {
            mode: "simulation".to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            command: std::env::args().collect::<Vec<_>>().join(" "),
            seed: plan.config.seed,
            policies: plan.policies.iter().map(|p| p.name().to_owned()).collect(),
            cluster: ClusterInfo {
                servers: plan.config.servers,
                engine: plan.config.profile.name.clone(),
                load_interval_ms: Some(plan.config.load_interval as f64 / 1_000.0),
                gpu_interval_ms: Some(plan.config.gpu_interval as f64 / 1_000.0),
                sheddable_share: plan.config.sheddable_share,
                warmup_share: plan.config.warmup,
            },
            threads: plan.threads,
            wall_time_s,
        },
        workloads: output.workloads,
        records: output.records,
    };
    write_outputs(&report, &args.out, args.json.as_deref(), !args.no_plots)?;
    println!(
        "{} runs in {wall_time_s:.1} s on {} threads (rates calibrated with `{CALIBRATION_POLICY}` \
         unless --rates was given)",
        report.records.len(),
        plan.threads
    );
    for workload in &report.workloads {
        println!(
            "\n{} — p90 TTFT (ms)\n{}",
            workload.name,
            crate::bench::report::ttft_p90_table(&report, workload)
        );
    }
    println!("report: {}", args.out.join("report.md").display());
    Ok(())
}

/// results.json, the plots, report.md (linking the plots), and the extra JSON copy.
pub fn write_outputs(
    report: &Report,
    out: &Path,
    json: Option<&Path>,
    plots: bool,
) -> anyhow::Result<()> {
    report.write_json(&out.join("results.json"))?;
    if let Some(path) = json {
        report.write_json(path)?;
    }
    let mut images = std::collections::HashMap::new();
    if plots {
        for workload in &report.workloads {
            let files = plot_workload(report, workload, out)?;
            images.insert(workload.name.clone(), files.png_name);
        }
    }
    let text = markdown_report(report, &|name| images.get(name).cloned());
    write_file(&out.join("report.md"), text.as_bytes())?;
    Ok(())
}

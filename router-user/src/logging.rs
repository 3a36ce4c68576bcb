//! Process-wide `tracing` set-up shared by every subcommand.
use clap::{Args, ValueEnum};
use tracing_subscriber::{EnvFilter, fmt};

#[derive(Clone, Copy, Debug, Default, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log pipelines.
    Json,
}

#[derive(Clone, Debug, Args)]
pub struct LogArgs {
    /// Log filter (tracing's EnvFilter syntax), e.g. `info` or `switchyard=debug`.
    #[arg(long, global = true, env = "SWITCHYARD_LOG", default_value = "info")]
    pub log: String,
    /// Log line format.
    #[arg(
        long,
        global = true,
        env = "SWITCHYARD_LOG_FORMAT",
        value_enum,
        default_value_t
    )]
    pub log_format: LogFormat,
}

/// Installs the global subscriber; logs go to stderr so stdout stays for command output.
/// A bad filter falls back to `info` with a warning rather than failing the command.
pub fn init(args: &LogArgs) {
    let (filter, bad_filter) = match EnvFilter::try_new(&args.log) {
        Ok(filter) => (filter, None),
        Err(err) => (EnvFilter::new("info"), Some(err)),
    };
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match args.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    if let Some(err) = bad_filter {
        tracing::warn!(filter = %args.log, error = %err, "invalid --log filter, using `info`");
    }
}

//! `switchyard sim ...`: run a simulated vLLM / SGLang server, or print its calibration.
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use tokio_util::sync::CancellationToken;

use super::calibrate;
use super::profile::Profile;
use super::server::{LoraModule, ServerConfig, SimServer};
use crate::telemetry::EngineKind;

/// How long open connections may take to finish after Ctrl-C.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, Args)]
pub struct SimArgs {
    /// Address to listen on (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:8001")]
    pub listen: String,
    /// Which server to imitate (API surface and metric names): vllm or sglang.
    #[arg(long, default_value = "vllm", value_parser = parse_engine)]
    pub engine: EngineKind,
    /// Served model name.
    #[arg(long, default_value = "meta-llama/Llama-3.1-8B-Instruct")]
    pub model: String,
    /// LoRA adapters to serve, as NAME or NAME=PATH (requested through the `model` field).
    #[arg(long, num_args = 1.., value_name = "NAME[=PATH]")]
    pub lora_modules: Vec<LoraModule>,
    /// LoRA adapters that fit in one batch (GPU slots).
    #[arg(long, default_value_t = 1)]
    pub max_loras: u32,
    /// Hardware/model profile (YAML or JSON); fields it omits keep the H100 + 8B defaults.
    #[arg(long, value_name = "FILE")]
    pub profile: Option<PathBuf>,
    /// Run virtual time this many times faster than the wall clock (tests).
    #[arg(long, default_value_t = 1.0)]
    pub speed: f64,
    /// Seed of output lengths, output text and fault rolls.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Context window in tokens (default: the profile's, 131072).
    #[arg(long)]
    pub max_model_len: Option<u32>,
    /// Most sequences in one batch (default: the profile's, 256).
    #[arg(long)]
    pub max_num_seqs: Option<u32>,
    /// Token budget of one step (default: the profile's, 8192).
    #[arg(long)]
    pub max_num_batched_tokens: Option<u32>,
    /// Make this server's GPU X times slower (e.g. 1.5 for one slow GPU in a demo).
    #[arg(long, default_value_t = 1.0, value_name = "X")]
    pub slow_gpu: f64,
    /// NVML index of the simulated GPU.
    #[arg(long, default_value_t = 0)]
    pub gpu_index: u32,
    /// NVML UUID of the simulated GPU (default: derived from the seed and index).
    #[arg(long)]
    pub gpu_uuid: Option<String>,
    /// Print how the profile compares with published H100 figures, then exit.
    #[arg(long)]
    pub calibrate: bool,
}

fn parse_engine(value: &str) -> Result<EngineKind, String> {
    match value.parse::<EngineKind>()? {
        kind @ (EngineKind::Vllm | EngineKind::Sglang) => Ok(kind),
        other => Err(format!(
            "`{other}` is not simulated (expected vllm or sglang)"
        )),
    }
}

fn profile(args: &SimArgs) -> anyhow::Result<Profile> {
    let mut profile = match &args.profile {
        Some(path) => Profile::load(path)?,
        None => Profile::default(),
    };
    if let Some(seqs) = args.max_num_seqs {
        profile.max_num_seqs = seqs;
    }
    if let Some(tokens) = args.max_num_batched_tokens {
        profile.max_num_batched_tokens = tokens;
    }
    profile.validate()?;
    Ok(profile)
}

fn print_calibration(profile: &Profile) {
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED);
    table.set_header(vec!["quantity", "simulated", "unit", "published", "source"]);
    for row in calibrate::report(profile) {
        table.add_row(vec![
            row.quantity.to_owned(),
            format!("{:.1}", row.simulated),
            row.unit.to_owned(),
            row.published.to_owned(),
            row.source.to_owned(),
        ]);
    }
    println!("profile `{}`", profile.name);
    println!("{table}");
}

pub async fn run(args: SimArgs) -> anyhow::Result<()> {
    let profile = profile(&args)?;
    if args.calibrate {
        print_calibration(&profile);
        return Ok(());
    }
    let config = ServerConfig {
        engine_kind: args.engine,
        model: args.model,
        lora_modules: args.lora_modules,
        max_loras: args.max_loras,
        profile,
        max_model_len: args.max_model_len,
        speed: args.speed,
        seed: args.seed,
        slow_gpu: args.slow_gpu,
        gpu_index: args.gpu_index,
        gpu_uuid: args.gpu_uuid,
    };
    let engine = config.engine_kind;
    let model = config.model.clone();
    let speed = config.speed;
    let server = SimServer::bind(config, &args.listen).await?;
    let addr = server.local_addr()?;
    tracing::info!(%addr, %engine, %model, speed, "simulated model server listening");
    let shutdown = CancellationToken::new();
    let mut serving = tokio::spawn(server.serve(shutdown.clone()));
    tokio::select! {
        result = &mut serving => return result.context("server task failed")?.map_err(Into::into),
        signal = tokio::signal::ctrl_c() => signal.context("cannot listen for Ctrl-C")?,
    }
    tracing::info!("shutting down");
    shutdown.cancel();
    match tokio::time::timeout(SHUTDOWN_GRACE, &mut serving).await {
        Ok(result) => result.context("server task failed")?.map_err(Into::into),
        Err(_) => {
            tracing::warn!(grace = ?SHUTDOWN_GRACE, "open connections did not finish; exiting");
            serving.abort();
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Wrapper {
        #[command(flatten)]
        sim: SimArgs,
    }

    #[test]
    fn flags_parse_with_defaults() {
        let args = Wrapper::parse_from(["sim"]).sim;
        assert_eq!(args.listen, "127.0.0.1:8001");
        assert_eq!(args.engine, EngineKind::Vllm);
        assert_eq!(args.model, "meta-llama/Llama-3.1-8B-Instruct");
        let args = Wrapper::parse_from([
            "sim",
            "--engine",
            "sglang",
            "--lora-modules",
            "a",
            "b=/x",
            "--max-loras",
            "2",
            "--speed",
            "50",
            "--max-num-seqs",
            "8",
        ])
        .sim;
        assert_eq!(args.engine, EngineKind::Sglang);
        assert_eq!(args.lora_modules[1].path, "/x");
        assert_eq!(profile(&args).unwrap().max_num_seqs, 8);
        assert!(Wrapper::try_parse_from(["sim", "--engine", "triton"]).is_err());
        assert!(Wrapper::try_parse_from(["sim", "--lora-modules", "=x"]).is_err());
    }
}

//! `switchyard dataplane ...`
use clap::Args;

#[derive(Debug, Args)]
pub struct DataplaneArgs {}

pub async fn run(_args: DataplaneArgs) -> anyhow::Result<()> {
    let ebpf = aya::Ebpf::load(super::BPF_OBJECT)?;
    for (name, _) in ebpf.programs() {
        println!("{name}");
    }
    Ok(())
}

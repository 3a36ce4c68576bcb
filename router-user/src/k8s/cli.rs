//! `switchyard crdgen`: print or write the CRDs.
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use super::crdgen;

#[derive(Debug, Args)]
pub struct CrdgenArgs {
    /// Write one `<group>_<plural>.yaml` file per CRD into this directory instead of printing a
    /// multi-document YAML stream to stdout.
    #[arg(long, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
}

pub fn run_crdgen(args: CrdgenArgs) -> anyhow::Result<()> {
    match args.out_dir {
        None => {
            print!(
                "{}",
                crdgen::crds_yaml().context("cannot render the CRDs as YAML")?
            );
        }
        Some(dir) => {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            for file in crdgen::crd_files() {
                let path = dir.join(&file.file_name);
                let text = crdgen::crd_yaml(&file.crd).context("cannot render a CRD as YAML")?;
                std::fs::write(&path, text)
                    .with_context(|| format!("cannot write {}", path.display()))?;
                eprintln!("wrote {}", path.display());
            }
        }
    }
    Ok(())
}

use anyhow::Result;
use clap::{Parser, Subcommand};
use trainer::inspect::InspectBatchArgs;

const EXAMPLES: &str = "\
Examples:
  trainer inspect-batch --shards shards/ --schedule linear:0.3:0.15 --steps 70000 --step 35000
  trainer inspect-batch --shards shards/ --schedule cosine:0.3:0.15 --steps 70000 --stats --plot rate.png";

/// Pretrains BERT masked language models on maskrate shards with dynamic masking-rate schedules.
#[derive(Debug, Parser)]
#[command(name = "trainer", version, after_help = EXAMPLES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show the masked batch of any step, or the realised masking rate over a run (--stats).
    InspectBatch(InspectBatchArgs),
}

fn main() {
    if let Err(e) = real_main() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn real_main() -> Result<()> {
    match Cli::parse().command {
        Command::InspectBatch(args) => print!("{}", trainer::inspect::run(&args)?),
    }
    Ok(())
}

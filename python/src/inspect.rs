//! `maskrate inspect-batch`: the batch of any step from the command line, with the trainer's data
//! flags (the same [`DataConfig`] flattened), without the trainer installed.

use clap::Parser;
use pyo3::prelude::*;
use shared::sampler::{BatchPlan, DataConfig};

/// Shows the masked batch of one step: its masking rate and what masking did, or with --json
/// this rank's rows exactly as `MaskedBatches.batch` returns them.
#[derive(Debug, Parser)]
#[command(
    name = "maskrate inspect-batch",
    after_help = "Examples:\n  maskrate inspect-batch --shards shards/ --schedule linear:0.3:0.15 --steps 1000 --step 500\n  maskrate inspect-batch --shards shards/ --step 3 --batch-size 8 --json > step3.json"
)]
struct Cli {
    /// Data, schedule and masking flags (the trainer's).
    #[command(flatten)]
    data: DataConfig,
    /// The step to show.
    #[arg(long, default_value_t = 0)]
    step: u64,
    /// Print the step's batch as one JSON object, as `trainer inspect-batch --json` does.
    #[arg(long)]
    json: bool,
    /// This data-parallel rank's rows of the global batch.
    #[arg(long, default_value_t = 0)]
    rank: usize,
    /// The number of data-parallel ranks the global batch is split over.
    #[arg(long, default_value_t = 1)]
    world_size: usize,
}

/// The `inspect-batch` command line (`argv` without the program name). Returns the exit status.
#[pyfunction]
pub fn inspect_batch_cli(py: Python<'_>, argv: Vec<String>) -> PyResult<i32> {
    let cli = match Cli::try_parse_from(std::iter::once("inspect-batch".to_string()).chain(argv)) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return Ok(e.exit_code());
        }
    };
    let result = py.detach(move || -> shared::Result<String> {
        let data = cli.data.open()?;
        if cli.json {
            let json = data.batch_json(&cli.data, cli.step, cli.rank, cli.world_size)?;
            return Ok(serde_json::to_string(&json).expect("serializes") + "\n");
        }
        if cli.step >= cli.data.steps {
            return Err(shared::Error::Config(format!(
                "--step {} is past the end of a {}-step run",
                cli.step, cli.data.steps
            )));
        }
        let batch_size = data.sampler.global_batch_at(cli.step);
        let plan = BatchPlan::whole_rank(batch_size, cli.world_size, cli.rank);
        plan.validate()?;
        let b = data.sampler.batch(cli.step, plan.rank_slots())?;
        let c = b.counts;
        Ok(format!(
            "step {} of {} (schedule {}): rate {:.4}, realised {:.4}\n\
             rows {}..{} of {} x {} tokens; {} maskable, {} chosen: {} [MASK], {} random, {} kept\n",
            cli.step,
            cli.data.steps,
            cli.data.schedule,
            b.rate,
            b.realised_rate(),
            b.slots.start,
            b.slots.end,
            batch_size,
            b.seq_len,
            c.maskable,
            c.chosen,
            c.as_mask,
            c.as_random,
            c.as_kept
        ))
    });
    match result {
        Ok(text) => {
            py.import("sys")?
                .getattr("stdout")?
                .call_method1("write", (text,))?;
            Ok(0)
        }
        Err(e) => {
            eprintln!("error: {e}");
            Ok(1)
        }
    }
}

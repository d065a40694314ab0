use anyhow::{bail, Result};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use trainer::inspect::InspectBatchArgs;
use training::dist::Collective;
use training::pretrain::TrainArgs;

const EXAMPLES: &str = "\
Examples:
  trainer --shards shards/ --schedule linear:0.3:0.15 --out runs/linear     # the paper's recipe (BERT-base)
  trainer --shards sample-shards/ --model mini --steps 200 --batch-size 64 --micro-batch 32 --out runs/mini
  trainer --config run.toml --steps 100 --out runs/short                    # flags override the file
  trainer --shards shards/ --out runs/linear --resume                       # continue after a stop
  trainer --shards s3://corpora/c4-shards --order shard-blocks:16 --cache-bytes 20G --out runs/s3
  trainer --shards shards/ --arch modernbert --layout pack-docs --rate-dist stratified:0.001:1 --rate-per-document \
      --mask-token-fraction 1 --random-token-fraction 0 --loss-weight inverse-rate --loss-norm token --out runs/mdlm
  trainer --shards shards/ --rate-dist 'uniform:0.001:[linear:0.1:0.8]' --out runs/curriculum   # rates per row
  trainer sample runs/mdlm --steps 64 --length 64 --prompt 'the city of' --seed 1   # text by unmasking
  trainer eval runs/mdlm --elbo-draws 8             # held-out loss at 15% and ELBO of a run
  trainer plot runs/constant runs/linear --out plots/
  trainer export runs/linear --out hf/linear       # loads with transformers BertForMaskedLM
  trainer glue --checkpoint runs/linear --data ../shared/data/glue --seeds 5   # fine-tune, dev table
  trainer finetune --checkpoint runs/linear --task RTE --data glue/RTE --init-from runs/linear/glue/MNLI/model
  trainer blimp --checkpoint runs/linear --data ../shared/data/blimp
  trainer sweep experiments/small.toml              # the paper's comparison, sized for 2 CPU cores
  trainer sweep experiments/small.toml --dry-run    # what is done and what is left
  trainer inspect-batch --shards shards/ --schedule linear:0.3:0.15 --steps 70000 --step 35000
  trainer inspect-batch --shards shards/ --schedule cosine:0.3:0.15 --steps 70000 --stats --plot rate.png
  trainer inspect-batch --shards shards/ --steps 70000 --step 12 --json --rank 1 --world-size 8
  trainer plan --config experiments/recipes/mmbert-small.toml --plot plan   # the recipe, before training it
  trainer presets --json                            # --model's shapes per --arch, for scripts
  trainer --shards shards/ --device cuda --steps 20 --profile --out runs/prof  # phases and transfers per step
  trainer --shards shards/ --kernels twins --profile --steps 10 --out runs/gpu-path  # a GPU's op path (CUDA kernels' CPU twins), on a CPU
  trainer device-check --device cuda:0              # the device's kernels against the CPU's";

/// Pretrains BERT masked language models on maskrate shards with dynamic masking-rate schedules.
#[derive(Debug, Parser)]
#[command(name = "trainer", version, after_help = EXAMPLES, args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    train: TrainArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show the masked batch of any step, or the realised masking rate over a run (--stats).
    InspectBatch(Box<InspectBatchArgs>),
    /// Show a run's recipe before training it: masking rate, source weights and rows, batch,
    /// tokens so far and learning rate over the run, printed and plotted (no model is built).
    Plan(Box<trainer::plan::PlanArgs>),
    /// List the model presets (`--model`) of each architecture (`--arch`) with their shapes.
    Presets(PresetsArgs),
    /// Check this build's device kernels against their CPU twins: Philox's known answers on the
    /// device, dropout masks equal bit for bit (the GPU bundle's first step).
    DeviceCheck(trainer::device_check::DeviceCheckArgs),
    /// Write a HuggingFace checkpoint of a run (BertForMaskedLM or ModernBertForMaskedLM:
    /// model.safetensors, config.json, tokenizer).
    Export(ExportArgs),
    /// Compare runs: train loss, eval loss, mask rate and learning rate vs step, as PNGs.
    Plot(PlotArgs),
    /// Fine-tune a checkpoint on one GLUE task (dev metrics, mean ± std over seeds).
    Finetune(evaluation::finetune::FinetuneArgs),
    /// Fine-tune on every GLUE task present and write a JSON and markdown table.
    Glue(evaluation::glue::GlueArgs),
    /// Score BLiMP minimal pairs by pseudo-log-likelihood (zero-shot).
    Blimp(evaluation::blimp::BlimpArgs),
    /// Print text from a masked-diffusion model: MDLM's ancestral unmasking from all-[MASK]
    /// (T steps, an optional prompt, a seed).
    Sample(Box<trainer::sample::SampleArgs>),
    /// Score a run's checkpoint on its held-out sequences: the MLM loss and accuracy at 15% (per
    /// source with a mixture) and the masked-diffusion ELBO, as the trainer's evaluations do
    Eval(Box<trainer::eval::EvalArgs>),
    /// Run an experiment (experiments/*.toml): preprocess once, train every schedule x seed,
    /// evaluate, write the report. Resumable; finished parts are skipped.
    Sweep(trainer::sweep::SweepArgs),
}

#[derive(Debug, Args)]
struct ExportArgs {
    /// Run directory (its latest checkpoint is exported).
    run: PathBuf,
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Debug, Args)]
struct PresetsArgs {
    /// Print JSON (`{arch: {dropout, max_position_embeddings, layer_norm_eps, presets: {name:
    /// shape}}}`, the table `maskrate.model_presets()` also returns) instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct PlotArgs {
    /// Run directories.
    #[arg(required = true)]
    runs: Vec<PathBuf>,
    /// Directory for the PNGs.
    #[arg(long, default_value = "plots")]
    out: PathBuf,
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    training::alloc::keep_freed_pages();
    let comm = match training::dist::init() {
        Ok(comm) => comm,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    };
    if let Err(e) = real_main(comm.clone()) {
        if comm.world_size() > 1 {
            eprintln!(
                "error on rank {} of {}: {e:#}",
                comm.rank(),
                comm.world_size()
            );
            // No rank may be left waiting in a collective for this one.
            comm.abort(1);
        }
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn real_main(comm: Rc<dyn Collective>) -> Result<()> {
    let argv = training::config_file::merge_config_file(std::env::args_os().collect())?;
    let mut cli = Cli::parse_from(argv);
    if cli.command.is_some() && comm.world_size() > 1 {
        bail!(
            "only training runs data-parallel; start this subcommand as one process (without mpirun/srun)"
        );
    }
    match cli.command {
        Some(Command::InspectBatch(args)) => print!("{}", trainer::inspect::inspect_batch(&args)?),
        Some(Command::Plan(args)) => print!("{}", trainer::plan::plan(&args)?),
        Some(Command::Presets(args)) => print!("{}", presets(args.json)?),
        Some(Command::DeviceCheck(args)) => {
            trainer::device_check::device_check(&args)?;
        }
        Some(Command::Export(args)) => {
            for p in training::export::export(&args.run, &args.out)? {
                println!("wrote {}", p.display());
            }
        }
        Some(Command::Plot(args)) => {
            for p in trainer::run_plots::compare(&args.runs, &args.out)? {
                println!("wrote {}", p.display());
            }
        }
        Some(Command::Finetune(mut args)) => {
            trainer::device_check::guard_kernels(&mut args.opts.runtime, 0)?;
            let r = evaluation::finetune::finetune(&args)?;
            println!("{}", serde_json::to_string_pretty(&r)?);
        }
        Some(Command::Glue(mut args)) => {
            trainer::device_check::guard_kernels(&mut args.opts.runtime, 0)?;
            let r = evaluation::glue::run_suite(&args)?;
            print!("{}", r.markdown());
        }
        Some(Command::Blimp(args)) => {
            let r = evaluation::blimp::evaluate_checkpoint(&args)?;
            print!("{}", r.markdown());
        }
        Some(Command::Sweep(args)) => trainer::sweep::run_experiment(&args)?,
        Some(Command::Sample(mut args)) => {
            trainer::device_check::guard_kernels(&mut args.runtime, 0)?;
            print!("{}", trainer::sample::sample(&args)?)
        }
        Some(Command::Eval(mut args)) => {
            trainer::device_check::guard_kernels(&mut args.runtime, 0)?;
            trainer::eval::eval(&args)?;
        }
        None => {
            share_cores_between_local_ranks(&*comm);
            trainer::device_check::guard_kernels(&mut cli.train.runtime, comm.local_rank())?;
            let interrupted = Arc::new(AtomicBool::new(false));
            let flag = interrupted.clone();
            ctrlc::set_handler(move || {
                if flag.swap(true, Ordering::SeqCst) {
                    std::process::exit(130);
                }
                eprintln!("\ninterrupt: finishing this step, then saving a checkpoint");
            })?;
            let summary = training::pretrain::pretrain(&cli.train, interrupted, comm.clone())?;
            if training::dist::is_writer(&*comm) {
                if let Some(out) = &cli.train.out {
                    trainer::run_plots::write_run_plots(out)?;
                }
                println!("{}", serde_json::to_string_pretty(&summary)?);
            }
        }
    }
    Ok(())
}

/// `trainer presets`: the one preset table, as JSON or as a Markdown table.
fn presets(json: bool) -> Result<String> {
    use std::fmt::Write;
    let all = shared::presets::all_json();
    if json {
        return Ok(serde_json::to_string_pretty(&all)? + "\n");
    }
    let mut out = String::from(
        "| --arch | --model | layers | hidden | heads | intermediate | dropout |\n|---|---|---|---|---|---|---|\n",
    );
    for arch in ["bert", "modernbert"] {
        let p = shared::presets::of_arch(arch).expect("a known architecture");
        for (name, s) in &p.presets {
            writeln!(
                out,
                "| {arch} | {name} | {} | {} | {} | {} | {} |",
                s.num_hidden_layers,
                s.hidden_size,
                s.num_attention_heads,
                s.intermediate_size,
                p.dropout
            )?;
        }
    }
    Ok(out)
}

/// With several ranks on one node and no `RAYON_NUM_THREADS`, each rank gets its share of the
/// node's cores instead of all of them (N ranks × all cores would oversubscribe N times).
fn share_cores_between_local_ranks(comm: &dyn Collective) {
    if comm.local_size() <= 1 || std::env::var_os("RAYON_NUM_THREADS").is_some() {
        return;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = (cores / comm.local_size()).max(1);
    // candle's matmul reads this variable; rayon's global pool is built here, before first use.
    std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global();
}

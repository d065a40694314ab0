//! What the training crate's integration tests share: a tiny model's flags, parsed as the
//! trainer's command line.

use clap::Parser;
use training::pretrain::TrainArgs;

#[derive(Parser)]
struct Cmd {
    #[command(flatten)]
    train: TrainArgs,
}

/// The trainer's arguments for a tiny BERT (2 layers of 32, rows of 32 tokens, 32 held-out
/// sequences) on `shards` into `out`, quiet, then `extra`.
pub fn tiny_args(shards: &std::path::Path, out: &std::path::Path, extra: &[&str]) -> TrainArgs {
    let mut argv: Vec<String> = vec!["trainer".into(), "--shards".into()];
    argv.push(shards.display().to_string());
    argv.extend(["--out".into(), out.display().to_string()]);
    let tiny = [
        "--model",
        "tiny",
        "--hidden",
        "32",
        "--heads",
        "2",
        "--intermediate",
        "64",
        "--layers",
        "2",
        "--seq-len",
        "32",
        "--eval-sequences",
        "32",
        "--eval-batch",
        "16",
        "--quiet",
    ];
    argv.extend(tiny.iter().chain(extra).map(|s| s.to_string()));
    Cmd::parse_from(argv).train
}

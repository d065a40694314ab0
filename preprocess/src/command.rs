//! The `preprocess` command line's actions, as the binary and the Python package's console
//! script both run them: a preprocessing run, `merge` or `inspect`, reporting to stdout/stderr.

use crate::cli::{Cli, Command};
use crate::error::Result;
use std::sync::atomic::AtomicBool;

/// Runs what `cli` asks for. `interrupted` is set by the caller's Ctrl-C handling: a run stops
/// after its in-flight work, with committed shards kept for resuming.
pub fn run(cli: Cli, interrupted: &AtomicBool) -> Result<()> {
    match cli.command {
        Some(Command::Merge(args)) => {
            let (manifest, copied) = crate::merge::merge(&args.dirs, &args.out)?;
            println!(
                "merged {} shard set(s) into {}: {} shards, {} documents, {} tokens{}",
                args.dirs.len(),
                args.out.display(),
                manifest.shards.len(),
                manifest.totals.documents,
                manifest.totals.tokens,
                if shared::store::is_remote(&args.out) {
                    format!(" ({copied} objects copied server-side)")
                } else if copied > 0 {
                    format!(" ({copied} files copied: not on the same filesystem)")
                } else {
                    String::new()
                }
            );
        }
        Some(Command::Inspect(args)) => print!(
            "{}",
            crate::inspect::inspect(&args.dir, &args.docs, args.verify)?
        ),
        None => {
            let cfg = cli.run.into_config()?;
            eprintln!(
                "preprocess: {} input file(s), {:.1} MB -> {}\nconfig: {}",
                cfg.inputs.len(),
                cfg.inputs.iter().map(|f| f.size).sum::<u64>() as f64 / 1e6,
                cfg.upload_to
                    .clone()
                    .unwrap_or_else(|| cfg.out.display().to_string()),
                serde_json::json!({
                    "tokenizer": cfg.tokenizer.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| shared::tokenizer::BUNDLED_NAME.into()),
                    "threads": cfg.threads,
                    "options": cfg.output,
                })
            );
            let outcome = crate::job::preprocess(&cfg, interrupted)?;
            let out = cfg
                .upload_to
                .clone()
                .unwrap_or_else(|| cfg.out.display().to_string());
            if outcome.already_done {
                eprintln!("{out} is already complete for this command; nothing to do");
            } else if let Some((url, bytes)) = &outcome.uploaded {
                eprintln!(
                    "{url} complete (manifest written last; {:.1} MB uploaded at the end)",
                    *bytes as f64 / 1e6
                );
            }
            println!("{}", outcome.summary);
        }
    }
    Ok(())
}

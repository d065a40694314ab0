use anyhow::Result;
use clap::Parser;
use preprocess::cli::{Cli, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

fn main() {
    if let Err(e) = real_main() {
        eprintln!("error: {e:#}");
        let code = match e.downcast_ref::<preprocess::Error>() {
            Some(preprocess::Error::Interrupted(_)) => 130,
            _ => 1,
        };
        std::process::exit(code);
    }
}

fn real_main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Merge(args)) => {
            let (manifest, copied) = preprocess::merge::merge(&args.dirs, &args.out)?;
            println!(
                "merged {} shard set(s) into {}: {} shards, {} documents, {} tokens{}",
                args.dirs.len(),
                args.out.display(),
                manifest.shards.len(),
                manifest.totals.documents,
                manifest.totals.tokens,
                if copied > 0 {
                    format!(" ({copied} files copied: not on the same filesystem)")
                } else {
                    String::new()
                }
            );
        }
        Some(Command::Inspect(args)) => print!(
            "{}",
            preprocess::inspect::inspect(&args.dir, &args.docs, args.verify)?
        ),
        None => {
            let cfg = cli.run.into_config()?;
            eprintln!(
                "preprocess: {} input file(s), {:.1} MB -> {}\nconfig: {}",
                cfg.inputs.len(),
                cfg.inputs.iter().map(|f| f.size).sum::<u64>() as f64 / 1e6,
                cfg.out.display(),
                serde_json::json!({
                    "tokenizer": cfg.tokenizer.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| shared::tokenizer::BUNDLED_NAME.into()),
                    "threads": cfg.threads,
                    "options": cfg.output,
                })
            );
            let interrupted = Arc::new(AtomicBool::new(false));
            let flag = interrupted.clone();
            ctrlc::set_handler(move || {
                if flag.swap(true, Ordering::SeqCst) {
                    std::process::exit(130); // second Ctrl-C: leave now; the journal is still consistent
                }
                eprintln!("\ninterrupt: stopping after in-flight work; committed shards are kept");
            })?;
            let outcome = preprocess::job::preprocess(&cfg, &interrupted)?;
            if outcome.already_done {
                eprintln!(
                    "{} is already complete for this command; nothing to do",
                    cfg.out.display()
                );
            }
            println!("{}", outcome.summary);
        }
    }
    Ok(())
}

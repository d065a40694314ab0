use anyhow::Result;
use clap::Parser;
use preprocess::cli::Cli;
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
    let interrupted = Arc::new(AtomicBool::new(false));
    if cli.command.is_none() {
        // A preprocessing run stops cleanly on Ctrl-C; merge and inspect keep the default.
        let flag = interrupted.clone();
        ctrlc::set_handler(move || {
            if flag.swap(true, Ordering::SeqCst) {
                std::process::exit(130); // second Ctrl-C: leave now; the journal is still consistent
            }
            eprintln!("\ninterrupt: stopping after in-flight work; committed shards are kept");
        })?;
    }
    preprocess::command::run(cli, &interrupted)?;
    Ok(())
}

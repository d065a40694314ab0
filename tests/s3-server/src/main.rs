//! `maskrate-s3-server ROOT`: the test server on its own, for the Python tests, the benchmarks
//! and trying `s3://` URLs by hand. Prints the endpoint and the environment to use, then serves
//! until killed.

use clap::Parser;
use std::path::PathBuf;

/// A local S3-compatible server (s3s-fs) for maskrate's tests and benchmarks.
///
/// Example: maskrate-s3-server /tmp/s3 --bucket data, then
/// AWS_ENDPOINT_URL=http://127.0.0.1:PORT AWS_ACCESS_KEY_ID=maskrate-test-key
/// AWS_SECRET_ACCESS_KEY=maskrate-test-secret trainer --shards s3://data/shards ...
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// Directory holding the buckets (one subdirectory each).
    root: PathBuf,
    /// Port on 127.0.0.1 (0: a free one).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Buckets to create before serving.
    #[arg(long)]
    bucket: Vec<String>,
}

fn main() -> std::io::Result<()> {
    let cli = Cli::parse();
    let server = s3_test_server::S3Server::start_on(&cli.root, cli.port)?;
    for b in &cli.bucket {
        server.create_bucket(b)?;
    }
    println!("{}", server.endpoint());
    for (k, v) in server.env() {
        eprintln!("export {k}={v}");
    }
    use std::io::Write;
    std::io::stdout().flush()?;
    loop {
        std::thread::park();
    }
}

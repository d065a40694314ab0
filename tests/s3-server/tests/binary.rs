//! The `maskrate-s3-server` binary starts, prints its endpoint and serves S3 requests (and is built
//! by `cargo test`, for the Python tests that start it).

use std::io::BufRead;

#[test]
fn the_binary_prints_its_endpoint_and_answers() {
    let root = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_maskrate-s3-server"))
        .arg(root.path())
        .args(["--bucket", "data"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let endpoint = line.trim().to_string();
    assert!(endpoint.starts_with("http://127.0.0.1:"), "{endpoint}");
    assert!(root.path().join("data").is_dir());
    // An unsigned request is refused by the S3 protocol layer (403), not by a dead socket.
    let addr = endpoint.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    use std::io::{Read, Write};
    write!(
        stream,
        "GET /data/x HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 403"), "{reply}");
    child.kill().unwrap();
    child.wait().unwrap();
}

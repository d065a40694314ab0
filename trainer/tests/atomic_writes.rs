//! Every file the trainer writes goes through `shared::atomic` (temporary name, fsync, rename):
//! this scans the sources for the calls that create files and allows each only where it writes
//! inside an atomic helper's temporary file or directory. A new plain write fails here.

use std::path::Path;

/// Calls that create or overwrite a file.
const WRITERS: &[&str] = &[
    "fs::write(",
    "File::create(",
    "safetensors::save(",
    "BitMapBackend::new(",
];

/// (file, call, allowed count, why it is atomic).
const ALLOWED: &[(&str, &str, usize, &str)] = &[
    (
        "training/src/checkpoint.rs",
        "safetensors::save(",
        2,
        "inside atomic::write_dir",
    ),
    (
        "training/src/checkpoint.rs",
        "fs::write(",
        1,
        "inside atomic::write_dir",
    ),
    (
        "evaluation/src/finetune/output.rs",
        "safetensors::save(",
        2,
        "inside atomic::write_dir",
    ),
    (
        "evaluation/src/finetune/output.rs",
        "fs::write(",
        2,
        "inside atomic::write_dir",
    ),
    (
        "training/src/export.rs",
        "safetensors::save(",
        2,
        "inside atomic::write_with",
    ),
    (
        "src/charts.rs",
        "BitMapBackend::new(",
        1,
        "draws NAME.tmp.png inside atomic::write_via",
    ),
];

fn scan(dir: &Path, root: &Path, found: &mut Vec<(String, &'static str, usize)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            scan(&path, root, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).unwrap();
            // Unit tests at the end of a file may write scratch files.
            let code = text.split("#[cfg(test)]").next().unwrap();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            for w in WRITERS {
                let n = code.matches(w).count();
                if n > 0 {
                    found.push((rel.clone(), w, n));
                }
            }
        }
    }
}

#[test]
fn every_file_write_goes_through_shared_atomic() {
    // The binary's sources and those of the crates under it.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut found = Vec::new();
    for src in ["src", "model/src", "training/src", "evaluation/src"] {
        scan(&root.join(src), root, &mut found);
    }
    for (file, call, ..) in ALLOWED {
        assert!(
            found.iter().any(|(f, c, _)| f == file && c == call),
            "{file}: no {call} any more; drop it from ALLOWED"
        );
    }
    let mut plain = Vec::new();
    for (file, call, n) in &found {
        let allowed = ALLOWED
            .iter()
            .find(|(f, c, _, _)| f == file && c == call)
            .map_or(0, |a| a.2);
        if *n > allowed {
            plain.push(format!("{file}: {n} x {call} (allowed {allowed})"));
        }
    }
    assert!(
        plain.is_empty(),
        "plain file writes (use shared::atomic::write_file / write_with / write_dir): {plain:#?}"
    );
}

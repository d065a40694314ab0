//! What the trainer binary's tests share.

/// Flags of a tiny, quick training run (2 layers of width 32, sequences of 32, batches of 8,
/// 8 held-out sequences, no progress output); tests add steps, saving and evaluation.
pub fn tiny_flags() -> Vec<String> {
    [
        "--model",
        "tiny",
        "--hidden",
        "32",
        "--heads",
        "2",
        "--intermediate",
        "64",
        "--seq-len",
        "32",
        "--batch-size",
        "8",
        "--eval-sequences",
        "8",
        "--quiet",
    ]
    .map(String::from)
    .to_vec()
}

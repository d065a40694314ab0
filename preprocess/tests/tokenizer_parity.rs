//! Parity of the `tokenizers` 1.0 pipeline (what `preprocess` encodes with) against the released
//! 0.23 `Tokenizer` (the oracle): ids equal document by document on every corpus fixture, and on
//! random Unicode text built to hit the normaliser's and pre-tokeniser's edge cases.
//!
//! The property test runs `PARITY_CASES` cases (default 4,000); the longer documented run is
//! `PARITY_CASES=1000000 cargo test --release -p preprocess --test tokenizer_parity`.

use preprocess::input::discover;
use preprocess::record_encoder::extract_text;
use preprocess::records::{Payload, RecordReader};
use preprocess::text_encoder::TextEncoder;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use shared::tokenizer::LoadedTokenizer;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};

fn tokenizer() -> &'static LoadedTokenizer {
    static TOKENIZER: OnceLock<LoadedTokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| LoadedTokenizer::load(None).unwrap())
}

fn ids(encoder: &TextEncoder, text: &str) -> Vec<u32> {
    encoder.encode(text).unwrap()
}

/// The texts of every record of the corpus under `dir`, with their file and record number.
fn texts(dir: &Path) -> Vec<(String, u64, String)> {
    let mut all = Vec::new();
    for spec in discover(&[dir.to_path_buf()]).unwrap() {
        let mut reader =
            RecordReader::open(&spec, "text", 1 << 30, Arc::new(AtomicU64::new(0))).unwrap();
        while let Some(rec) = reader.next_record(&spec.path).unwrap() {
            let text = match rec.payload {
                Payload::Json(line) => extract_text(&line, "text").unwrap().into_owned(),
                Payload::Text(text) => text,
                Payload::Bad(msg) => panic!("{}:{}: {msg}", spec.path.display(), rec.record),
            };
            all.push((spec.path.display().to_string(), rec.record, text));
        }
    }
    all
}

fn corpora() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut dirs: Vec<PathBuf> = ["c4-sample", "parquet-sample", "arrow-sample"]
        .iter()
        .map(|d| root.join("data").join(d))
        .collect();
    // The larger real corpora beside the checkout, when present (CI has them; a clone may not).
    for d in ["../shared/data/c4/en", "../shared/data/wiki/en"] {
        let p = root.join(d);
        if p.exists() {
            dirs.push(p);
        }
    }
    dirs
}

#[test]
fn every_fixture_document_gets_the_oracles_ids() {
    let (fast, notice) = TextEncoder::new(tokenizer());
    assert!(notice.is_none(), "{notice:?}");
    let oracle = TextEncoder::legacy(tokenizer());
    for dir in corpora() {
        let docs = texts(&dir);
        assert!(!docs.is_empty(), "{}", dir.display());
        let mut tokens = 0usize;
        for (file, record, text) in &docs {
            let want = ids(&oracle, text);
            let got = ids(&fast, text);
            assert!(
                got == want,
                "{file} record {record}: the pipeline's ids differ from tokenizers 0.23's"
            );
            tokens += want.len();
        }
        eprintln!(
            "{}: {} documents, {tokens} tokens, identical",
            dir.display(),
            docs.len()
        );
    }
}

/// One piece of a generated text, each class aimed at a part of BERT's normaliser or
/// pre-tokeniser.
fn piece() -> impl Strategy<Value = String> {
    let range = |lo: u32, hi: u32| {
        proptest::collection::vec(lo..=hi, 1..12).prop_map(|cs| {
            cs.into_iter()
                .filter_map(char::from_u32)
                .collect::<String>()
        })
    };
    prop_oneof![
        // ASCII words and punctuation.
        "[a-zA-Z]{1,12}",
        "[!-/:-@\\[-`{-~]{1,4}",
        // Mixed scripts: Latin-1/Extended, Greek, Cyrillic, Arabic, Devanagari, Thai, Hangul.
        range(0x00C0, 0x024F),
        range(0x0370, 0x03FF),
        range(0x0400, 0x04FF),
        range(0x0600, 0x06FF),
        range(0x0900, 0x097F),
        range(0x0E00, 0x0E7F),
        range(0xAC00, 0xD7A3),
        // Base letters followed by combining marks.
        ("[a-z]", range(0x0300, 0x036F)).prop_map(|(a, b)| a + &b),
        // CJK ideographs (split one per token), including extension A and compatibility.
        range(0x4E00, 0x9FFF),
        range(0x3400, 0x4DBF),
        range(0xF900, 0xFAFF),
        // Control and format characters, replacement character, zero-width and BOM.
        proptest::sample::select(vec![
            "\u{0}", "\u{1}", "\u{7}", "\u{1b}", "\u{7f}", "\u{85}", "\u{9f}", "\u{ad}",
            "\u{200b}", "\u{200d}", "\u{200e}", "\u{feff}", "\u{fffd}", "\u{e000}",
        ])
        .prop_map(str::to_string),
        // Emoji, with skin tones and ZWJ sequences.
        range(0x1F300, 0x1FAFF),
        Just("👩\u{200d}👩\u{200d}👧🏽".to_string()),
        // A very long word (over 100 characters: WordPiece's [UNK] rule) and long runs.
        "[a-z]{100,140}",
        "[a-zé]{95,110}",
        // Whitespace runs of every kind.
        proptest::collection::vec(
            proptest::sample::select(vec![
                ' ', '\t', '\n', '\r', '\u{a0}', '\u{2003}', '\u{3000}', '\u{2028}', '\u{b}',
                '\u{c}', '\u{1680}',
            ]),
            1..6
        )
        .prop_map(|v| v.into_iter().collect::<String>()),
        // Precomposed and decomposed accents, ligatures, fullwidth forms, math letters.
        proptest::sample::select(vec![
            "café",
            "cafe\u{301}",
            "Ångström",
            "naïve",
            "ﬁnance",
            "Ｆｕｌｌ",
            "𝐁𝐨𝐥𝐝",
            "ǅ",
            "ß",
            "İstanbul",
            "ΣΑΣ",
        ])
        .prop_map(str::to_string),
        // Special-token literals and look-alikes.
        proptest::sample::select(vec![
            "[MASK]",
            "[CLS]",
            "[SEP]",
            "[PAD]",
            "[UNK]",
            "[mask]",
            "[ MASK ]",
            "[MASK",
            "##s",
            "[MASK][MASK]",
            "a[MASK]b",
            "<mask>",
        ])
        .prop_map(str::to_string),
        // Anything at all.
        any::<char>().prop_map(String::from),
    ]
}

fn text() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        (piece(), proptest::sample::select(vec!["", " ", "  ", "\n"])),
        0..24,
    )
    .prop_map(|parts| parts.into_iter().map(|(p, sep)| p + sep).collect())
}

#[test]
fn random_unicode_text_gets_the_oracles_ids() {
    let cases = std::env::var("PARITY_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4000);
    let (fast, _) = TextEncoder::new(tokenizer());
    let oracle = TextEncoder::legacy(tokenizer());
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&text(), |text| {
        let want = ids(&oracle, &text);
        let got = ids(&fast, &text);
        prop_assert_eq!(got, want, "text {:?}", text);
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// Every Unicode scalar value, alone and in three contexts: the characters on which the bare
/// pipeline and 0.23 disagree must be exactly `DIVERGENT_CHARS` (the ones routed to 0.23).
#[test]
fn routing_table_is_exactly_the_divergent_set() {
    let (fast, _) = TextEncoder::new(tokenizer());
    let oracle = TextEncoder::legacy(tokenizer());
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let divergent: Vec<u32> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (fast, oracle) = (&fast, &oracle);
                s.spawn(move || {
                    let mut scratch = Vec::new();
                    (t as u32..=0x10FFFF)
                        .step_by(threads)
                        .filter_map(char::from_u32)
                        .filter(|c| {
                            [
                                format!("{c}"),
                                format!("x{c}y"),
                                format!("a\u{301}{c}b"),
                                format!("{c}{c}"),
                            ]
                            .iter()
                            .any(|t| fast.pipeline_ids(t, &mut scratch).unwrap() != ids(oracle, t))
                        })
                        .map(|c| c as u32)
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: Vec<u32> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        all.sort_unstable();
        all
    });
    let mut ranges: Vec<(u32, u32)> = Vec::new();
    for u in divergent {
        match ranges.last_mut() {
            Some(r) if r.1 + 1 == u => r.1 = u,
            _ => ranges.push((u, u)),
        }
    }
    let table: String = ranges
        .iter()
        .map(|(a, b)| format!("(0x{a:04X}, 0x{b:04X}), "))
        .collect();
    assert!(
        ranges == preprocess::text_encoder::DIVERGENT_CHARS,
        "DIVERGENT_CHARS should be: {table}"
    );
    // And routing makes the encoder agree on them.
    for &(lo, hi) in preprocess::text_encoder::DIVERGENT_CHARS {
        for c in (lo..=hi).filter_map(char::from_u32) {
            let t = format!("x{c}y");
            assert_eq!(ids(&fast, &t), ids(&oracle, &t), "U+{:04X}", c as u32);
        }
    }
}

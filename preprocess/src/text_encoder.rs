//! Text → token ids for the preprocessor: `tokenizers` 1.0's read-only pipeline when it can load
//! the tokenizer, else the 0.23 `Tokenizer` (the oracle the pipeline is tested against).
//!
//! The 1.0 reader accepts only the canonical `tokenizer.json` form, so the file is canonicalised in
//! memory at load; the manifest's fingerprint stays the hash of the original bytes (see
//! [`shared::tokenizer::TokenizerInfo`]), so shard sets made before keep matching.

use shared::tokenizer::LoadedTokenizer;
use tokenizers::Tokenizer;
use tokenizers_pipeline::pipeline::{EncodeOptions, PipelineToken, PipelineTokenizer};

/// Characters on which the two libraries disagree, as inclusive ranges of scalar values: all are
/// punctuation (`Po`) added in recent Unicode versions, which 1.0's tables know and 0.23's
/// `unicode_categories` tables do not, so 1.0 splits words at them and 0.23 does not. A text holding
/// one is encoded by 0.23. The test `routing_table_is_exactly_the_divergent_set` (every scalar value
/// in four contexts) checks this table and prints the right one when it is wrong.
pub const DIVERGENT_CHARS: &[(u32, u32)] = &[
    (0x061D, 0x061D),
    (0x09FD, 0x09FD),
    (0x0A76, 0x0A76),
    (0x0C77, 0x0C77),
    (0x0C84, 0x0C84),
    (0x166D, 0x166D),
    (0x1B4E, 0x1B4F),
    (0x1B7D, 0x1B7F),
    (0x2E43, 0x2E4F),
    (0x2E52, 0x2E5D),
    (0x10D6E, 0x10D6E),
    (0x10EAD, 0x10EAD),
    (0x10ED0, 0x10ED0),
    (0x10F55, 0x10F59),
    (0x10F86, 0x10F89),
    (0x111C9, 0x111C9),
    (0x113D4, 0x113D5),
    (0x113D7, 0x113D8),
    (0x1144B, 0x1144F),
    (0x1145A, 0x1145B),
    (0x1145D, 0x1145D),
    (0x11660, 0x1166C),
    (0x116B9, 0x116B9),
    (0x1183B, 0x1183B),
    (0x11944, 0x11946),
    (0x119E2, 0x119E2),
    (0x11A3F, 0x11A46),
    (0x11A9A, 0x11A9C),
    (0x11A9E, 0x11AA2),
    (0x11B00, 0x11B09),
    (0x11BE1, 0x11BE1),
    (0x11C41, 0x11C45),
    (0x11C70, 0x11C71),
    (0x11EF7, 0x11EF8),
    (0x11F43, 0x11F4F),
    (0x11FFF, 0x11FFF),
    (0x12FF1, 0x12FF2),
    (0x16D6D, 0x16D6F),
    (0x16E97, 0x16E9A),
    (0x16FE2, 0x16FE2),
    (0x1E5FF, 0x1E5FF),
    (0x1E95E, 0x1E95F),
];

/// Whether `text` holds a character of [`DIVERGENT_CHARS`].
pub fn needs_oracle(text: &str) -> bool {
    let first = DIVERGENT_CHARS[0].0;
    text.chars().any(|c| {
        let u = c as u32;
        u >= first
            && DIVERGENT_CHARS
                .binary_search_by(|&(lo, hi)| {
                    if hi < u {
                        std::cmp::Ordering::Less
                    } else if lo > u {
                        std::cmp::Ordering::Greater
                    } else {
                        std::cmp::Ordering::Equal
                    }
                })
                .is_ok()
    })
}

/// Which library encodes.
pub enum TextEncoder<'a> {
    /// `tokenizers` 1.0's pipeline (4-5x faster on WordPiece, same ids), with texts holding a
    /// [`DIVERGENT_CHARS`] character sent to the 0.23 oracle.
    Pipeline {
        /// The loaded pipeline.
        tokenizer: Box<PipelineTokenizer>,
        /// Encode without `[CLS]`/`[SEP]`; the sampler adds them per sequence.
        options: EncodeOptions,
        /// The 0.23 tokenizer, for the texts routed to it.
        oracle: &'a Tokenizer,
    },
    /// `tokenizers` 0.23's `encode_fast`, for tokenizers the 1.0 reader refuses.
    Legacy(&'a Tokenizer),
}

impl<'a> TextEncoder<'a> {
    /// The pipeline for `loaded`, or the 0.23 tokenizer with the reason the pipeline could not
    /// load it (a one-line notice for the user).
    pub fn new(loaded: &'a LoadedTokenizer) -> (Self, Option<String>) {
        match load_pipeline(&loaded.json) {
            Ok(tokenizer) => {
                let pipeline = TextEncoder::Pipeline {
                    tokenizer: Box::new(tokenizer),
                    options: EncodeOptions::no_specials(),
                    oracle: &loaded.tokenizer,
                };
                match pipeline.self_check() {
                    Ok(()) => (pipeline, None),
                    Err(text) => (
                        TextEncoder::Legacy(&loaded.tokenizer),
                        Some(format!(
                            "tokenizers 1.0 and 0.23 give {} different ids for {text:?}; encoding with tokenizers 0.23 (slower)",
                            loaded.info.source
                        )),
                    ),
                }
            }
            Err(why) => (
                TextEncoder::Legacy(&loaded.tokenizer),
                Some(format!(
                    "tokenizers 1.0 cannot load {} ({why}); encoding with tokenizers 0.23 (slower, same ids)",
                    loaded.info.source
                )),
            ),
        }
    }

    /// The 0.23 encoder, whatever the pipeline could do (for comparisons).
    pub fn legacy(loaded: &'a LoadedTokenizer) -> Self {
        TextEncoder::Legacy(&loaded.tokenizer)
    }

    /// The ids of `text` in a new vector (for callers that encode a text at a time).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, String> {
        let mut out = Vec::new();
        self.encode_into(text, &mut Vec::new(), &mut out)?;
        Ok(out)
    }

    /// Appends the ids of `text` (no special tokens added) to `out`; `scratch` is reused between
    /// calls so the pipeline allocates nothing per document.
    pub fn encode_into(
        &self,
        text: &str,
        scratch: &mut Vec<PipelineToken>,
        out: &mut Vec<u32>,
    ) -> Result<(), String> {
        match self {
            TextEncoder::Pipeline { oracle, .. } if needs_oracle(text) => {
                encode_legacy(oracle, text, out)?;
            }
            TextEncoder::Pipeline {
                tokenizer, options, ..
            } => out.extend_from_slice(encode_pipeline(tokenizer, options, text, scratch)?),
            TextEncoder::Legacy(tokenizer) => encode_legacy(tokenizer, text, out)?,
        }
        Ok(())
    }

    /// The pipeline's ids for `text`, never routed to the oracle (to find divergences); `None`
    /// for the 0.23 encoder.
    pub fn pipeline_ids(&self, text: &str, scratch: &mut Vec<PipelineToken>) -> Option<Vec<u32>> {
        let TextEncoder::Pipeline {
            tokenizer, options, ..
        } = self
        else {
            return None;
        };
        encode_pipeline(tokenizer, options, text, scratch)
            .ok()
            .map(<[u32]>::to_vec)
    }

    /// Compares this encoder with the oracle on [`PROBES`]; the first text they disagree on.
    fn self_check(&self) -> Result<(), &'static str> {
        let TextEncoder::Pipeline { oracle, .. } = self else {
            return Ok(());
        };
        let (mut got, mut want, mut scratch) = (Vec::new(), Vec::new(), Vec::new());
        for text in PROBES {
            got.clear();
            want.clear();
            let ok = self.encode_into(text, &mut scratch, &mut got).is_ok()
                && encode_legacy(oracle, text, &mut want).is_ok();
            if !ok || got != want {
                return Err(text);
            }
        }
        Ok(())
    }
}

/// Texts both libraries must encode alike before the pipeline is used for a tokenizer (a quick
/// guard for tokenizers other than the bundled one, whose parity the tests establish in depth).
const PROBES: &[&str] = &[
    "The quick brown fox jumps over the lazy dog.",
    "Hello, World! It's 3.14 o'clock -- e-mail me@example.com (or not).",
    "CAFÉ naïve Ångström résumé coöperate ﬁnance Ｆｕｌｌ ß İstanbul ΣΑΣ",
    "東京は日本の首都です。 北京 서울 ภาษาไทย العربية हिन्दी Ελληνικά Русский",
    "emoji 🙂👩\u{200d}👩\u{200d}👧🏽 and marks a\u{301}\u{302} e\u{308}",
    "tabs\tand\nnewlines\r\n\u{a0}nbsp\u{3000}ideographic\u{200b}zero-width\u{feff}",
    "control\u{0}\u{1}\u{7f}\u{85}\u{fffd} chars",
    "[MASK] [CLS] [SEP] [PAD] [UNK] <mask> <s> </s> a[MASK]b [mask]",
    "Pneumonoultramicroscopicsilicovolcanoconiosis supercalifragilisticexpialidocious antidisestablishmentarianism-ism",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "  leading and trailing whitespace  ",
    "",
];

/// The pipeline's ids for `text`, in `scratch`.
fn encode_pipeline<'s>(
    tokenizer: &PipelineTokenizer,
    options: &EncodeOptions,
    text: &str,
    scratch: &'s mut Vec<PipelineToken>,
) -> Result<&'s [u32], String> {
    scratch.clear();
    tokenizer
        .encode_into(text, options, scratch)
        .map_err(|e| e.to_string())?;
    Ok(PipelineToken::cast_slice(scratch))
}

fn encode_legacy(tokenizer: &Tokenizer, text: &str, out: &mut Vec<u32>) -> Result<(), String> {
    let encoding = tokenizer
        .encode_fast(text, false)
        .map_err(|e| e.to_string())?;
    out.extend_from_slice(encoding.get_ids());
    Ok(())
}

/// Canonicalises `json` in memory and reads it with the 1.0 reader.
fn load_pipeline(json: &[u8]) -> Result<PipelineTokenizer, String> {
    let text = std::str::from_utf8(json).map_err(|e| format!("not UTF-8: {e}"))?;
    let canonical = tokenizers_pipeline::canonicalize_str(text).map_err(|e| e.to_string())?;
    tokenizers_pipeline::from_json(&canonical).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(encoder: &TextEncoder, text: &str) -> Vec<u32> {
        encoder.encode(text).unwrap()
    }

    #[test]
    fn bundled_tokenizer_loads_into_the_pipeline_and_matches_the_oracle() {
        let loaded = LoadedTokenizer::load(None).unwrap();
        let (fast, notice) = TextEncoder::new(&loaded);
        assert!(notice.is_none(), "{notice:?}");
        assert!(matches!(fast, TextEncoder::Pipeline { .. }));
        let oracle = TextEncoder::legacy(&loaded);
        for text in [
            "Hello, World! unaffable [MASK] café",
            "naïve 東京 🙂 x\u{0301}",
            "",
        ] {
            assert_eq!(ids(&fast, text), ids(&oracle, text), "{text:?}");
        }
        // Hand-checked against vocab.txt: hello=7592 ,=1010 world=2088 !=999.
        assert_eq!(ids(&fast, "Hello, World!"), vec![7592, 1010, 2088, 999]);
    }

    #[test]
    fn a_tokenizer_the_pipeline_refuses_falls_back_to_the_oracle_with_a_notice() {
        // 0.23 reads nested pre-tokenizer sequences; the 1.0 reader refuses them.
        let mut value: serde_json::Value =
            serde_json::from_slice(shared::tokenizer::BUNDLED_BERT_BASE_UNCASED).unwrap();
        let inner = value["pre_tokenizer"].clone();
        value["pre_tokenizer"] = serde_json::json!({
            "type": "Sequence",
            "pretokenizers": [{"type": "Sequence", "pretokenizers": [inner]}]
        });
        let loaded =
            LoadedTokenizer::from_bytes(value.to_string().into_bytes(), "nested.json").unwrap();
        let (encoder, notice) = TextEncoder::new(&loaded);
        assert!(matches!(encoder, TextEncoder::Legacy(_)));
        let notice = notice.expect("a notice");
        assert!(
            notice.contains("nested.json") && notice.contains("0.23"),
            "{notice}"
        );
        let bundled = LoadedTokenizer::load(None).unwrap();
        let text = "Nested sequences, same words.";
        assert_eq!(
            ids(&encoder, text),
            ids(&TextEncoder::new(&bundled).0, text)
        );
    }
}

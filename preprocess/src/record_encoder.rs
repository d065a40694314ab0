//! Worker-side record handling: JSON parsing of one field (borrowed from the line when it has no
//! escapes), validation, tokenization.

use crate::records::{Payload, RawRecord};
use crate::text_encoder::TextEncoder;
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use std::borrow::Cow;
use std::fmt;
use tokenizers_pipeline::pipeline::PipelineToken;

/// What became of one record.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// A document to store; its ids are the next `tokens` ids of the chunk's [`Encoded::ids`].
    Doc {
        /// Line or row number.
        record: u64,
        /// How many ids it has.
        tokens: usize,
        /// Whether `--max-tokens-per-doc` cut it.
        truncated: bool,
    },
    /// Empty text, or text that tokenizes to nothing.
    Empty {
        /// Line or row number.
        record: u64,
    },
    /// A malformed record.
    Bad {
        /// Line or row number.
        record: u64,
        /// What is wrong.
        msg: String,
    },
}

impl Outcome {
    /// The record number.
    pub fn record(&self) -> u64 {
        match self {
            Outcome::Doc { record, .. }
            | Outcome::Empty { record }
            | Outcome::Bad { record, .. } => *record,
        }
    }
}

/// The outcomes of a run of records, with the ids of all its documents in one buffer (one
/// allocation per chunk rather than per document).
#[derive(Debug, Default, PartialEq)]
pub struct Encoded {
    /// One outcome per record, in input order.
    pub outcomes: Vec<Outcome>,
    /// The ids of every [`Outcome::Doc`], concatenated in order.
    pub ids: Vec<u32>,
}

impl Encoded {
    /// Each outcome with its document's ids (empty for records that are not documents).
    pub fn iter(&self) -> impl Iterator<Item = (&Outcome, &[u32])> {
        let mut at = 0usize;
        self.outcomes.iter().map(move |o| {
            let n = match o {
                Outcome::Doc { tokens, .. } => *tokens,
                _ => 0,
            };
            at += n;
            (o, &self.ids[at - n..at])
        })
    }
}

/// Turns records into outcomes with one tokenizer; one per worker thread.
pub struct Encoder<'a> {
    /// The tokenizer (shared by all workers).
    pub text_encoder: &'a TextEncoder<'a>,
    /// JSON key (or parquet column, handled by the reader) holding the text.
    pub text_field: &'a str,
    /// Keep only each document's first N tokens.
    pub max_tokens_per_doc: Option<usize>,
    /// Reused by the pipeline between documents.
    pub scratch: Vec<PipelineToken>,
}

impl Encoder<'_> {
    /// Processes a run of records.
    pub fn encode_all(&mut self, records: Vec<RawRecord>) -> Encoded {
        let mut encoded = Encoded {
            outcomes: Vec::with_capacity(records.len()),
            ids: Vec::new(),
        };
        for rec in records {
            let outcome = self.encode(rec, &mut encoded.ids);
            encoded.outcomes.push(outcome);
        }
        encoded
    }

    /// Processes one record, appending a document's ids to `ids`.
    pub fn encode(&mut self, rec: RawRecord, ids: &mut Vec<u32>) -> Outcome {
        let record = rec.record;
        let text = match &rec.payload {
            Payload::Bad(msg) => {
                return Outcome::Bad {
                    record,
                    msg: msg.clone(),
                }
            }
            Payload::Text(t) => Cow::Borrowed(t.as_str()),
            Payload::Json(bytes) => match extract_text(bytes, self.text_field) {
                Ok(t) => t,
                Err(msg) => return Outcome::Bad { record, msg },
            },
        };
        if text.trim().is_empty() {
            return Outcome::Empty { record };
        }
        let start = ids.len();
        if let Err(e) = self.text_encoder.encode_into(&text, &mut self.scratch, ids) {
            ids.truncate(start);
            return Outcome::Bad {
                record,
                msg: format!("tokenizer failed: {e}"),
            };
        }
        let mut tokens = ids.len() - start;
        if tokens == 0 {
            return Outcome::Empty { record };
        }
        let mut truncated = false;
        if let Some(max) = self.max_tokens_per_doc {
            if tokens > max {
                ids.truncate(start + max);
                tokens = max;
                truncated = true;
            }
        }
        Outcome::Doc {
            record,
            tokens,
            truncated,
        }
    }
}

/// Parses one JSON line and returns the string under `field`, borrowed from `line` unless it holds
/// escapes; the error says what was wrong.
pub fn extract_text<'l>(line: &'l [u8], field: &str) -> Result<Cow<'l, str>, String> {
    let line = std::str::from_utf8(line)
        .map_err(|e| format!("invalid UTF-8 at byte {} of the line", e.valid_up_to()))?;
    // From `str`: the whole line is validated once here, not again string by string.
    let mut de = serde_json::Deserializer::from_str(line);
    let value = FieldSeed { name: field }
        .deserialize(&mut de)
        .map_err(|e| format!("malformed JSON: {e}"))?;
    de.end().map_err(|e| format!("malformed JSON: {e}"))?;
    match value {
        Field::Missing => Err(format!("missing field {field:?}")),
        Field::NotString(kind) => Err(format!("field {field:?} is {kind}, expected a string")),
        Field::Text(t) => Ok(t),
    }
}

enum Field<'de> {
    Missing,
    NotString(&'static str),
    Text(Cow<'de, str>),
}

struct FieldSeed<'f> {
    name: &'f str,
}

impl<'de> DeserializeSeed<'de> for FieldSeed<'_> {
    type Value = Field<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Field<'de>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for FieldSeed<'_> {
    type Value = Field<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Field<'de>, A::Error> {
        let mut found = Field::Missing;
        while let Some(key) = map.next_key::<Key<'de>>()? {
            if key.0 == self.name {
                found = map.next_value::<TextValue<'de>>()?.0;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }
}

/// An object key, borrowed when the JSON has no escapes in it.
struct Key<'de>(Cow<'de, str>);

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

struct TextValue<'de>(Field<'de>);

impl<'de> serde::Deserialize<'de> for TextValue<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = TextValue<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<TextValue<'de>, E> {
                Ok(TextValue(Field::Text(Cow::Borrowed(v))))
            }
            fn visit_str<E>(self, v: &str) -> Result<TextValue<'de>, E> {
                Ok(TextValue(Field::Text(Cow::Owned(v.to_owned()))))
            }
            fn visit_string<E>(self, v: String) -> Result<TextValue<'de>, E> {
                Ok(TextValue(Field::Text(Cow::Owned(v))))
            }
            fn visit_bool<E>(self, _: bool) -> Result<TextValue<'de>, E> {
                Ok(TextValue(Field::NotString("a boolean")))
            }
            fn visit_i64<E>(self, _: i64) -> Result<TextValue<'de>, E> {
                Ok(TextValue(Field::NotString("a number")))
            }
            fn visit_u64<E>(self, _: u64) -> Result<TextValue<'de>, E> {
                Ok(TextValue(Field::NotString("a number")))
            }
            fn visit_f64<E>(self, _: f64) -> Result<TextValue<'de>, E> {
                Ok(TextValue(Field::NotString("a number")))
            }
            fn visit_unit<E>(self) -> Result<TextValue<'de>, E> {
                Ok(TextValue(Field::NotString("null")))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<TextValue<'de>, A::Error> {
                while s.next_element::<IgnoredAny>()?.is_some() {}
                Ok(TextValue(Field::NotString("an array")))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<TextValue<'de>, A::Error> {
                while m.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(TextValue(Field::NotString("an object")))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extracts_the_field_and_explains_every_failure() {
        assert_eq!(
            extract_text(br#"{"text":"hi \"there\"\n","url":"u"}"#, "text").unwrap(),
            "hi \"there\"\n"
        );
        assert_eq!(
            extract_text(br#"{"body":"x","text":"y"}"#, "body").unwrap(),
            "x"
        );
        // Borrowed from the line unless the string holds escapes.
        assert!(matches!(
            extract_text(br#"{"url":"u","text":"plain"}"#, "text"),
            Ok(Cow::Borrowed("plain"))
        ));
        assert!(matches!(
            extract_text(br#"{"text":"caf\u00e9"}"#, "text"),
            Ok(Cow::Owned(t)) if t == "café"
        ));
        let err = |line: &[u8]| extract_text(line, "text").unwrap_err();
        assert_eq!(err(br#"{"url":"u"}"#), "missing field \"text\"");
        assert_eq!(
            err(br#"{"text":3}"#),
            "field \"text\" is a number, expected a string"
        );
        assert_eq!(
            err(br#"{"text":null}"#),
            "field \"text\" is null, expected a string"
        );
        assert_eq!(
            err(br#"{"text":["a"]}"#),
            "field \"text\" is an array, expected a string"
        );
        assert!(
            err(br#"{"text":"a""#).starts_with("malformed JSON: EOF while parsing"),
            "{}",
            err(br#"{"text":"a""#)
        );
        assert!(err(br#"{"text":"a"} x"#).starts_with("malformed JSON: trailing characters"));
        assert!(err(br#"["text"]"#)
            .starts_with("malformed JSON: invalid type: sequence, expected a JSON object"));
        assert_eq!(
            err(b"{\"text\":\"\xff\"}"),
            "invalid UTF-8 at byte 9 of the line"
        );
    }
}

//! Worker-side record handling: JSON parsing of one field, validation, tokenization.

use crate::records::{Payload, RawRecord};
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use std::fmt;
use tokenizers::Tokenizer;

/// What became of one record.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// A document to store.
    Doc {
        /// Line or row number.
        record: u64,
        /// Token ids.
        ids: Vec<u32>,
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

/// Turns records into outcomes with one tokenizer.
pub struct Encoder<'a> {
    /// The tokenizer (shared by all workers).
    pub tokenizer: &'a Tokenizer,
    /// JSON key (or parquet column, handled by the reader) holding the text.
    pub text_field: &'a str,
    /// Keep only each document's first N tokens.
    pub max_tokens_per_doc: Option<usize>,
}

impl Encoder<'_> {
    /// Processes one record.
    pub fn encode(&self, rec: RawRecord) -> Outcome {
        let record = rec.record;
        let text = match rec.payload {
            Payload::Bad(msg) => return Outcome::Bad { record, msg },
            Payload::Text(t) => t,
            Payload::Json(bytes) => match extract_text(&bytes, self.text_field) {
                Ok(t) => t,
                Err(msg) => return Outcome::Bad { record, msg },
            },
        };
        if text.trim().is_empty() {
            return Outcome::Empty { record };
        }
        let encoding = match self.tokenizer.encode_fast(text.as_str(), false) {
            Ok(e) => e,
            Err(e) => {
                return Outcome::Bad {
                    record,
                    msg: format!("tokenizer failed: {e}"),
                }
            }
        };
        let mut ids = encoding.get_ids().to_vec();
        if ids.is_empty() {
            return Outcome::Empty { record };
        }
        let mut truncated = false;
        if let Some(max) = self.max_tokens_per_doc {
            if ids.len() > max {
                ids.truncate(max);
                truncated = true;
            }
        }
        Outcome::Doc {
            record,
            ids,
            truncated,
        }
    }
}

/// Parses one JSON line and returns the string under `field`; the error says what was wrong.
pub fn extract_text(line: &[u8], field: &str) -> Result<String, String> {
    if let Err(e) = std::str::from_utf8(line) {
        return Err(format!(
            "invalid UTF-8 at byte {} of the line",
            e.valid_up_to()
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(line);
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

enum Field {
    Missing,
    NotString(&'static str),
    Text(String),
}

struct FieldSeed<'f> {
    name: &'f str,
}

impl<'de> DeserializeSeed<'de> for FieldSeed<'_> {
    type Value = Field;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Field, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for FieldSeed<'_> {
    type Value = Field;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Field, A::Error> {
        let mut found = Field::Missing;
        while let Some(key) = map.next_key::<Key>()? {
            if key.0 == self.name {
                found = map.next_value::<TextValue>()?.0;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }
}

/// An object key, borrowed when the JSON has no escapes in it.
struct Key(std::borrow::Cow<'static, str>);

impl<'de> serde::Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_str<E>(self, v: &str) -> Result<Key, E> {
                Ok(Key(std::borrow::Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

struct TextValue(Field);

impl<'de> serde::Deserialize<'de> for TextValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = TextValue;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_str<E>(self, v: &str) -> Result<TextValue, E> {
                Ok(TextValue(Field::Text(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<TextValue, E> {
                Ok(TextValue(Field::Text(v)))
            }
            fn visit_bool<E>(self, _: bool) -> Result<TextValue, E> {
                Ok(TextValue(Field::NotString("a boolean")))
            }
            fn visit_i64<E>(self, _: i64) -> Result<TextValue, E> {
                Ok(TextValue(Field::NotString("a number")))
            }
            fn visit_u64<E>(self, _: u64) -> Result<TextValue, E> {
                Ok(TextValue(Field::NotString("a number")))
            }
            fn visit_f64<E>(self, _: f64) -> Result<TextValue, E> {
                Ok(TextValue(Field::NotString("a number")))
            }
            fn visit_unit<E>(self) -> Result<TextValue, E> {
                Ok(TextValue(Field::NotString("null")))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<TextValue, A::Error> {
                while s.next_element::<IgnoredAny>()?.is_some() {}
                Ok(TextValue(Field::NotString("an array")))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<TextValue, A::Error> {
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

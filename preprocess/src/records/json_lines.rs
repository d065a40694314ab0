//! JSON lines: one record per `\n`-terminated line, blank lines skipped, over-long lines reported
//! without being held whole.

use super::{Payload, RawRecord};
use crate::error::{Error, Result};
use std::io::BufRead;
use std::path::Path;

/// The lines of one (possibly decompressed) JSON-lines stream.
pub struct JsonLines {
    inner: Box<dyn BufRead + Send>,
    line: u64,
    max_record_bytes: usize,
}

impl JsonLines {
    /// Lines of `inner`; a line over `max_record_bytes` becomes a [`Payload::Bad`] record.
    pub fn new(inner: Box<dyn BufRead + Send>, max_record_bytes: usize) -> Self {
        JsonLines {
            inner,
            line: 0,
            max_record_bytes,
        }
    }

    /// The next non-blank line as a record; `Err` when the stream cannot be read past this line.
    pub fn next_record(&mut self, path: &Path) -> Result<Option<RawRecord>> {
        let max = self.max_record_bytes;
        loop {
            self.line += 1;
            let mut buf = Vec::new();
            let payload = match read_line_limited(self.inner.as_mut(), &mut buf, max) {
                Ok(LineRead::Eof) => return Ok(None),
                Ok(LineRead::Line) if buf.iter().all(|b| b.is_ascii_whitespace()) => continue,
                Ok(LineRead::Line) => Payload::Json(buf),
                Ok(LineRead::TooLong(len)) => Payload::Bad(format!(
                    "record is {len} bytes, over the --max-record-bytes limit of {max}"
                )),
                Err(e) => {
                    let what = match e.kind() {
                        std::io::ErrorKind::UnexpectedEof => {
                            "truncated or corrupt compressed data".to_string()
                        }
                        _ => e.to_string(),
                    };
                    return Err(Error::Record {
                        file: path.to_path_buf(),
                        record: self.line,
                        msg: format!("cannot read past this line: {what}"),
                    });
                }
            };
            return Ok(Some(RawRecord {
                record: self.line,
                payload,
            }));
        }
    }
}

enum LineRead {
    Eof,
    Line,
    TooLong(usize),
}

/// Reads one `\n`-terminated line into `buf` (without the terminator). A line over `max` bytes is
/// consumed and discarded, and its length returned.
fn read_line_limited(
    r: &mut dyn BufRead,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<LineRead> {
    let mut total = 0usize;
    let mut any = false;
    loop {
        let available = match r.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if available.is_empty() {
            break;
        }
        any = true;
        let (take, done) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (i, true),
            None => (available.len(), false),
        };
        if total + take <= max {
            buf.extend_from_slice(&available[..take]);
        } else {
            buf.clear();
        }
        total += take;
        r.consume(take + done as usize);
        if done {
            break;
        }
    }
    if !any {
        return Ok(LineRead::Eof);
    }
    if buf.last() == Some(&b'\r') && total <= max {
        buf.pop();
    }
    Ok(if total > max {
        LineRead::TooLong(total)
    } else {
        LineRead::Line
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(input: &[u8], max: usize) -> Vec<String> {
        let mut r: &[u8] = input;
        let mut out = Vec::new();
        loop {
            let mut buf = Vec::new();
            match read_line_limited(&mut r, &mut buf, max).unwrap() {
                LineRead::Eof => return out,
                LineRead::Line => out.push(String::from_utf8(buf).unwrap()),
                LineRead::TooLong(n) => out.push(format!("<{n}>")),
            }
        }
    }

    #[test]
    fn splits_lines_and_reports_overlong_ones_without_keeping_them() {
        assert_eq!(lines(b"ab\ncd\r\nlast", 10), ["ab", "cd", "last"]);
        assert_eq!(
            lines(b"short\nthis is too long\nok\n", 6),
            ["short", "<16>", "ok"]
        );
        assert_eq!(lines(b"", 6), Vec::<String>::new());
    }
}

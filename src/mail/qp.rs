//! Quoted-printable bodies (RFC 2045, 6.7), encoded in place, one line at
//! a time.

use std::collections::HashMap;

/// Encodes message bodies as quoted-printable with CRLF line ends, one line
/// at a time, and remembers the lines it has encoded.
///
/// Quoted-printable is line-local: a hard line break ends every soft-wrapped
/// line, so encoding a body line by line gives exactly the bytes of encoding
/// it whole. The emails of one run share nearly all their lines (the
/// articles, the layout), and only the few lines with a reader's name,
/// address or links differ, so a worker that keeps one encoder encodes the
/// shared lines once. The memory it holds is bounded: when full, it starts
/// over.
#[derive(Default)]
pub struct BodyEncoder {
    lines: HashMap<Box<str>, Box<[u8]>, foldhash::fast::RandomState>,
    /// Bytes held in `lines`, keys and values.
    held: usize,
}

impl BodyEncoder {
    /// At most this many bytes of lines are remembered.
    const MAX_HELD: usize = 256 << 10;

    /// `text` as a quoted-printable body: LF and CRLF both end a line, and
    /// every line ends in CRLF on the wire.
    pub fn encode(&mut self, text: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(text.len() + text.len() / 16);
        let mut lines = text.split('\n').peekable();
        while let Some(line) = lines.next() {
            let line = line.strip_suffix('\r').unwrap_or(line);
            match self.lines.get(line) {
                Some(encoded) => out.extend_from_slice(encoded),
                None => {
                    let start = out.len();
                    encode_line(line.as_bytes(), &mut out);
                    let encoded = &out[start..];
                    let size = line.len() + encoded.len();
                    if self.held + size > Self::MAX_HELD {
                        self.lines.clear();
                        self.held = 0;
                    }
                    self.held += size;
                    self.lines.insert(line.into(), encoded.into());
                }
            }
            if lines.peek().is_some() {
                out.extend_from_slice(b"\r\n");
            }
        }
        out
    }

    /// A message's two bodies.
    pub fn bodies(&mut self, text: &str, html: &str) -> EncodedBodies {
        EncodedBodies {
            text: self.encode(text),
            html: self.encode(html),
        }
    }
}

/// `text` as a quoted-printable body, appended to `out`: the encoding of
/// [`BodyEncoder::encode`], without its memory of lines.
pub fn encode_body(text: &str, out: &mut Vec<u8>) {
    let mut lines = text.split('\n').peekable();
    while let Some(line) = lines.next() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        encode_line(line.as_bytes(), out);
        if lines.peek().is_some() {
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// The longest encoded line, without its line end (RFC 2045, 6.7).
const QP_LIMIT: usize = 76;

/// One line (no LF in it) as quoted-printable, appended to `out`: the same
/// bytes as the `quoted_printable` crate's `encode` of the line (the tests
/// compare them), written in place instead of a character at a time into
/// a string of its own. Runs of printable ASCII are copied whole; `=`,
/// control and non-ASCII bytes become `=XX`; a space or tab at the end of
/// the line is encoded; a soft line break (`=` CRLF) keeps every line
/// within 76 characters.
fn encode_line(line: &[u8], out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    // The bytes written as they are: tab and printable ASCII but `=`.
    const LITERAL: [bool; 256] = {
        let mut table = [false; 256];
        let mut b = b' ';
        while b <= b'~' {
            table[b as usize] = b != b'=';
            b += 1;
        }
        table[b'\t' as usize] = true;
        table
    };
    let literal = |b: u8| LITERAL[usize::from(b)];
    // Appends one token (a byte or its `=XX`), breaking the line first if
    // it would not fit: before the previous token when the line is full.
    fn append(out: &mut Vec<u8>, token: &[u8], on_line: &mut usize, backup: &mut usize) {
        if *on_line + token.len() > QP_LIMIT {
            if *on_line == QP_LIMIT {
                *on_line = out.len() - *backup;
                out.splice(*backup..*backup, *b"=\r\n");
            } else {
                out.extend_from_slice(b"=\r\n");
                *on_line = 0;
            }
        }
        out.extend_from_slice(token);
        *on_line += token.len();
        *backup = out.len() - token.len();
    }
    let start = out.len();
    out.reserve(line.len() + line.len() / 8);
    let mut on_line = 0;
    let mut backup = start;
    let mut i = 0;
    while i < line.len() {
        let byte = line[i];
        if QP_LIMIT - on_line >= 3 && literal(byte) {
            let stop = line.len().min(i + QP_LIMIT - on_line - 2);
            let end = line[i + 1..stop]
                .iter()
                .position(|&b| !literal(b))
                .map_or(stop, |at| i + 1 + at);
            out.extend_from_slice(&line[i..end]);
            on_line += end - i;
            backup = out.len();
            i = end;
            continue;
        }
        if literal(byte) {
            append(out, &[byte], &mut on_line, &mut backup);
        } else {
            let token = [
                b'=',
                HEX[usize::from(byte >> 4)],
                HEX[usize::from(byte & 15)],
            ];
            append(out, &token, &mut on_line, &mut backup);
        }
        i += 1;
    }
    if out.len() > start {
        let token: &[u8] = match out[out.len() - 1] {
            b' ' => b"=20",
            b'\t' => b"=09",
            _ => return,
        };
        out.pop();
        on_line -= 1;
        append(out, token, &mut on_line, &mut backup);
    }
}

/// A message's two bodies, quoted-printable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedBodies {
    pub text: Vec<u8>,
    pub html: Vec<u8>,
}

#[cfg(test)]
mod tests {
    use super::BodyEncoder;

    /// What lettre would send for `text`: CRLF line ends, then
    /// quoted-printable over the whole body.
    fn whole(text: &str) -> Vec<u8> {
        let crlf = text.replace("\r\n", "\n").replace('\n', "\r\n");
        quoted_printable::encode(crlf)
    }

    #[test]
    fn line_by_line_encoding_equals_encoding_the_whole_body() {
        let long = "word ".repeat(40);
        let samples = [
            String::new(),
            "one line".to_string(),
            "ends with a newline\n".to_string(),
            "Hello Zoë,\nhere are 3 new articles · today\n\n1. A = B\n".to_string(),
            "trailing space \ntrailing tab\t\nCRLF\r\nmixed\n".to_string(),
            format!("{long}\n{long}x\n.leading dot\n"),
            "a lone \r carriage return\n\n\n".to_string(),
            "€".repeat(60),
        ];
        let mut encoder = BodyEncoder::default();
        for round in 0..2 {
            for text in &samples {
                assert_eq!(
                    String::from_utf8(encoder.encode(text)).unwrap(),
                    String::from_utf8(whole(text)).unwrap(),
                    "round {round}, text {text:?}"
                );
                let decoded = quoted_printable::decode(
                    encoder.encode(text),
                    quoted_printable::ParseMode::Strict,
                )
                .unwrap();
                assert_eq!(
                    String::from_utf8(decoded).unwrap(),
                    text.replace("\r\n", "\n").replace('\n', "\r\n")
                );
            }
        }
    }

    #[test]
    fn lines_are_encoded_as_the_quoted_printable_crate_encodes_them() {
        // Every length up to well past two encoded lines, from pieces that
        // take each path: runs, `=`, spaces and tabs (also at the end),
        // control and multi-byte characters, at every offset.
        let pieces = ["a", " ", "\t", "=", "é", "€", "\r", ".", "~", "\u{1}"];
        for len in 0..200 {
            for seed in 0..pieces.len() {
                let line: String = (0..len)
                    .map(|i| {
                        let pick = (i * 7 + seed * 3 + i / 5) % (pieces.len() + 6);
                        pieces.get(pick).copied().unwrap_or("x")
                    })
                    .collect();
                let mut out = b"before".to_vec();
                super::encode_line(line.as_bytes(), &mut out);
                assert_eq!(
                    String::from_utf8_lossy(&out[6..]),
                    String::from_utf8_lossy(&quoted_printable::encode(&line)),
                    "line {line:?}"
                );
            }
        }
    }

    #[test]
    fn the_encoder_forgets_lines_once_it_holds_its_limit() {
        let mut encoder = BodyEncoder::default();
        for i in 0..50_000 {
            let text = format!("reader number {i} of many, with a line long enough to add up\n");
            assert_eq!(encoder.encode(&text), whole(&text));
            assert!(encoder.held <= BodyEncoder::MAX_HELD);
        }
        assert!(encoder.lines.len() < 50_000);
    }
}

//! Reading a job's data as far as its shape: the vocabulary of a text, the
//! features and labels of a CSV.
//!
//! The trainer reads the data through these functions, and the pool reads
//! the uploaded data through them at submit to learn the model's shape
//! ([`DataShape`]), so both agree on what the data fixes. Both read a
//! stream: the pool never holds a dataset in memory.

use crate::model::DataShape;
use crate::spec::{DataFormat, JobSpec};
use std::collections::BTreeSet;
use std::io::Read;

/// Data that cannot be trained on; the message says where and why.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DataError(pub String);

impl From<std::io::Error> for DataError {
    fn from(e: std::io::Error) -> Self {
        DataError(format!("cannot read the data: {e}"))
    }
}

/// The character vocabulary of UTF-8 text: the sorted set of its
/// characters. Empty text and invalid UTF-8 (with the byte where it
/// starts) are refused.
pub fn text_vocab(mut reader: impl Read) -> Result<Vec<char>, DataError> {
    let mut vocab = BTreeSet::new();
    let mut buf = vec![0u8; 1 << 16];
    // Bytes of a character cut by the end of the previous chunk.
    let mut carry = 0usize;
    let mut offset = 0u64;
    loop {
        let n = reader.read(&mut buf[carry..])?;
        if n == 0 {
            if carry > 0 {
                return Err(invalid_utf8(offset));
            }
            break;
        }
        let filled = carry + n;
        let (text, rest) = match std::str::from_utf8(&buf[..filled]) {
            Ok(s) => (s, 0),
            Err(e) if e.error_len().is_none() => {
                let valid = e.valid_up_to();
                let s = std::str::from_utf8(&buf[..valid]).map_err(|_| invalid_utf8(offset))?;
                (s, filled - valid)
            }
            Err(e) => return Err(invalid_utf8(offset + e.valid_up_to() as u64)),
        };
        vocab.extend(text.chars());
        let used = filled - rest;
        offset += used as u64;
        buf.copy_within(used..filled, 0);
        carry = rest;
    }
    if vocab.is_empty() {
        return Err(DataError("text data is empty".into()));
    }
    Ok(vocab.into_iter().collect())
}

/// What in a text would quietly end up in the vocabulary and the samples
/// though its author likely never meant it: a byte-order mark at the start,
/// and Windows line ends (`\r\n`, whose `\r` becomes a character the
/// model learns and prints). One warning each, with how to fix it.
pub fn text_warnings(mut reader: impl Read) -> Result<Vec<String>, DataError> {
    let mut warnings = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    let (mut crlf, mut first, mut last) = (0u64, true, 0u8);
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        let chunk = &buf[..n];
        if first && chunk.starts_with(&[0xEF, 0xBB, 0xBF]) {
            warnings.push(
                "the text starts with a byte-order mark (U+FEFF): it becomes a character of the \
                 vocabulary; remove it, e.g. `sed -i '1s/^\\xEF\\xBB\\xBF//' FILE`"
                    .to_owned(),
            );
        }
        first = false;
        if last == b'\r' && chunk[0] == b'\n' {
            crlf += 1;
        }
        crlf += chunk.windows(2).filter(|w| w == b"\r\n").count() as u64;
        last = chunk[n - 1];
    }
    if crlf > 0 {
        let lines = if crlf == 1 {
            "1 line ends".to_owned()
        } else {
            format!("{crlf} lines end")
        };
        warnings.push(format!(
            "{lines} in CRLF (Windows line ends): each \\r becomes a character the model \
             learns and prints; convert the file first, e.g. `dos2unix FILE` or `sed -i 's/\\r$//' FILE`"
        ));
    }
    Ok(warnings)
}

fn invalid_utf8(at: u64) -> DataError {
    DataError(format!("text data is not valid UTF-8 (at byte {at})"))
}

/// Reads a CSV with a header row, numeric feature columns and the label
/// column `label`; calls `on_row(features, label)` for every data row, in
/// file order, and returns the feature columns' names.
pub fn scan_csv(
    label: &str,
    reader: impl Read,
    mut on_row: impl FnMut(Vec<f64>, String),
) -> Result<Vec<String>, DataError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(reader);
    let headers = reader
        .headers()
        .map_err(|e| DataError(format!("cannot read CSV header: {e}")))?
        .clone();
    let label_idx = headers
        .iter()
        .position(|h| h.trim() == label)
        .ok_or_else(|| {
            DataError(format!(
                "label column {label:?} not in CSV header ({})",
                headers.iter().collect::<Vec<_>>().join(", ")
            ))
        })?;
    let features: Vec<String> = headers
        .iter()
        .enumerate()
        .filter(|&(i, _)| i != label_idx)
        .map(|(_, h)| h.trim().to_owned())
        .collect();
    if features.is_empty() {
        return Err(DataError(
            "CSV has no feature columns besides the label".into(),
        ));
    }
    let mut rows = 0usize;
    for (r, record) in reader.records().enumerate() {
        let line = r + 2;
        let record = record.map_err(|e| DataError(format!("CSV line {line}: {e}")))?;
        if record.len() != headers.len() {
            return Err(DataError(format!(
                "CSV line {line}: {} fields, header has {}",
                record.len(),
                headers.len()
            )));
        }
        let mut x = Vec::with_capacity(features.len());
        let mut y = String::new();
        for (i, field) in record.iter().enumerate() {
            if i == label_idx {
                y = field.trim().to_owned();
                continue;
            }
            let v: f64 = field.trim().parse().map_err(|_| {
                DataError(format!(
                    "CSV line {line}, column {:?}: {field:?} is not a number",
                    &headers[i]
                ))
            })?;
            if !v.is_finite() {
                return Err(DataError(format!(
                    "CSV line {line}, column {:?}: {field:?} is not finite",
                    &headers[i]
                )));
            }
            x.push(v);
        }
        on_row(x, y);
        rows += 1;
    }
    if rows == 0 {
        return Err(DataError("CSV has no data rows".into()));
    }
    Ok(features)
}

/// What the data fixes of the spec's model, read from a stream of the data.
pub fn data_shape(spec: &JobSpec, reader: impl Read) -> Result<DataShape, DataError> {
    match spec.data.format {
        DataFormat::Text => Ok(DataShape::Text {
            vocab_size: text_vocab(reader)?.len(),
        }),
        DataFormat::Csv => {
            let label = spec
                .data
                .label_column
                .as_deref()
                .ok_or_else(|| DataError("CSV data needs data.label_column".into()))?;
            let mut classes = BTreeSet::new();
            let features = scan_csv(label, reader, |_, y| {
                classes.insert(y);
            })?;
            Ok(DataShape::Csv {
                inputs: features.len(),
                classes: classes.len(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_byte_order_mark_and_windows_line_ends_are_warned() {
        let clean = super::text_warnings(&b"to be\nor not\n"[..]).unwrap();
        assert!(clean.is_empty(), "{clean:?}");
        let w = super::text_warnings(&b"\xEF\xBB\xBFto be\r\nor not\r\n"[..]).unwrap();
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].contains("byte-order mark"), "{}", w[0]);
        assert!(w[1].starts_with("2 lines end in CRLF"), "{}", w[1]);
        // A CRLF cut between two reads counts once.
        let mut text = vec![b'a'; (1 << 16) - 1];
        text.extend_from_slice(b"\r\nb");
        let w = super::text_warnings(&text[..]).unwrap();
        assert!(w[0].starts_with("1 line ends in CRLF"), "{w:?}");
    }

    use super::*;

    /// A reader that hands out one byte at a time, to cut characters.
    struct Trickle<'a>(&'a [u8]);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            match self.0.split_first() {
                Some((b, rest)) if !buf.is_empty() => {
                    buf[0] = *b;
                    self.0 = rest;
                    Ok(1)
                }
                _ => Ok(0),
            }
        }
    }

    #[test]
    fn the_vocabulary_is_the_sorted_set_of_characters_however_the_bytes_arrive() {
        let text = "ba, ça fait €20 — ab";
        let whole = text_vocab(text.as_bytes()).unwrap();
        assert_eq!(whole, text_vocab(Trickle(text.as_bytes())).unwrap());
        let mut want: Vec<char> = text.chars().collect();
        want.sort();
        want.dedup();
        assert_eq!(whole, want);
    }

    #[test]
    fn invalid_or_cut_utf8_and_empty_text_are_refused() {
        let err = text_vocab(&b"ok \xff no"[..]).unwrap_err();
        assert!(err.0.contains("at byte 3"), "{err}");
        let cut = &"€".as_bytes()[..2];
        assert!(text_vocab(cut).is_err());
        assert!(text_vocab(Trickle(b"abc\xe2\x82")).is_err());
        assert!(text_vocab(&b""[..]).unwrap_err().0.contains("empty"));
    }

    #[test]
    fn a_csv_gives_its_features_and_labels() {
        let csv = "a,label,b\n1,x,2\n3,y,4\n5,x,6\n";
        let mut rows = Vec::new();
        let features = scan_csv("label", csv.as_bytes(), |x, y| rows.push((x, y))).unwrap();
        assert_eq!(features, ["a", "b"]);
        assert_eq!(rows[1], (vec![3.0, 4.0], "y".to_owned()));
        let err = scan_csv("label", "a,label\n1,x\nno,y\n".as_bytes(), |_, _| {}).unwrap_err();
        assert!(err.0.contains("line 3"), "{err}");
        let err = scan_csv("label", "a,label\n".as_bytes(), |_, _| {}).unwrap_err();
        assert!(err.0.contains("no data rows"), "{err}");
    }
}

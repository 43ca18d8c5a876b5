//! Training data: character-level text or a numeric CSV with a label column.

use crate::rng::Rng;
use crate::TrainError;
use gradpool_core::model::{DataShape, ModelMeta};
use gradpool_core::spec::{DataFormat, JobSpec};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// What a CSV dataset needs to be reproduced: recorded in checkpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CsvInfo {
    /// Feature column names, in file order.
    pub features: Vec<String>,
    /// Per-feature mean of the training split.
    pub mean: Vec<f32>,
    /// Per-feature standard deviation of the training split (1 where 0).
    pub std: Vec<f32>,
    /// Class names; class id = index.
    pub classes: Vec<String>,
}

/// Data ready for training.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub(crate) kind: DataKind,
    /// blake3 of the raw bytes, part of the spec fingerprint.
    pub(crate) content_hash: String,
}

#[derive(Debug, Clone)]
pub(crate) enum DataKind {
    Text {
        vocab: Vec<char>,
        train: Vec<u32>,
        eval: Vec<u32>,
    },
    Csv {
        info: CsvInfo,
        train_x: Vec<f32>,
        train_y: Vec<u32>,
        eval_x: Vec<f32>,
        eval_y: Vec<u32>,
    },
}

impl Dataset {
    /// Text: char-level vocab = sorted set of chars in the data (UTF-8;
    /// invalid UTF-8 is an error); the eval split is the last
    /// `eval_fraction` of the text. CSV: header row, numeric feature columns,
    /// one label column (`spec.data.label_column`, labels are strings mapped
    /// to class ids in sorted order); rows are shuffled with the job's seed,
    /// the eval split is the last `eval_fraction` of them, and features are
    /// standardised with the mean/std of the training split.
    pub fn from_bytes(spec: &JobSpec, bytes: &[u8]) -> Result<Dataset, TrainError> {
        let content_hash = blake3::hash(bytes).to_hex().to_string();
        let kind = match spec.data.format {
            DataFormat::Text => text(spec, bytes)?,
            DataFormat::Csv => csv_data(spec, bytes)?,
        };
        Ok(Dataset { kind, content_hash })
    }

    /// What this data fixes of a model.
    pub fn shape(&self) -> DataShape {
        match &self.kind {
            DataKind::Text { vocab, .. } => DataShape::Text {
                vocab_size: vocab.len(),
            },
            DataKind::Csv { info, .. } => DataShape::Csv {
                inputs: info.features.len(),
                classes: info.classes.len(),
            },
        }
    }

    /// The model `spec` trains on this data.
    pub fn model_meta(&self, spec: &JobSpec) -> Result<ModelMeta, TrainError> {
        ModelMeta::of(spec, self.shape()).map_err(TrainError::Data)
    }

    /// Vocabulary size (text) or number of classes (CSV).
    pub fn vocab_size(&self) -> usize {
        match &self.kind {
            DataKind::Text { vocab, .. } => vocab.len(),
            DataKind::Csv { info, .. } => info.classes.len(),
        }
    }

    /// Number of training examples: characters (text) or rows (CSV).
    pub fn train_len(&self) -> usize {
        match &self.kind {
            DataKind::Text { train, .. } => train.len(),
            DataKind::Csv { train_y, .. } => train_y.len(),
        }
    }

    /// Number of evaluation examples: characters (text) or rows (CSV).
    pub fn eval_len(&self) -> usize {
        match &self.kind {
            DataKind::Text { eval, .. } => eval.len(),
            DataKind::Csv { eval_y, .. } => eval_y.len(),
        }
    }

    /// The character vocabulary of a text dataset.
    pub fn vocab(&self) -> Option<&[char]> {
        match &self.kind {
            DataKind::Text { vocab, .. } => Some(vocab),
            DataKind::Csv { .. } => None,
        }
    }

    /// Feature names, standardisation and classes of a CSV dataset.
    pub fn csv_info(&self) -> Option<&CsvInfo> {
        match &self.kind {
            DataKind::Csv { info, .. } => Some(info),
            DataKind::Text { .. } => None,
        }
    }

    /// Metadata that checkpoints record about the data (vocab or CSV info) as
    /// `(key, JSON)`.
    pub(crate) fn metadata(&self) -> (&'static str, String) {
        match &self.kind {
            DataKind::Text { vocab, .. } => ("vocab", vocab_json(vocab)),
            DataKind::Csv { info, .. } => (
                "csv",
                serde_json::to_string(info).unwrap_or_else(|_| String::from("null")),
            ),
        }
    }
}

pub(crate) fn vocab_json(vocab: &[char]) -> String {
    let strings: Vec<String> = vocab.iter().map(|c| c.to_string()).collect();
    serde_json::to_string(&strings).unwrap_or_else(|_| String::from("[]"))
}

pub(crate) fn parse_vocab(json: &str) -> Result<Vec<char>, String> {
    let strings: Vec<String> =
        serde_json::from_str(json).map_err(|e| format!("vocab is not a JSON list: {e}"))?;
    strings
        .iter()
        .map(|s| {
            let mut it = s.chars();
            match (it.next(), it.next()) {
                (Some(c), None) => Ok(c),
                _ => Err(format!("vocab entry {s:?} is not one character")),
            }
        })
        .collect()
}

fn text(spec: &JobSpec, bytes: &[u8]) -> Result<DataKind, TrainError> {
    let vocab = gradpool_core::data::text_vocab(bytes).map_err(data_error)?;
    // Valid UTF-8: `text_vocab` read all of it.
    let chars: Vec<char> = String::from_utf8_lossy(bytes).chars().collect();
    let index: BTreeMap<char, u32> = vocab
        .iter()
        .enumerate()
        .map(|(i, &c)| (c, i as u32))
        .collect();
    let ids: Vec<u32> = chars.iter().map(|c| index[c]).collect();
    let n_eval = (ids.len() as f64 * spec.data.eval_fraction).floor() as usize;
    let split = ids.len() - n_eval;
    Ok(DataKind::Text {
        vocab,
        train: ids[..split].to_vec(),
        eval: ids[split..].to_vec(),
    })
}

fn data_error(e: gradpool_core::data::DataError) -> TrainError {
    TrainError::Data(e.0)
}

fn csv_data(spec: &JobSpec, bytes: &[u8]) -> Result<DataKind, TrainError> {
    let label = spec
        .data
        .label_column
        .as_deref()
        .ok_or_else(|| TrainError::Data("CSV data needs data.label_column".into()))?;
    let mut rows: Vec<(Vec<f64>, String)> = Vec::new();
    let features = gradpool_core::data::scan_csv(label, bytes, |x, y| rows.push((x, y)))
        .map_err(data_error)?;
    let classes: Vec<String> = rows
        .iter()
        .map(|(_, y)| y.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    // Seeded Fisher-Yates shuffle.
    let mut rng = Rng::derive(spec.train.seed, "csv-shuffle", 0);
    for i in (1..rows.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        rows.swap(i, j);
    }
    let n_eval = (rows.len() as f64 * spec.data.eval_fraction).floor() as usize;
    let split = rows.len() - n_eval;
    if split == 0 {
        return Err(TrainError::Data("CSV training split is empty".into()));
    }
    let f = features.len();
    let mut mean = vec![0f64; f];
    for (x, _) in &rows[..split] {
        for (m, v) in mean.iter_mut().zip(x) {
            *m += v;
        }
    }
    mean.iter_mut().for_each(|m| *m /= split as f64);
    let mut var = vec![0f64; f];
    for (x, _) in &rows[..split] {
        for ((s, v), m) in var.iter_mut().zip(x).zip(&mean) {
            *s += (v - m) * (v - m);
        }
    }
    let std: Vec<f64> = var
        .iter()
        .map(|s| {
            let sd = (s / split as f64).sqrt();
            if sd > 1e-12 {
                sd
            } else {
                1.0
            }
        })
        .collect();
    let class_id: BTreeMap<&str, u32> = classes
        .iter()
        .enumerate()
        .map(|(i, c)| (c.as_str(), i as u32))
        .collect();
    let encode = |rows: &[(Vec<f64>, String)]| {
        let mut xs = Vec::with_capacity(rows.len() * f);
        let mut ys = Vec::with_capacity(rows.len());
        for (x, y) in rows {
            for ((v, m), s) in x.iter().zip(&mean).zip(&std) {
                xs.push(((v - m) / s) as f32);
            }
            ys.push(class_id[y.as_str()]);
        }
        (xs, ys)
    };
    let (train_x, train_y) = encode(&rows[..split]);
    let (eval_x, eval_y) = encode(&rows[split..]);
    Ok(DataKind::Csv {
        info: CsvInfo {
            features,
            mean: mean.iter().map(|&m| m as f32).collect(),
            std: std.iter().map(|&s| s as f32).collect(),
            classes,
        },
        train_x,
        train_y,
        eval_x,
        eval_y,
    })
}

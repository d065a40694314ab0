//! Model outputs on labelled sets and the task's metrics.

use crate::classifier::{Classifier, Encoded, PairBatch};
use crate::scores;
use crate::tasks::{Label, Task};
use anyhow::Result;
use candle_core::{DType, Device};
use std::collections::BTreeMap;

/// Model outputs `[N][outputs]` for `items`, in batches of `batch`, without dropout.
pub fn predict(
    model: &Classifier,
    items: &[&Encoded],
    pad_id: u32,
    batch: usize,
    device: &Device,
) -> Result<Vec<Vec<f32>>> {
    let mut out = Vec::with_capacity(items.len());
    for chunk in items.chunks(batch.max(1)) {
        let b = PairBatch::new(chunk, pad_id, device)?;
        let logits = model.forward(&b, None)?.to_dtype(DType::F32)?;
        out.extend(logits.to_vec2::<f32>()?);
    }
    Ok(out)
}

pub(super) fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, _)| i)
        .unwrap_or(0)
}

/// The task's metrics from model outputs on each dev set.
pub fn dev_metrics(
    task: Task,
    outputs: &[Vec<Vec<f32>>],
    gold: &[Vec<Label>],
) -> BTreeMap<String, f64> {
    let mut m = BTreeMap::new();
    let classes = |o: &[Vec<f32>], g: &[Label]| -> (Vec<usize>, Vec<usize>) {
        let pred = o.iter().map(|r| argmax(r)).collect();
        let gold = g
            .iter()
            .map(|l| match l {
                Label::Class(c) => *c,
                _ => usize::MAX,
            })
            .collect();
        (pred, gold)
    };
    match task {
        Task::Stsb => {
            let pred: Vec<f64> = outputs[0].iter().map(|r| r[0] as f64).collect();
            let gold: Vec<f64> = gold[0]
                .iter()
                .map(|l| match l {
                    Label::Score(s) => *s,
                    _ => f64::NAN,
                })
                .collect();
            m.insert("pearson".into(), scores::pearson(&pred, &gold));
            m.insert("spearman".into(), scores::spearman(&pred, &gold));
        }
        Task::Mnli => {
            for (i, name) in ["accuracy_m", "accuracy_mm"].iter().enumerate() {
                if let (Some(o), Some(g)) = (outputs.get(i), gold.get(i)) {
                    let (p, g) = classes(o, g);
                    m.insert(name.to_string(), scores::accuracy(&p, &g));
                }
            }
        }
        _ => {
            let (p, g) = classes(&outputs[0], &gold[0]);
            match task {
                Task::CoLA => {
                    m.insert("mcc".into(), scores::matthews(&p, &g));
                }
                Task::Mrpc | Task::Qqp => {
                    m.insert("f1".into(), scores::f1(&p, &g));
                    m.insert("accuracy".into(), scores::accuracy(&p, &g));
                }
                _ => {
                    m.insert("accuracy".into(), scores::accuracy(&p, &g));
                }
            }
        }
    }
    m
}

/// Accuracy of always predicting the most frequent class in `labels`.
pub fn majority_baseline(labels: &[Label]) -> f64 {
    let mut counts = BTreeMap::new();
    for l in labels {
        if let Label::Class(c) = l {
            *counts.entry(*c).or_insert(0usize) += 1;
        }
    }
    counts.values().max().copied().unwrap_or(0) as f64 / labels.len().max(1) as f64
}

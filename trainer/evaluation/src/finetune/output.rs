//! What a fine-tuning run leaves behind: the model, test predictions, and its progress bar.

use super::evaluate::argmax;
use super::*;
use crate::classifier::Encoded;
use crate::tasks::Task;
use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use indicatif::{ProgressBar, ProgressStyle};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use training::saved_model::Pretrained;

/// Writes a fine-tuned model in transformers' `BertForSequenceClassification` or
/// `ModernBertForSequenceClassification` layout (loadable by `transformers` and by `--init-from`),
/// without the pretraining MLM head's own tensors (BERT's `cls.*`, ModernBERT's `decoder.*`).
pub fn save_model(trained: &Trained, start: &Pretrained, task: Task, dir: &Path) -> Result<()> {
    let tensors: std::collections::HashMap<String, Tensor> = trained
        .params
        .named_vars()
        .into_iter()
        .filter(|(n, _)| !crate::classifier::mlm_head_only(n))
        .map(|(n, v)| (n, v.as_tensor().clone()))
        .collect();
    let labels = task.labels();
    let info = &start.tokenizer.info;
    let mut hf = model::encoder::hf_config(
        &start.config,
        "ForSequenceClassification",
        [info.pad_id, info.cls_id, info.sep_id, info.mask_id],
        serde_json::json!({
            "num_labels": task.num_outputs(),
            "problem_type": if task.is_regression() { "regression" } else { "single_label_classification" },
            "id2label": labels.iter().enumerate().map(|(i, l)| (i.to_string(), l.to_string())).collect::<BTreeMap<_, _>>(),
            "maskrate_task": task.dir_name(),
        }),
    );
    if start.config.arch == model::Arch::ModernBert {
        // How this classifier pools and drops out (transformers' defaults, said explicitly).
        hf["classifier_pooling"] = "cls".into();
        hf["classifier_dropout"] = 0.0.into();
    }
    // The model's logits on a fixed input, for scripts/compare_hf.py (as `trainer export`).
    let ids = training::export::check_input_ids(&start.config);
    let check_item = Encoded {
        types: vec![0; ids.len()],
        ids,
    };
    let batch =
        crate::classifier::PairBatch::new(&[&check_item], info.pad_id, trained.params.device())?;
    let check = std::collections::HashMap::from([
        (
            "input_ids".to_string(),
            batch.input_ids.to_dtype(candle_core::DType::I64)?,
        ),
        (
            "logits".to_string(),
            trained.model.forward(&batch, None)?.squeeze(0)?,
        ),
    ]);
    shared::atomic::write_dir(dir, |tmp| -> Result<()> {
        candle_core::safetensors::save(&tensors, tmp.join("model.safetensors"))?;
        candle_core::safetensors::save(&check, tmp.join("maskrate_check.safetensors"))?;
        std::fs::write(tmp.join("config.json"), serde_json::to_vec_pretty(&hf)?)?;
        std::fs::write(
            tmp.join(shared::tokenizer::TOKENIZER_FILE),
            &start.tokenizer.json,
        )?;
        Ok(())
    })
    .with_context(|| format!("writing the fine-tuned model {}", dir.display()))
}

/// Writes the GLUE submission files (`index<TAB>prediction`) for the test sets.
pub fn write_predictions(
    trained: &Trained,
    data: &TaskData,
    pad: u32,
    device: &Device,
    dir: &Path,
) -> Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    for (name, rows) in &data.test {
        let items: Vec<&Encoded> = rows.iter().map(|(e, _)| e).collect();
        let out = predict(&trained.model, &items, pad, 64, device)?;
        let mut text = String::from("index\tprediction\n");
        for ((_, id), o) in rows.iter().zip(&out) {
            let p = if data.task.is_regression() {
                format!("{:.3}", o[0].clamp(0.0, 5.0))
            } else {
                data.task.labels()[argmax(o)].to_string()
            };
            text.push_str(&format!("{id}\t{p}\n"));
        }
        let path = dir.join(name);
        shared::atomic::write_file(&path, text.as_bytes())?;
        written.push(path);
    }
    Ok(written)
}

/// A progress bar over `total` training examples.
pub fn progress_bar(total: u64, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(total);
    pb.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} examples {per_sec} ETA {eta}")
            .expect("template")
            .progress_chars("=> "),
    );
    pb
}

"""Rates per row from Python: items carry `mask_rate`, `loss_weight` and `maskable` exactly as
`trainer inspect-batch --json` does; `stratified` rates are the same set of rates per step with 0
and 2 DataLoader workers; and `MaskrateTrainer`'s loss equals LLaDA's formula computed by hand
(numpy) for each `loss_norm`."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader
from transformers import BertConfig, BertForMaskedLM, TrainingArguments

import maskrate
from maskrate.hf import LOSS_NORMS, MaskrateTrainer, masked_dataset
from maskrate.torch import MaskedDataset

KW = dict(rate_dist="stratified:0.001:1", loss_weight="inverse-rate", mask_token_fraction=1.0,
          random_token_fraction=0.0, total_steps=6, batch_size=16, seq_len=64, seed=5)
SPECIAL = (0, 100, 101, 102, 103)


def test_items_carry_the_rate_fields_of_inspect_batch(sample_shards, trainer_bin):
    mb = maskrate.MaskedBatches(sample_shards, layout="pack-docs", rate_per_document=True, **KW)
    item = mb.batch(3)
    flags = ["--rate-dist", KW["rate_dist"], "--loss-weight", "inverse-rate", "--layout", "pack-docs",
             "--rate-per-document", "--mask-token-fraction", "1", "--random-token-fraction", "0",
             "--steps", "6", "--batch-size", "16", "--seq-len", "64", "--seed", "5"]
    out = subprocess.run([trainer_bin, "inspect-batch", "--shards", sample_shards, *flags, "--step", "3",
                          "--json"], check=True, capture_output=True, text=True).stdout
    ref = json.loads(out)
    np.testing.assert_array_equal(item["mask_rate"], np.array(ref["mask_rate"]))
    np.testing.assert_array_equal(item["loss_weight"], np.array(ref["loss_weight"], dtype=np.float32))
    np.testing.assert_array_equal(item["maskable"], np.array(ref["maskable"]))
    # Each predicted token's weight is 1 / its document's rate; the others weigh nothing.
    predicted = item["labels"] != -100
    assert (item["loss_weight"][~predicted] == 0).all()
    assert (item["loss_weight"][predicted] >= 1).all()
    # A batch without a distribution or a weight has none of these fields.
    plain = maskrate.MaskedBatches(sample_shards, total_steps=6, batch_size=16, seq_len=64).batch(0)
    assert not {"mask_rate", "loss_weight", "maskable"} & set(plain)
    with pytest.raises(ValueError, match="mask_rate, loss_weight, maskable with a rate_dist"):
        maskrate.MaskedBatches(sample_shards, total_steps=6, batch_size=16, seq_len=64).batch(
            0, fields=["mask_rate"])


@pytest.mark.parametrize("workers", [0, 2])
def test_stratified_rates_are_one_per_stratum_whatever_the_workers(sample_shards, workers):
    ds = MaskedDataset(sample_shards, micro_batch=4, **KW)
    loader = DataLoader(ds, batch_size=None, num_workers=workers)
    rates = [item["mask_rate"].numpy() for item in loader]
    assert len(rates) == 6 * 4
    for step in range(6):
        step_rates = np.concatenate(rates[step * 4:(step + 1) * 4])
        strata = np.floor((step_rates - 0.001) / 0.999 * 16).astype(int)
        assert sorted(strata) == list(range(16)), (step, step_rates)
        whole = maskrate.MaskedBatches(sample_shards, **KW).batch(step)["mask_rate"]
        np.testing.assert_array_equal(step_rates, whole)


def llada(logits: np.ndarray, item: dict, norm: str, eps: float = 1e-3) -> float:
    """LLaDA's loss by hand: Σ CE/p over the masked tokens (p the row's rate, clipped at eps),
    divided as `norm` says; maskable tokens counted from the item's tokens."""
    labels, ids = item["labels"], item["input_ids"]
    original = np.where(labels >= 0, labels, ids)
    maskable = ((item["attention_mask"] == 1) & ~np.isin(original, SPECIAL)).sum(1)
    x = logits.astype(np.float64)
    lse = np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1)) + x.max(-1)
    rows = []
    for r in range(labels.shape[0]):
        cols = np.nonzero(labels[r] >= 0)[0]
        ce = lse[r, cols] - x[r, cols, labels[r, cols]]
        rows.append(ce.sum() / max(item["mask_rate"][r], eps))
    rows = np.array(rows)
    return {
        "masked": rows.sum() / (labels >= 0).sum(),
        "token": rows.sum() / maskable.sum(),
        "sequence": (rows / np.maximum(maskable, 1)).mean(),
        "batch": rows.sum() / labels.shape[0],
    }[norm]


@pytest.mark.parametrize("norm", LOSS_NORMS)
def test_maskrate_trainer_loss_is_lladas_formula(sample_shards, tmp_path, norm):
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    model = BertForMaskedLM(config).eval()
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=6, per_device_train_batch_size=16,
                             report_to=[], use_cpu=True)
    kw = {k: v for k, v in KW.items() if k not in ("total_steps", "batch_size")}
    train = masked_dataset(sample_shards, args, **kw)
    trainer = MaskrateTrainer(model=model, args=args, train_dataset=train, loss_norm=norm)
    item = next(iter(train))
    denominator = trainer._get_num_items_in_batch([item], torch.device("cpu"))
    with torch.no_grad():
        ours = trainer.compute_loss(model, dict(item), num_items_in_batch=denominator).item()
        model_inputs = {k: item[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
        logits = model(**model_inputs).logits.numpy()
    hand = llada(logits, {k: v.numpy() for k, v in item.items()}, norm)
    assert abs(ours - hand) < 1e-6 * hand, (norm, ours, hand)
    assert (item["mask_rate"].min() < 0.1) and (item["mask_rate"].max() > 0.9)


def test_an_unknown_loss_norm_is_refused(sample_shards, tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=6, per_device_train_batch_size=16,
                             report_to=[], use_cpu=True)
    train = masked_dataset(sample_shards, args, seq_len=64)
    model = BertForMaskedLM(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1,
                                       num_attention_heads=2, intermediate_size=64))
    with pytest.raises(ValueError, match="loss_norm 'rows': one of masked, token, sequence, batch"):
        MaskrateTrainer(model=model, args=args, train_dataset=train, loss_norm="rows")

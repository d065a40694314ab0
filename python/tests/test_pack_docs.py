"""`layout="pack-docs"` and `fields=`: the packed inputs transformers takes (position ids
restarting per document, cumulative segment lengths), equal to the trainer's; items that
`BertForMaskedLM` and `ModernBertForMaskedLM` train on unchanged."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertForMaskedLM, ModernBertConfig, ModernBertForMaskedLM

import maskrate
from maskrate.torch import MaskedDataset
from test_batches import trainer_batch

KW = dict(total_steps=6, batch_size=32, seq_len=96, layout="pack-docs")


def test_packed_inputs_equal_the_trainers_and_mark_each_document(trainer_bin, sample_shards):
    batches = maskrate.MaskedBatches(sample_shards, **KW)
    tok_cls = 101  # bert-base-uncased [CLS]
    for step in (0, 5):
        ours = batches.batch(step)
        ref = trainer_batch(trainer_bin, sample_shards, KW, step)
        assert np.array_equal(ours["position_ids"], np.array(ref["position_ids"]))
        assert np.array_equal(ours["cu_seq_lens_q"], np.array(ref["cu_seq_lens"], dtype=np.int32))
        assert np.array_equal(ours["cu_seq_lens_k"], ours["cu_seq_lens_q"])
        # Independently: a segment starts at every row start and at every unmasked [CLS] (each
        # framed document opens with one); positions count from there; no padding.
        ids, labels = ours["input_ids"].ravel(), ours["labels"].ravel()
        original = np.where(labels == -100, ids, labels)
        starts = [i for i in range(ids.size) if i % 96 == 0 or original[i] == tok_cls]
        assert list(ours["cu_seq_lens_q"][:-1]) == starts
        assert ours["cu_seq_lens_q"][-1] == ids.size
        lengths = np.diff(ours["cu_seq_lens_q"])
        assert ours["max_length_q"] == ours["max_length_k"] == lengths.max()
        want = np.concatenate([np.arange(n) for n in lengths]).reshape(32, 96)
        assert np.array_equal(ours["position_ids"], want)
        assert ours["attention_mask"].all()
        assert len(starts) > 32, "some rows hold several documents"


def test_fields_keep_what_is_asked_and_refuse_the_rest(sample_shards):
    batches = maskrate.MaskedBatches(sample_shards, **KW)
    item = batches.batch(1, fields=["input_ids", "labels", "position_ids"])
    assert sorted(item) == ["input_ids", "labels", "position_ids"]
    full = batches.batch(1)
    assert np.array_equal(item["input_ids"], full["input_ids"])
    with pytest.raises(ValueError, match='unknown field "positions"'):
        batches.batch(1, fields=["positions"])
    plain = maskrate.MaskedBatches(sample_shards, total_steps=6, batch_size=8)
    assert "position_ids" not in plain.batch(0)
    with pytest.raises(ValueError, match="pack-docs"):
        plain.batch(0, fields=["input_ids", "position_ids"])
    with pytest.raises(ValueError, match="pack-docs"):
        MaskedDataset(sample_shards, total_steps=6, batch_size=8, fields=["position_ids"])


def tiny_models():
    common = dict(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                  pad_token_id=0)
    bert = BertForMaskedLM(BertConfig(intermediate_size=64, max_position_embeddings=128, **common))
    modern = ModernBertForMaskedLM(ModernBertConfig(
        intermediate_size=48, bos_token_id=101, eos_token_id=102, cls_token_id=101,
        sep_token_id=102, **common))
    return [("bert", bert), ("modernbert", modern)]


@pytest.mark.parametrize("fields", [None, ["input_ids", "attention_mask", "labels"]])
def test_hf_masked_lms_train_on_items_unchanged(sample_shards, fields):
    torch.manual_seed(0)
    for layout in ("truncate", "pack-docs"):
        data = MaskedDataset(sample_shards, total_steps=3, batch_size=8, seq_len=64, layout=layout,
                             fields=fields)
        item = next(iter(data))
        if fields:
            assert sorted(item) == sorted(fields)
        for name, model in tiny_models():
            model.train()
            out = model(**item)
            assert torch.isfinite(out.loss), (name, layout)
            out.loss.backward()
            grads = [p.grad for p in model.parameters() if p.requires_grad]
            assert all(g is not None for g in grads), (name, layout)
            model.zero_grad()

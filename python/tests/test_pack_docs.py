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
        assert np.array_equal(ours["cu_seq_lens_q"], np.array(ref["cu_seq_lens_q"], dtype=np.int32))
        assert np.array_equal(ours["cu_seq_lens_k"], ours["cu_seq_lens_q"])
        # One set of names for the items and `inspect-batch --json`.
        for name in ("cu_seq_lens_k", "max_length_q", "max_length_k"):
            assert np.array_equal(np.asarray(ours[name]), np.asarray(ref[name])), name
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


def segments(position_ids):
    """(row, start, end) of every document piece of a pack-docs item (positions restart at 0)."""
    out = []
    for r, row in enumerate(position_ids.tolist()):
        starts = [i for i, p in enumerate(row) if p == 0] + [len(row)]
        out += [(r, a, b) for a, b in zip(starts, starts[1:])]
    return out


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_document_masks_keep_attention_inside_each_document(sample_shards, attn):
    """With document_attention_inputs, a document's logits in a packed row equal its logits
    alone; the item as it is (sdpa/eager ignore cu_seq_lens) lets the row's documents mix."""
    from maskrate.hf import document_attention_inputs

    torch.manual_seed(0)
    data = MaskedDataset(sample_shards, total_steps=3, batch_size=4, seq_len=128, layout="pack-docs")
    item = next(iter(data))
    pieces = [p for p in segments(item["position_ids"]) if p[1] > 0][:3]
    assert pieces, "a row holds a second document"
    for name, model in tiny_models():
        model.config._attn_implementation = attn
        model.eval()
        with torch.no_grad():
            masked = model(**document_attention_inputs(item, model.config)).logits
            mixed = model(**{k: v for k, v in item.items() if k != "labels"}).logits
            for r, a, b in pieces:
                ids = item["input_ids"][r:r + 1, a:b]
                alone = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0]
                torch.testing.assert_close(masked[r, a:b], alone, rtol=1e-4, atol=1e-4,
                                           msg=lambda m: f"{name} {attn} row {r} [{a}:{b}]: {m}")
            # The item as it is fails the same comparison: its documents see each other.
            r, a, b = pieces[0]
            assert not torch.allclose(mixed[r, a:b], masked[r, a:b], rtol=1e-4, atol=1e-4), name


def test_the_trainer_masks_documents_for_sdpa_models(sample_shards, tmp_path):
    """MaskrateTrainer.compute_loss applies the document masks: its logits and loss are those of
    the masked inputs, not of the item as it is."""
    import torch.nn.functional as F
    from transformers import TrainingArguments

    from maskrate.hf import MaskrateTrainer, document_attention_inputs, masked_dataset

    torch.manual_seed(0)
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=4,
                             report_to=[], use_cpu=True)
    data = masked_dataset(sample_shards, args, seq_len=128, layout="pack-docs")
    item = next(iter(data))
    n = int((item["labels"] != -100).sum())
    for name, model in tiny_models():
        model.eval()
        trainer = MaskrateTrainer(model=model, args=args, train_dataset=data)
        with torch.no_grad():
            loss, outputs = trainer.compute_loss(model, dict(item), return_outputs=True,
                                                 num_items_in_batch=n)
            logits_of = lambda inputs: model(**{k: v for k, v in inputs.items() if k != "labels"}).logits
            want = logits_of(document_attention_inputs(item, model.config))
            torch.testing.assert_close(outputs.logits, want, rtol=1e-5, atol=1e-6)
            assert not torch.allclose(outputs.logits, logits_of(item), rtol=1e-4, atol=1e-4), name
            wanted_loss = F.cross_entropy(want.reshape(-1, want.shape[-1]), item["labels"].reshape(-1),
                                          reduction="sum") / n
            torch.testing.assert_close(loss, wanted_loss, rtol=1e-5, atol=1e-6)

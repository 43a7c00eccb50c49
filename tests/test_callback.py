"""DriftCallback on a tiny model trained for a few real steps with Trainer: the
logged figures equal what compare gives for the weights saved at those steps,
training is left as it was, and the run is written once at the end."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainerCallback, TrainingArguments

import driftscope
from driftscope.integrations import DriftCallback


class Numbers(torch.utils.data.Dataset):
    def __init__(self, tok, n=16):
        texts = [f"{i} {i + 1} {i + 2} {i * 3}" for i in range(n)]
        enc = tok(texts, padding="max_length", max_length=12, truncation=True, return_tensors="pt")
        self.rows = [{"input_ids": ids, "attention_mask": m, "labels": ids.masked_fill(m == 0, -100)}
                     for ids, m in zip(enc["input_ids"], enc["attention_mask"])]

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


class Watcher(TrainerCallback):
    """Runs after DriftCallback at each step end: what training sees next."""

    def __init__(self):
        self.modes, self.grads_required = [], []

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.modes.append(model.training)
        self.grads_required.append(all(p.requires_grad for p in model.parameters()))


@pytest.fixture(scope="module")
def trained(family, tmp_path_factory):
    root = tmp_path_factory.mktemp("callback")
    tok = AutoTokenizer.from_pretrained(family["base"])
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token or tok.unk_token
    model = AutoModelForCausalLM.from_pretrained(family["base"])
    assert sum(p.numel() for p in model.parameters()) < 100_000  # tiny
    args = TrainingArguments(output_dir=str(root / "ckpt"), max_steps=4, save_steps=2, save_strategy="steps",
                             logging_steps=1, per_device_train_batch_size=4, learning_rate=5e-3, report_to=[],
                             use_cpu=True, seed=0, disable_tqdm=True)
    drift = DriftCallback(probes=["general"], every=2, out=root / "runs", name="training")
    watcher = Watcher()
    trainer = Trainer(model=model, args=args, train_dataset=Numbers(tok), processing_class=tok, callbacks=[drift, watcher])
    drift.attach(trainer)
    trainer.train()
    return {"root": root, "drift": drift, "watcher": watcher, "history": trainer.state.log_history, "model": model}


def logged(history, step, key):
    return next(h[key] for h in history if h.get("step") == step and key in h)


def test_logged_figures_equal_compare_on_the_saved_weights(trained, family, tmp_path):
    ckpt = trained["root"] / "ckpt"
    run = driftscope.compare(family["base"], [ckpt / "checkpoint-2", ckpt / "checkpoint-4"], ["general"],
                             sequential=True, out=tmp_path, html=False, weights=False)  # Trainer folders as they are
    for c, step in zip(run.summary["checkpoints"], (2, 4)):
        f = c["figures"]
        assert logged(trained["history"], step, "drift/kl_mean") == pytest.approx(f["kl"]["mean"], abs=1e-6)
        assert logged(trained["history"], step, "drift/kl_p99") == pytest.approx(f["kl"]["p99"], abs=1e-6)
        assert logged(trained["history"], step, "drift/top1_agreement") == pytest.approx(f["top1_agreement"], abs=1e-6)
        assert logged(trained["history"], step, "drift/numeric_shift") == pytest.approx(f["classes"]["numeric"]["shift"], abs=1e-6)
        assert logged(trained["history"], step, "drift/accuracy") == pytest.approx(f["accuracy_tuned"], abs=1e-6)
    assert logged(trained["history"], 4, "drift/kl_mean") > logged(trained["history"], 2, "drift/kl_mean") > 0


def test_training_is_left_as_it_was(trained):
    w = trained["watcher"]
    assert w.modes == [True] * 4 and all(w.grads_required)
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in trained["model"].parameters())


def test_the_run_is_written_once_with_one_checkpoint_per_step(trained):
    run = trained["root"] / "runs" / "training"
    summary = json.loads((run / "summary.json").read_text())
    assert [c["label"] for c in summary["checkpoints"]] == ["step-2", "step-4"]
    assert summary["settings"]["scoring"] == "training-callback" and (run / "report.html").is_file()
    assert len(trained["drift"].seconds) == 2
    with pytest.raises(driftscope.DriftscopeError, match="already exists"):
        DriftCallback(out=trained["root"] / "runs", name="training").on_train_begin(
            None, None, None, model=trained["model"], processing_class=AutoTokenizer.from_pretrained(run.parent.parent / "ckpt" / "checkpoint-4"))


def test_a_failed_gate_stops_training_when_asked(family, tmp_path):
    tok = AutoTokenizer.from_pretrained(family["base"])
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token or tok.unk_token
    model = AutoModelForCausalLM.from_pretrained(family["base"])
    gates = tmp_path / "gates.toml"
    gates.write_text('[[gate]]\nname = "no drift"\nfigure = "kl.mean"\nat_most = 0.0\n')
    args = TrainingArguments(output_dir=str(tmp_path / "ckpt"), max_steps=6, save_strategy="no", logging_steps=1,
                             per_device_train_batch_size=4, learning_rate=5e-3, report_to=[], use_cpu=True, seed=0,
                             disable_tqdm=True)
    drift = DriftCallback(probes=["general"], every=2, gates=gates, stop_on_gate=True, out=tmp_path / "runs",
                          accuracy=False)
    trainer = Trainer(model=model, args=args, train_dataset=Numbers(tok), processing_class=tok, callbacks=[drift])
    trainer.train()
    assert trainer.state.global_step == 2  # stopped at the first evaluation, not at 6
    assert logged(trainer.state.log_history, 2, "drift/gates_failed") == 1.0
    assert [sc.ck.label for sc in drift.scorers] == ["step-2"]

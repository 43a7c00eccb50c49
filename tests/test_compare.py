"""compare() end to end on tiny real models."""

import json
import shutil

import numpy as np
import polars as pl
import pytest
import torch

import driftscope
from driftscope.capture import capture


def run(family, tuned, tmp_path, **kw):
    kw.setdefault("out", tmp_path / "runs")
    return driftscope.compare(family["base"], [family[t] for t in tuned], ["general"], **kw)


def test_identical_copy_has_zero_drift(family, tmp_path):
    f = run(family, ["copy"], tmp_path, name="copy").figures()
    assert f["kl"]["mean"] == 0 and f["kl"]["max"] == 0 and f["js"]["max"] < 1e-12
    assert f["top1_agreement"] == 1.0
    assert all(abs(c["shift"]) == 0 for c in f["classes"].values())


def test_full_tune_on_numbers_raises_numeric_mass(family, tmp_path):
    r = run(family, ["tuned"], tmp_path, name="tuned")
    f = r.figures()
    assert f["kl"]["mean"] > 0.1
    assert f["classes"]["numeric"]["shift"] > 0.1  # trained on digit runs
    assert f["classes"]["numeric"]["log_odds_shift"] > 0
    gainers = r.tables["tokens"].filter(pl.col("direction") == "gain").sort("rank")["text"].head(3).to_list()
    assert all(t.strip().isdigit() for t in gainers), gainers
    # Figures agree with the positions table they summarise.
    pos = r.tables["positions"]
    assert f["kl"]["mean"] == pytest.approx(pos["kl"].mean())
    assert f["kl"]["max"] == pytest.approx(pos["kl"].max())
    assert f["n_positions"] == pos.height
    assert f["suites"]["general"]["n_probes"] == 40


def test_batched_equals_one_at_a_time(family, tmp_path):
    one = run(family, ["tuned"], tmp_path, name="b1", batch_size=1)
    many = run(family, ["tuned"], tmp_path, name="b7", batch_size=7)
    a, b = one.tables["positions"], many.tables["positions"]
    assert a.select("probe_id", "offset", "gold").equals(b.select("probe_id", "offset", "gold"))
    for col in ("kl", "kl_reverse", "js", "entropy_base", "entropy_tuned", "p_gold", "q_gold", "p_numeric", "q_numeric"):
        np.testing.assert_allclose(a[col].to_numpy(), b[col].to_numpy(), atol=1e-5, rtol=0, err_msg=col)
    fa, fb = one.figures(), many.figures()
    for key in ("mean", "p99", "max"):
        assert fa["kl"][key] == pytest.approx(fb["kl"][key], abs=1e-5)
    assert fa["top1_agreement"] == fb["top1_agreement"]


def test_blocks_of_eight_rows_equal_one_block_per_batch(family, tmp_path, monkeypatch):
    """Metrics run on fixed-shape blocks of scored positions (padded at the end of
    each batch); splitting a batch into many 8-row blocks changes no figure."""
    whole = run(family, ["tuned"], tmp_path, name="whole", batch_size=7)
    from driftscope import capture as C

    monkeypatch.setattr(C, "BLOCK_ELEMENTS", 1)  # block_rows() -> its minimum, 8
    assert C.block_rows(1000) == 8
    small = run(family, ["tuned"], tmp_path, name="small", batch_size=7)
    a, b = whole.tables["positions"], small.tables["positions"]
    assert a.height > 8 * 3 and a.select("probe_id", "offset", "gold").equals(b.select("probe_id", "offset", "gold"))
    for col in a.columns:
        if a[col].dtype.is_float():
            np.testing.assert_allclose(a[col].to_numpy(), b[col].to_numpy(), rtol=1e-9, atol=1e-12, err_msg=col)
    la, lb = whole.tables["layers"], small.tables["layers"]
    for col in [c for c in la.columns if c.startswith("lens_")]:
        np.testing.assert_allclose(la[col].to_numpy(), lb[col].to_numpy(), rtol=1e-9, atol=1e-12, err_msg=col)
    fa, fb = whole.figures(), small.figures()
    assert fa["kl"]["mean"] == pytest.approx(fb["kl"]["mean"], rel=1e-9)
    assert fa["classes"]["numeric"] == pytest.approx(fb["classes"]["numeric"], rel=1e-9)
    ta, tb = (r.tables["tokens"].sort("direction", "token_id") for r in (whole, small))
    assert ta["token_id"].equals(tb["token_id"])
    np.testing.assert_allclose(ta["delta"].to_numpy(), tb["delta"].to_numpy(), rtol=1e-9, atol=1e-15)
    assert whole.tables["items"].equals(small.tables["items"])  # accuracy, incl. the offset-corrected answers


def test_same_inputs_give_byte_identical_summary(family, tmp_path):
    a = run(family, ["tuned", "lora"], tmp_path, name="a")
    b = run(family, ["tuned", "lora"], tmp_path, name="b")
    assert (a.path / "summary.json").read_bytes() == (b.path / "summary.json").read_bytes()
    back = driftscope.DriftResult.from_dir(a.path)
    assert back.summary == json.loads((a.path / "summary.json").read_text())
    assert set(back.tables) >= {"positions", "items", "suites", "classes", "tokens"}
    assert back.tables["positions"].equals(a.tables["positions"])
    peaks = back.meta["peak_rss_mb"]  # meta.json: per-phase peak resident memory
    assert set(peaks) == {"loaded", "drift", "accuracy", "tables", "run"}
    assert all(v > 0 for v in peaks.values()) and peaks["run"] == max(peaks.values())


def test_lora_adapter_equals_its_merged_model(family, tmp_path):
    """The adapter is applied in memory (nothing merged to disk) and scores
    exactly like the model peft merges from it."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    before = sorted(p.name for p in family["lora"].iterdir())
    r = run(family, ["lora"], tmp_path, name="lora")
    assert sorted(p.name for p in family["lora"].iterdir()) == before
    assert r.checkpoints[0]["kind"] == "adapter"
    merged_dir = tmp_path / "merged"
    base = AutoModelForCausalLM.from_pretrained(family["base"])
    PeftModel.from_pretrained(base, family["lora"]).merge_and_unload().save_pretrained(merged_dir)
    AutoTokenizer.from_pretrained(family["base"]).save_pretrained(merged_dir)
    m = driftscope.compare(family["base"], [merged_dir], ["general"], out=None)
    assert r.figures()["kl"]["mean"] > 0.01
    assert m.figures()["kl"]["mean"] == pytest.approx(r.figures()["kl"]["mean"], abs=1e-5)


def test_several_checkpoints_share_one_base_pass(family, tmp_path):
    r = run(family, ["copy", "lora", "tuned"], tmp_path, name="three")
    assert [c["label"] for c in r.checkpoints] == ["copy", "lora", "tuned"]
    kls = [c["figures"]["kl"]["mean"] for c in r.checkpoints]
    assert kls[0] == 0 < kls[1] and kls[2] > 0
    assert set(r.tables["positions"]["checkpoint"].unique()) == {"copy", "lora", "tuned"}


def test_head_sees_no_position_and_hooks_are_removed(family):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(family["base"]).eval()
    head = model.get_output_embeddings()
    seen = []
    watcher = head.register_forward_hook(lambda m, a, o: seen.append(tuple(o.shape)))
    ids = torch.randint(0, 100, (3, 9))
    layer = model.model.layers[0]
    with pytest.raises(RuntimeError, match="boom"):
        with capture(model, {"layer0": layer}) as state:
            state.rows, state.cols = torch.tensor([0, 1, 2]), torch.tensor([8, 4, 0])
            model(input_ids=ids)
            assert state.final.shape == (3, 32) and state.modules["layer0"].shape == (3, 32)
            raise RuntimeError("boom")
    watcher.remove()
    assert seen[0] == (3, 0, model.config.vocab_size)  # never (batch, length, vocab): the head reads no weight
    assert not head._forward_pre_hooks and not head._forward_hooks and not layer._forward_hooks


def test_extended_tokenizer_compares_shared_ids(family, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(family["tuned"])
    tok.add_tokens(["<tool>", "<call>"])
    model = AutoModelForCausalLM.from_pretrained(family["tuned"])
    model.resize_token_embeddings(len(tok))
    ext = tmp_path / "extended"
    model.save_pretrained(ext)
    tok.save_pretrained(ext)
    r = driftscope.compare(family["base"], [ext], ["general"], out=None)
    c = r.checkpoints[0]
    assert c["vocab"] == {"status": "extended", "shared_vocab": len(tok) - 2, "new_tokens": 2}
    assert 0 < c["figures"]["new_token_mass"] < 1
    plain = driftscope.compare(family["base"], [family["tuned"]], ["general"], out=None)
    assert plain.checkpoints[0]["figures"]["new_token_mass"] == 0


def test_a_tuned_folder_with_the_base_tokenizer_files_shares_its_tokenizer(family, tmp_path):
    """Byte-identical tokenizer files: one tokenizer serves both (no second load, nothing to
    align); a changed file, or an extended tokenizer, gets its own."""
    import shutil

    from driftscope.models import align_vocab, load_base, load_tuned

    base = load_base(family["base"], "cpu", "float32")
    same = load_tuned(family["tuned"], base)
    assert same.tokenizer is base.tokenizer and align_vocab(base.tokenizer, same.tokenizer).status == "identical"
    edited = tmp_path / "edited"
    shutil.copytree(family["tuned"], edited)
    config = edited / "tokenizer_config.json"
    config.write_text(config.read_text().replace("{", '{"edited": 1, ', 1))
    own = load_tuned(edited, base)
    assert own.tokenizer is not base.tokenizer and own.tokenizer.name_or_path == str(edited)
    assert align_vocab(base.tokenizer, own.tokenizer).status == "identical"


def test_load_base_hands_the_weights_over_before_the_tokenizer_loads(family, monkeypatch):
    """on_model runs as soon as the weights are in (the base head's grams start there, on a
    thread), before the tokenizer loads; for an adapter as BASE, on the merged model."""
    import driftscope.models as models

    order = []
    real = models._load_tokenizer
    monkeypatch.setattr(models, "_load_tokenizer", lambda path: order.append("tokenizer") or real(path))
    base = models.load_base(family["base"], "cpu", "float32", on_model=lambda m: order.append(m))
    assert order == [base.model, "tokenizer"]
    order.clear()
    merged = models.load_base(family["lora"], "cpu", "float32", on_model=lambda m: order.append(m))
    assert merged.kind == "adapter" and order[-1] is merged.model


def test_interrupted_write_leaves_nothing(family, tmp_path, monkeypatch):
    r = run(family, ["copy"], tmp_path, out=None)
    target = tmp_path / "runs" / "x"

    def broken(self, *a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(pl.DataFrame, "write_parquet", broken)
    with pytest.raises(OSError):
        r.to_dir(target)
    assert not target.exists() and list((tmp_path / "runs").iterdir()) == []
    shutil.rmtree(tmp_path / "runs")

"""Drift live during training: a transformers TrainerCallback.

    drift = DriftCallback(probes=["general"], every=100, gates="default")
    trainer = Trainer(model=model, args=args, train_dataset=ds, callbacks=[drift])
    drift.attach(trainer)  # optional: first in line, so TensorBoard/W&B/MLflow see its figures
    trainer.train()

At train start the model IS the base: the callback captures it once
(cached.record_base: top-k log-probs and exact scalars per scored position,
the base's answers; no second copy of the model). Every `every` steps it scores
the model being trained against that capture (cached.cached_pass) in eval
mode under inference mode, puts it back into train mode, and logs drift/*
figures through the Trainer's own log. At train end it writes one run, one
checkpoint per evaluated step labelled step-N, as `compare base step-N ...
--sequential` would. With `gates=` and `stop_on_gate=True`, a failed gate stops
training (the failing rules are logged).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path

from transformers import TrainerCallback

from driftscope.answers import OffsetEstimator, tuned_answers
from driftscope.assemble import assemble
from driftscope.cached import LAYERS_NOTE, cached_pass, record_base
from driftscope.drift import DriftAccumulator
from driftscope.inputs import load_suites, prepare
from driftscope.models import Checkpoint, VocabAlignment, config_context
from driftscope.paired import Scorer
from driftscope.result import DriftResult, check_run_target
from driftscope.run import Settings
from driftscope.verdict import Thresholds

log = logging.getLogger("driftscope")
LOGGED = {"kl_mean": ("kl", "mean"), "kl_p99": ("kl", "p99"), "top1_agreement": ("top1_agreement",),
          "numeric_shift": ("classes", "numeric", "shift"), "accuracy": ("accuracy_tuned",),
          "accuracy_change": ("accuracy_change",)}


class DriftCallback(TrainerCallback):
    def __init__(self, probes=None, every: int | None = None, gates=None, *, stop_on_gate: bool = False,
                 out: str | Path | None = "reports", name: str | None = None, base: str | None = None,
                 accuracy: bool = True, classes: dict[str, str] | None = None, thresholds: Thresholds | None = None,
                 **settings):
        """probes: suite files or built-in names (default: general). every: steps between
        evaluations (default: at each evaluation of the Trainer). base: how the run names
        the base (default: the model at train start). settings: as compare's (batch_size,
        max_length, chat_template, fewshot, seed, top_k)."""
        if every is not None and every < 1:
            raise ValueError(f"every={every}: must be at least 1")
        self.suites = load_suites(probes)  # a bad suite fails here, before training
        self.every, self.gates, self.stop_on_gate = every, gates, stop_on_gate
        if gates is not None:
            from driftscope.gates import load_gates

            load_gates(gates)
        self.out, self.name, self.base_name = out, name, base
        self.accuracy, self.classes, self.th = accuracy, classes, thresholds or Thresholds()
        self.s = Settings(**settings)
        self.s.check()
        self.cache = self.inputs = self.tokenizer = None
        self.scorers: list[Scorer] = []
        self.answers: list = []
        self.pending: dict[str, float] = {}
        self.seconds: list[float] = []  # per evaluation
        self.result: DriftResult | None = None

    def attach(self, trainer) -> DriftCallback:
        """Put this callback first, so reporters logging after it see its figures."""
        handler = trainer.callback_handler
        if self in handler.callbacks:
            handler.callbacks.remove(self)
        handler.callbacks.insert(0, self)
        return self

    # -- events ---------------------------------------------------------------

    def on_train_begin(self, args, state, control, model=None, processing_class=None, **kwargs):
        self.tokenizer = processing_class or kwargs.get("tokenizer")
        if self.tokenizer is None:
            raise ValueError("DriftCallback needs the tokenizer: pass processing_class=tokenizer to the Trainer")
        self.run_dir = None if self.out is None else check_run_target(
            Path(self.out) / (self.name or time.strftime("%Y%m%d-%H%M%S-training")), overwrite=False)
        s = self.s
        self.inputs = prepare(self.suites, self.tokenizer, [model], n_ctx=config_context(model.config) or 2048,
                              chat_template=s.chat_template, fewshot=s.fewshot, seed=s.seed, max_length=s.max_length,
                              batch_size=s.batch_size, classes=self.classes)
        self.answering = self.accuracy and any(p.answer is not None for p in self.inputs.probes)
        with _evaluating(model):
            self.cache = record_base(self._checkpoint(model, "base"), self.inputs, k=s.top_k, seed=s.seed,
                                     accuracy=self.answering, batch_size=s.batch_size)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.every and state.global_step % self.every == 0:
            self._evaluate(state, control, model)

    def on_evaluate(self, args, state, control, model=None, **kwargs):
        if not self.every:
            self._evaluate(state, control, model)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.pending and logs is not None:
            logs.update(self.pending)
            if state.log_history:
                state.log_history[-1].update(self.pending)
            self.pending = {}

    def on_train_end(self, args, state, control, **kwargs):
        if self.scorers:
            self.result = DriftResult(*self._assemble(self.scorers, self.answers), self._meta(state))
            if self.run_dir is not None:
                self.result.meta["name"] = self.run_dir.name
                self.result.to_dir(self.run_dir, report=True, index=True)

    # -- work -----------------------------------------------------------------

    def _evaluate(self, state, control, model) -> None:
        if self.cache is None or any(sc.ck.label == f"step-{state.global_step}" for sc in self.scorers):
            return
        started = time.perf_counter()
        ck = self._checkpoint(model, f"step-{state.global_step}")
        inputs = self.inputs
        acc = DriftAccumulator(ck.label, [x.name for x in inputs.suites], inputs.suite_of, inputs.table, inputs.vocab)
        scorer = Scorer(ck, VocabAlignment("identical", len(self.tokenizer), 0), acc,
                        OffsetEstimator(len(inputs.probes), inputs.vocab, self.s.seed))
        with _evaluating(model):
            cached_pass(scorer, self.cache, inputs)
            answers = [tuned_answers(ck, scorer.est, self.cache.items["answers"], self.tokenizer, inputs.probes,
                                     inputs.encoded, inputs.chat, inputs.max_length, self.s.batch_size,
                                     inputs.vocab)] if self.answering else []
        ck.release()  # the run keeps the figures, not the model
        self.scorers.append(scorer)
        self.answers += answers
        summary, _ = self._assemble([scorer], answers)
        figs = summary["checkpoints"][0]["figures"]
        self.pending = {f"drift/{key}": _get(figs, path) for key, path in LOGGED.items() if _get(figs, path) is not None}
        self.seconds.append(time.perf_counter() - started)
        control.should_log = True
        if self.gates is not None:
            self._gate(summary, control)

    def _gate(self, summary: dict, control) -> None:
        from driftscope.gates import evaluate
        from driftscope.gates_io import outcome, to_text

        table = evaluate(summary, self.gates)
        word = outcome(table)
        self.pending["drift/gates_failed"] = float(word == "failed")
        if word == "failed":
            log.warning("driftscope gates failed at %s:\n%s", summary["checkpoints"][0]["label"],
                        to_text(table, only_problems=True))
            if self.stop_on_gate:
                control.should_training_stop = True

    def _checkpoint(self, model, label: str) -> Checkpoint:
        return Checkpoint(label, f"(training) {label}", "training", "", model, self.tokenizer)

    def _assemble(self, scorers, answers):
        base = {"label": self.base_name or "base (the model at train start)", "path": self.base_name or "",
                "kind": "training", "fingerprint": ""}
        return assemble(scorers, self.inputs, answers, base=base, base_path=None,
                        settings={**asdict(self.s), "scoring": "training-callback"}, th=self.th, seed=self.s.seed,
                        top_tokens=self.s.top_tokens, notes=[LAYERS_NOTE], weights=False, accuracy=self.accuracy)

    def _meta(self, state) -> dict:
        return {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "seconds": round(sum(self.seconds), 2),
                "evaluation_seconds": [round(x, 3) for x in self.seconds], "global_step": state.global_step}


class _evaluating:
    """Eval mode inside, the model's own mode (train, as a rule) restored after."""

    def __init__(self, model):
        self.model = model

    def __enter__(self):
        self.was_training = self.model.training
        self.model.eval()

    def __exit__(self, *exc):
        self.model.train(self.was_training)


def _get(figs: dict, path: tuple[str, ...]):
    for key in path:
        if not isinstance(figs, dict) or key not in figs:
            return None
        figs = figs[key]
    return figs if isinstance(figs, (int, float)) and not isinstance(figs, bool) else None

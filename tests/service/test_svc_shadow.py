"""Shadow statistics against a naive reference; the evaluator's bounded queue; per-worker
results summed in SQL."""

from __future__ import annotations

import numpy as np
import pytest
from svc_helpers import make_transformer_onnx
from test_svc_registry import upload

from service.pipeline import Candidate, IdentifyOutcome, IdentifyReply
from service.registry import shadow_store
from service.registry.audit import LOCAL_ACTOR
from service.registry.shadow import ShadowEvaluator, decisions
from service.registry.shadow_stats import (
    BIN_WIDTH,
    Decision,
    ShadowStats,
    change_kind,
)
from service.registry.store import activate_transformer


def _random_decision(rng: np.random.Generator) -> Decision:
    if rng.random() < 0.1:
        return Decision(None, None, None)
    identity = int(rng.integers(1, 6))
    score = float(rng.uniform(-1, 1))
    return Decision(identity, score, identity if score >= 0.3 else None)


def test_stats_match_a_naive_reference():
    rng = np.random.default_rng(0)
    replies = []
    for _ in range(300):
        n = int(rng.integers(1, 4))
        replies.append(
            ([_random_decision(rng) for _ in range(n)], [_random_decision(rng) for _ in range(n)])
        )
    stats = ShadowStats()
    for mine, theirs in replies:
        stats.add_reply(active=mine, candidate=theirs)
    pairs = [(m, t) for mine, theirs in replies for m, t in zip(mine, theirs, strict=True)]
    both = [(m, t) for m, t in pairs if m.top1_identity and t.top1_identity]
    summary = stats.summary()
    assert summary["images"] == len(pairs) and summary["requests"] == len(replies)
    assert summary["top1_agreement"] == pytest.approx(
        sum(m.top1_identity == t.top1_identity for m, t in both) / len(both), abs=1e-6
    )
    changed = [(m, t) for m, t in pairs if m.match_identity != t.match_identity]
    assert summary["decision_change_rate"] == pytest.approx(len(changed) / len(pairs), abs=1e-6)
    assert summary["reply_change_rate"] == pytest.approx(
        sum(
            any(m.match_identity != t.match_identity for m, t in zip(a, b, strict=True))
            for a, b in replies
        )
        / len(replies),
        abs=1e-6,
    )
    kinds = summary["decision_changes"]
    assert kinds["total"] == len(changed)
    assert kinds["match_to_no_match"] == sum(t.match_identity is None for _, t in changed)
    assert kinds["no_match_to_match"] == sum(m.match_identity is None for m, _ in changed)
    for role, index in (("active", 0), ("candidate", 1)):
        scores = np.array([p[index].top1_score for p in pairs if p[index].top1_score is not None])
        got = summary["scores"][role]
        assert got["n"] == len(scores)
        assert got["mean"] == pytest.approx(scores.mean(), abs=1e-6)
        assert sum(got["histogram"]["counts"]) == len(scores)
        for name, q in (("p05", 0.05), ("p50", 0.5), ("p95", 0.95)):
            # The histogram quantile is the upper edge of the bin holding the true one.
            assert (
                0
                <= got["quantiles"][name] - np.quantile(scores, q, method="inverted_cdf")
                <= (BIN_WIDTH + 1e-9)
            )


def test_merge_and_json_round_trip_add_up():
    rng = np.random.default_rng(1)
    parts = [ShadowStats() for _ in range(3)]
    whole = ShadowStats()
    for i in range(90):
        mine, theirs = [_random_decision(rng)], [_random_decision(rng)]
        parts[i % 3].add_reply(active=mine, candidate=theirs)
        whole.add_reply(active=mine, candidate=theirs)
    merged = ShadowStats()
    for part in parts:
        merged.merge(ShadowStats.from_dict(part.to_dict()))
    mine, reference = merged.to_dict(), whole.to_dict()
    for role in ("active", "candidate"):
        total = mine["scores"][role].pop("total")
        assert total == pytest.approx(reference["scores"][role].pop("total"))
    assert mine == reference and mine["images"] == 90
    assert ShadowStats.from_dict({}).summary()["top1_agreement"] is None


def test_change_kinds():
    assert change_kind(Decision(1, 0.9, 1), Decision(1, 0.2, None)) == "match_to_no_match"
    assert change_kind(Decision(1, 0.2, None), Decision(1, 0.9, 1)) == "no_match_to_match"
    assert change_kind(Decision(1, 0.9, 1), Decision(2, 0.9, 2)) == "match_to_other"
    assert change_kind(Decision(1, 0.2, None), Decision(2, 0.2, None)) is None


def _reply(version: str) -> IdentifyReply:
    top = Candidate(identity_id=1, external_id=None, name=None, score=0.9, face_id=1)
    outcome = IdentifyOutcome(
        index=0, filename=None, candidates=[top], match=top, backbone="b", transformer=version
    )
    return IdentifyReply(
        queries_new=np.ones((1, 8), np.float32),
        outcomes=[outcome],
        top_k=5,
        threshold=None,
        transformer=version,
    )


def test_a_full_queue_drops_samples_and_never_blocks(configured):
    """The request path only enqueues; with no room the sample is dropped and counted."""
    a = upload(configured, make_transformer_onnx(seed=1))
    b = upload(configured, make_transformer_onnx(seed=2))
    activate_transformer(
        session_factory=configured.session_factory, settings=configured.settings, version=a.version
    )
    shadow_store.create_run(
        session_factory=configured.session_factory,
        candidate=b.version,
        baseline=a.version,
        sample_rate=1.0,
        actor=LOCAL_ACTOR,
        reason=None,
    )
    settings = configured.settings.model_copy(update={"shadow_queue_size": 2})
    calls: list[int] = []

    def rank(**kw):
        calls.append(1)
        return [], 0.5

    evaluator = ShadowEvaluator(
        session_factory=configured.session_factory, settings=settings, rank=rank
    )
    evaluator.refresh()  # follows the running run; the thread is NOT started
    assert evaluator.running == b.version
    for _ in range(5):
        evaluator.offer(_reply(a.version))
    evaluator.offer(_reply("t-other"))  # served by another version: skipped, not queued
    assert evaluator.queue_depth == 2
    evaluator.flush()
    with configured.session() as session:
        run = shadow_store.running_run(session)
        stats = shadow_store.merged_stats(session, run_id=run.id)
    assert (stats.dropped, stats.skipped, stats.images) == (3, 1, 0)
    assert calls == []  # nothing ran on the request path


def test_results_of_several_workers_are_summed(configured):
    a = upload(configured, make_transformer_onnx(seed=1))
    b = upload(configured, make_transformer_onnx(seed=2))
    activate_transformer(
        session_factory=configured.session_factory, settings=configured.settings, version=a.version
    )
    run = shadow_store.create_run(
        session_factory=configured.session_factory,
        candidate=b.version,
        baseline=a.version,
        sample_rate=0.5,
        actor=LOCAL_ACTOR,
        reason=None,
    )
    for worker, n in (("w1", 3), ("w2", 4)):
        stats = ShadowStats()
        for _ in range(n):
            stats.add_reply(active=[Decision(1, 0.9, 1)], candidate=[Decision(1, 0.8, 1)])
        for _ in range(2):  # rewriting its own row never double counts
            shadow_store.save_worker_stats(
                session_factory=configured.session_factory,
                run_id=run.id,
                worker=worker,
                stats=stats.to_dict(),
            )
    with configured.session() as session:
        info, merged = shadow_store.get_run(session, run_id=run.id)
    assert info.workers == 2 and merged.images == 7 and merged.top1_agree == 7


def test_decisions_of_outcomes():
    top = Candidate(identity_id=4, external_id=None, name=None, score=0.4, face_id=9)
    none = IdentifyOutcome(
        index=0, filename=None, candidates=[], match=None, backbone="", transformer=""
    )
    below = IdentifyOutcome(
        index=1, filename=None, candidates=[top], match=None, backbone="", transformer=""
    )
    assert decisions([none, below]) == [Decision(None, None, None), Decision(4, 0.4, None)]

"""Search latency with two embedding spaces vs one, on the kit gallery (issue 10 target: <= 1.3x).

The gallery is the migration simulation's (docs/PROTOCOL.md): the eval split's templates +
distractors in the old space (1,431 vectors), and in the native space either the native vectors
that `facebridge migration simulate` captured (``captured``) or a full native copy of the
gallery (``full``: the worst case, every identity migrated). Queries are the test images, one
per request (batch 1, as /v1/identify is mostly called), through the service's own code:
``service.migration.search.search_spaces`` + ``fused_candidates`` (FAISS flat stores, fusion
on log-FAR with the transformer's calibrations, the union-bound count per identity). The
service's SQL lookup (identities and their vector counts, one round trip a request) is
replaced by arrays. Reference in the same run: the same code with the native store left out
(one space). Each query goes through every setup in turn, so load changes hit them alike;
bench/migration_identify.py measures whole /v1/identify requests, SQL included.

    .venv/bin/python bench/migration_latency.py --transformer FILE.onnx [--pairs PAIRS] [--rounds 3]

Needs the kit (or --pairs): without either it says so and exits 2.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.contracts import load_pairs
from service.gallery.engines.faiss import FaissStore
from service.gallery.store import set_faiss_threads
from service.inference.transformer import TransformerRunner
from service.kit import find_kit_dir
from service.migration.capture import CaptureRule
from service.migration.search import SpaceQuery, fused_candidates, search_spaces
from service.migration.simulate import NATIVE, OLD, Simulation, migration_split

TOP_K = 5


def _once(
    sim: Simulation, stores: dict, query: SpaceQuery, lookup: np.ndarray, counts: dict
) -> float:  # type: ignore[type-arg]
    """Seconds of one request's search + fusion, through the service's code."""
    start = time.perf_counter()
    hits = search_spaces(
        query, old_space=OLD, stores=stores, identity_of=lambda ids: lookup[ids], top_k=TOP_K
    )
    fused_candidates(
        hits,
        calibrations=sim.calibrations,
        old_space=OLD,
        top_k=TOP_K,
        vectors_of=lambda ids: {i: counts[i] for i in ids if i in counts},
    )
    return time.perf_counter() - start


def _vectors_per_identity(stores: dict, lookup: np.ndarray) -> dict[int, int]:  # type: ignore[type-arg]
    """identity -> its vectors in ``stores`` (what the service's SQL lookup counts)."""
    ids = np.concatenate([lookup[store.id_array()] for store in stores.values()])
    found, n = np.unique(ids[ids >= 0], return_counts=True)
    return dict(zip(found.tolist(), n.tolist(), strict=True))


def _time(sim: Simulation, setups: dict, queries: SpaceQuery, rounds: int) -> dict[str, float]:  # type: ignore[type-arg]
    """Median seconds per setup, the best of ``rounds``: each query through every setup in
    turn (the order rotates), so a change in the machine's load hits them all alike."""
    lookup = np.asarray(sim.identity, np.int64)
    counts = {name: _vectors_per_identity(stores, lookup) for name, stores in setups.items()}
    names = list(setups)
    best = dict.fromkeys(names, np.inf)
    for _ in range(rounds):
        seen: dict[str, list[float]] = {name: [] for name in names}
        for r in range(queries.mapped.shape[0]):
            one = SpaceQuery(
                mapped=queries.mapped[r : r + 1], native={NATIVE: queries.native[NATIVE][r : r + 1]}
            )
            for j in range(len(names)):
                name = names[(r + j) % len(names)]
                seen[name].append(_once(sim, setups[name], one, lookup, counts[name]))
        for name, times in seen.items():
            best[name] = min(best[name], statistics.median(times))
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=Path, default=None)
    parser.add_argument("--transformer", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    set_faiss_threads(1)
    kit = find_kit_dir()
    path = args.pairs or (kit / "lfw" / "pairs.npz" if kit else None)
    if path is None:
        print("kit absent and no --pairs: nothing to measure on (give --pairs)")
        return 2
    pairs = load_pairs(path, mmap=False)
    rows = (
        np.flatnonzero(pairs.split == "eval") if pairs.split is not None else np.arange(len(pairs))
    )
    split = migration_split(pairs, rows)
    sim = Simulation(
        pairs=pairs,
        split=split,
        transformer=TransformerRunner(args.transformer),
        rule=CaptureRule(),
    )
    sim.stream(np.random.default_rng(0).permutation(split.stream))
    native = sim.queries(split.test)
    queries = SpaceQuery(mapped=sim.transformer.map(native), native={NATIVE: native})
    gallery = np.concatenate([split.templates, split.distractors])
    full = FaissStore(dim=None, space=NATIVE)
    full.add(ids=np.arange(gallery.size), vectors=sim.queries(gallery))
    setups = {
        "one space (old)": {OLD: sim.stores[OLD]},
        f"two spaces, captured ({sim.stores[NATIVE].ntotal} native)": sim.stores,
        f"two spaces, full ({full.ntotal} native)": {OLD: sim.stores[OLD], NATIVE: full},
    }
    medians = _time(sim, setups, queries, args.rounds)
    reference = medians["one space (old)"]
    print(f"pairs: {path} ({split.test.size} queries, batch 1, top_k {TOP_K}, 1 FAISS thread)")
    print("| gallery | median search + fusion (ms) | vs one space |")
    print("|---|---|---|")
    for name, seconds in medians.items():
        print(f"| {name} | {seconds * 1000:.3f} | {seconds / reference:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

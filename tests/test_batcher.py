from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from cadenza.batcher import Batcher, BatcherClosed
from cadenza.model import PRESETS, KVCache, build
from cadenza.stream import GenerationOptions, System

STYLE = np.random.default_rng(3).standard_normal(384).astype(np.float32)


@pytest.fixture(scope="module")
def model():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the server's processes: one thread, many streams
    yield build(PRESETS["debug"], seed=1)
    torch.set_num_threads(threads)


def primed(model, length: int, batch: int = 2) -> KVCache:
    cache = KVCache(model.config, batch)
    if length:
        tokens = torch.randint(0, model.config.vocab_size, (1, length)).expand(batch, -1)
        with torch.inference_mode():
            model(tokens, mod=model.condition(torch.randn(batch, 384)), cache=cache)
    return cache


def test_decode_matches_each_stream_alone(model):
    torch.manual_seed(0)
    caches = [primed(model, n, b) for n, b in [(5, 2), (0, 1), (100, 2), (31, 1)]]
    for c in caches[1:]:  # positions that differ from lengths, as after an eviction
        c.position += 7
    mods = [model.condition(torch.randn(c.k[0].shape[0], 384)) for c in caches]
    tokens = [3, 50, 200, 7]
    with torch.inference_mode():
        alone = []
        for c, mod, t in zip(caches, mods, tokens):
            cc = c.copy()
            x = torch.full((c.k[0].shape[0], 1), t)
            alone.append(model(x, mod=mod, cache=cc)[:, -1])
        rows = torch.tensor([t for c, t in zip(caches, tokens) for _ in range(c.k[0].shape[0])])
        together = model.decode(rows, torch.cat(mods, dim=2), caches)
    torch.testing.assert_close(together, torch.cat(alone), rtol=1e-5, atol=1e-5)
    assert [c.length for c in caches] == [6, 1, 101, 32]
    assert [c.position for c in caches] == [6, 8, 108, 39]


def test_decode_checks_its_arguments(model):
    cache = primed(model, 4)
    mod = model.condition(torch.randn(2, 384))
    with pytest.raises(ValueError, match="rows"):
        model.decode(torch.tensor([1, 2, 3]), mod, [cache])
    full = primed(model, model.config.max_seq_len)
    with pytest.raises(ValueError, match="full"):
        model.decode(torch.tensor([1, 1]), mod, [full])


def generate(system: System, seed: int, chunks: int = 2) -> list[int]:
    state = system.init_state(seed=seed)
    for _ in range(chunks):
        _, state = system.generate_chunk(state, STYLE, GenerationOptions())
    return state.tokens


def test_systems_on_threads_decode_together_and_play_the_same(model):
    expected = {}
    with System(model) as alone:
        for seed in range(4):
            expected[seed] = generate(alone, seed)
    with Batcher(model) as batcher:
        systems = [System(model, batcher=batcher) for _ in range(4)]
        got: dict[int, list[int]] = {}
        threads = [
            threading.Thread(target=lambda i=i: got.__setitem__(i, generate(systems[i], i)))
            for i in range(4)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for s in systems:
            s.close()
        assert batcher.stats.steps >= sum(len(v) for v in expected.values()) // 2
    assert got == expected


def test_steps_that_arrive_during_a_batch_form_the_next_one(model, monkeypatch):
    batcher = Batcher(model)
    decode, entered, release = model.decode, threading.Event(), threading.Event()

    def slow_decode(*args):
        entered.set()
        release.wait(10)
        return decode(*args)

    monkeypatch.setattr(model, "decode", slow_decode)
    mod = model.condition(torch.randn(2, 384))
    caches = [primed(model, n) for n in (3, 9, 20, 1)]
    results: list[np.ndarray] = [None] * 4  # type: ignore[list-item]

    def step(i: int) -> None:
        results[i] = batcher.step(5, mod, caches[i])

    first = threading.Thread(target=step, args=(0,))
    first.start()
    assert entered.wait(10)  # the first batch runs, holding one step
    rest = [threading.Thread(target=step, args=(i,)) for i in (1, 2, 3)]
    for t in rest:
        t.start()
    while len(batcher._queue) < 3:
        threading.Event().wait(0.001)
    release.set()
    for t in [first, *rest]:
        t.join(10)
    batcher.close()
    assert batcher.stats.batches == 2 and batcher.stats.largest == 3 and batcher.stats.steps == 4
    assert all(r.shape == (2, model.config.vocab_size) for r in results)


def test_a_failed_batch_fails_its_callers_and_the_batcher_goes_on(model, monkeypatch):
    with Batcher(model) as batcher:
        mod = model.condition(torch.randn(2, 384))
        monkeypatch.setattr(model, "decode", lambda *a: (_ for _ in ()).throw(RuntimeError("boom")))
        with pytest.raises(RuntimeError, match="boom"):
            batcher.step(1, mod, primed(model, 2))
        monkeypatch.undo()
        assert batcher.step(1, mod, primed(model, 2)).shape == (2, model.config.vocab_size)


def test_bad_steps_are_refused_in_the_callers_thread(model):
    with Batcher(model) as batcher:
        with pytest.raises(ValueError, match="rows"):
            batcher.step(1, model.condition(torch.randn(1, 384)), primed(model, 2))
        with pytest.raises(ValueError, match="full"):
            batcher.step(1, model.condition(torch.randn(2, 384)), primed(model, 256))


def test_a_closed_batcher_refuses_steps(model):
    batcher = Batcher(model)
    batcher.close()
    with pytest.raises(BatcherClosed):
        batcher.step(1, model.condition(torch.randn(2, 384)), primed(model, 2))


def test_a_system_refuses_a_batcher_of_another_model(model):
    other = build(PRESETS["debug"], seed=2)
    with Batcher(other) as batcher, pytest.raises(ValueError, match="another model"):
        System(model, batcher=batcher)


def test_a_batch_waits_briefly_for_every_generating_stream(model):
    mod = model.condition(torch.randn(2, 384))
    with Batcher(model, gather_seconds=1.0) as batcher:
        inside, results = threading.Barrier(2), []

        def stream(delay: float) -> None:
            with batcher.streaming():
                inside.wait()
                threading.Event().wait(delay)
                results.append(batcher.step(2, mod, primed(model, 4)))

        threads = [threading.Thread(target=stream, args=(d,)) for d in (0.0, 0.3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert not batcher.busy
        assert len(results) == 2 and batcher.stats.batches == 1 and batcher.stats.largest == 2


def test_a_stream_alone_does_not_wait(model):
    mod = model.condition(torch.randn(2, 384))
    with Batcher(model, gather_seconds=1.0) as batcher, batcher.streaming():
        assert batcher.busy
        started = time.perf_counter()
        for _ in range(3):
            batcher.step(2, mod, primed(model, 4))
        assert time.perf_counter() - started < 0.9  # not one gather wait of 1 s

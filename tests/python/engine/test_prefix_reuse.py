"""Prefix reuse through Strata: logits after loading the prefix's K/V from a
store equal a full recompute (docs/engine.md, "Prefix reuse")."""

import engine_deps

engine_deps.require_engine_deps()

import torch  # noqa: E402

import strata  # noqa: E402
from mini_engine import Engine, LlamaConfig, LlamaModel, random_weights  # noqa: E402
from mini_engine.texts import passages  # noqa: E402

# The K/V a hit loads are the fp16 values the full prefill wrote into its own
# paged cache (raw codec = the same bytes), so the only possible difference is
# the order of float32 sums in matmuls of other shapes: measured 0.0 on
# SmolLM2; the bound leaves room for other BLAS builds.
LOGIT_TOL = 1e-3


def prompt_tokens(tok, n):
    p = passages()
    ids = tok.encode(p["pride_and_prejudice"] + p["declaration"])
    assert len(ids) >= n
    return ids[:n]


def reference(model, prompt, decode_tokens=4):
    """Full recompute (no store): last-prompt-token logits + greedy tokens."""
    e = Engine(model, store=None)
    seq = e.new_sequence(prompt)
    logits, _ = e.prefill(seq)
    out, all_logits = [], [logits]
    for _ in range(decode_tokens):
        out.append(int(torch.argmax(all_logits[-1])))
        all_logits.append(e.decode_step(seq, out[-1]))
    return all_logits, out


def check_hit(model, store, prompt, ref_logits, ref_tokens, expect_hit):
    e = Engine(model, store=store)  # a new engine: nothing cached in it
    seq = e.new_sequence(prompt)
    logits, stats = e.prefill(seq)
    assert stats.hit_tokens == expect_hit, stats
    assert stats.computed_tokens == len(prompt) - expect_hit
    diffs = [float((logits - ref_logits[0]).abs().max())]
    for i, t in enumerate(ref_tokens):
        assert int(torch.argmax(logits)) == t
        logits = e.decode_step(seq, t)
        diffs.append(float((logits - ref_logits[i + 1]).abs().max()))
    print(f"[engine] prefix hit {stats.hit_tokens}/{len(prompt)} tokens: max |logit diff| "
          f"vs full recompute {max(diffs):.3g} (prefill + {len(ref_tokens)} decode steps)")
    assert max(diffs) <= LOGIT_TOL
    return stats


def test_prefix_hit_logits_equal_full_recompute_local_store(smollm2):
    model, tok = smollm2
    prompt = prompt_tokens(tok, 600)
    ref_logits, ref_tokens = reference(model, prompt)
    store = strata.LocalStore(dram_bytes=256 << 20)
    first = Engine(model, store=store)
    seq = first.new_sequence(prompt)
    _, stats = first.prefill(seq)
    assert stats.hit_tokens == 0 and stats.stored_chunks == 2
    check_hit(model, store, prompt, ref_logits, ref_tokens, expect_hit=512)


def test_prefix_hit_survives_stratad_restart_with_ssd_tier(smollm2, stratad_factory):
    model, tok = smollm2
    prompt = prompt_tokens(tok, 600)
    ref_logits, ref_tokens = reference(model, prompt)
    flags = ["--dram_capacity=64MiB", "--ssd_capacity=512MiB", "--write_through=true"]
    d = stratad_factory(flags).start()
    store = strata.RemoteStore(d.grpc, deadline_ms=10000)
    e = Engine(model, store=store)
    seq = e.new_sequence(prompt)
    _, stats = e.prefill(seq)
    assert stats.stored_chunks == 2
    store.close()
    d.stop()

    d = stratad_factory(flags).start()  # same data dir: blocks come back from SSD
    store = strata.RemoteStore(d.grpc, deadline_ms=10000)
    check_hit(model, store, prompt, ref_logits, ref_tokens, expect_hit=512)
    store.close()
    d.stop()


TINY = LlamaConfig(num_layers=2, hidden=64, num_q_heads=4, num_kv_heads=2, head_dim=16,
                   intermediate=128, vocab=97, rope_theta=10000.0, name="tiny-random")


def test_random_weights_partial_hit_recomputes_the_rest():
    """Any Llama-shaped config works; a chunk missing in the middle (removed
    from the store) ends the hit there and the rest is recomputed."""
    model = LlamaModel(TINY, random_weights(TINY, seed=7, scale=0.2))
    g = torch.Generator().manual_seed(3)
    prompt = torch.randint(0, TINY.vocab, (300,), generator=g).tolist()
    ref = Engine(model, store=None, chunk_tokens=64)
    seq = ref.new_sequence(prompt)
    ref_logits, _ = ref.prefill(seq)

    store = strata.LocalStore(dram_bytes=16 << 20)
    e = Engine(model, store=store, chunk_tokens=64)
    seq = e.new_sequence(prompt)
    _, stats = e.prefill(seq)
    assert stats.stored_chunks == 4
    keys = e.chunk_keys(prompt)
    store.remove(keys[2].key)

    e2 = Engine(model, store=store, chunk_tokens=64)
    seq = e2.new_sequence(prompt)
    logits, stats = e2.prefill(seq)
    assert stats.hit_tokens == 128 and stats.stored_chunks == 2
    assert float((logits - ref_logits).abs().max()) <= LOGIT_TOL

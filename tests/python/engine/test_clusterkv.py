"""ClusterKV decode with the context in Strata `cluster` blocks (docs/engine.md,
"ClusterKV"): recalling 10% of the context's tokens per layer keeps the
greedy next token of full attention."""

import engine_deps

engine_deps.require_engine_deps()

import math  # noqa: E402

import torch  # noqa: E402

import strata  # noqa: E402
from mini_engine import Engine  # noqa: E402
from mini_engine.blend import first_token_kl  # noqa: E402
from mini_engine.clusterkv import ClusterKVDecoder  # noqa: E402
from mini_engine.texts import passages  # noqa: E402

DECODE_TOKENS = 48


def long_prompt(tok):
    """~1.5K tokens: four public-domain passages and a question about them,
    in SmolLM2's chat format (so the continuation is an answer, not a loop)."""
    p = passages()
    ctx = "\n\n".join(p[n] for n in ("pride_and_prejudice", "declaration", "gettysburg",
                                      "moby_dick"))
    return tok.encode("<|im_start|>user\n" + ctx + "\n\nWhat are these four texts about? "
                      "Describe each one.<|im_end|>\n<|im_start|>assistant\n")


def test_clusterkv_10_percent_budget_keeps_95_percent_top1(smollm2):
    model, tok = smollm2
    prompt = long_prompt(tok)
    assert len(prompt) > 1280
    # Reference: greedy decode with full attention.
    ref = Engine(model, store=None)
    seq = ref.new_sequence(prompt)
    logits, _ = ref.prefill(seq)
    ref_tokens, ref_logits = [int(torch.argmax(logits))], []
    for _ in range(DECODE_TOKENS):
        ref_logits.append(ref.decode_step(seq, ref_tokens[-1]))
        ref_tokens.append(int(torch.argmax(ref_logits[-1])))
    ref.release(seq)

    store = strata.LocalStore(dram_bytes=512 << 20)
    engine = Engine(model, store=store)
    dec = ClusterKVDecoder(engine, budget_fraction=0.10)  # strict: union <= 10%
    logits, _ = dec.prefill(prompt)
    assert int(torch.argmax(logits)) == ref_tokens[0]  # prefill is full attention
    agree, kls = 0, []
    for i in range(DECODE_TOKENS):
        # Teacher-forced on the reference tokens: each step is judged alone.
        logits = dec.step(ref_tokens[i])
        assert torch.isfinite(logits).all()  # the poisoned context was never read
        agree += int(torch.argmax(logits)) == ref_tokens[i + 1]
        kls.append(first_token_kl(ref_logits[i], logits))
    dec.release()
    budget = math.ceil(0.10 * dec.context_tokens)
    rate = agree / DECODE_TOKENS
    print(f"[engine] ClusterKV: prompt {len(prompt)} tokens, context {dec.context_tokens} in "
          f"{len(dec.blocks)} cluster blocks, budget {budget} tokens/layer (recalled max "
          f"{max(dec.recalled_tokens):.0f}); top-1 agreement with full attention "
          f"{agree}/{DECODE_TOKENS} = {rate:.1%}, mean KL {sum(kls) / len(kls):.4f}; "
          f"answer {tok.decode(ref_tokens)!r}")
    assert max(dec.recalled_tokens) <= budget
    assert rate >= 0.95

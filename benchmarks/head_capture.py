"""Cost of capturing every attention head of a Hugging Face model against its bare forward pass.

A GPT-2-shaped and a Llama-shaped (grouped-query attention) model, built from config classes with random weights
(nothing is downloaded), run the same token batches with and without probekit's head capture
(:mod:`probekit.models.projected_heads`: one hook per attention block's output projection), alternating, best of
several repeats. Prints the ratio captured / bare (target: <= 1.3).

    python benchmarks/head_capture.py [--repeats 5] [--threads N]
"""

from __future__ import annotations

import argparse
import time

import torch

from probekit.models.branches import DiscoveryConfig, discover
from probekit.run.capture import capture
from probekit.run.inputs import call_model


def models(width: int, layers: int, heads: int, positions: int) -> dict:
    import transformers as tf

    return {
        "gpt2": tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=2048, n_embd=width, n_layer=layers, n_head=heads,
                                                 n_positions=positions, bos_token_id=0, eos_token_id=0)),
        "llama-gqa": tf.LlamaForCausalLM(tf.LlamaConfig(vocab_size=2048, hidden_size=width,
                                                        intermediate_size=4 * width, num_hidden_layers=layers,
                                                        num_attention_heads=heads, num_key_value_heads=heads // 4,
                                                        max_position_embeddings=positions)),
    }


def timed(run, batches) -> float:
    start = time.perf_counter()
    with torch.no_grad():
        for batch in batches:
            run(batch)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    batches = [{"input_ids": torch.randint(0, 2048, (args.batch_size, args.seq_len))} for _ in range(args.batches)]
    print(f"{args.batches} batches of {args.batch_size} x {args.seq_len} tokens, {args.threads} threads, "
          f"best of {args.repeats}")
    for name, model in models(256, 4, 8, args.seq_len).items():
        model.eval()
        branchset = discover(model, DiscoveryConfig())
        heads = sum(len(layer.branches) for layer in branchset.layers)

        def captured(batch, model=model, branchset=branchset):
            with capture(model, branchset) as recorder:
                call_model(model, batch)
                recorder.take(batch["input_ids"].shape[0])

        timed(lambda b, model=model: call_model(model, b), batches[:1])  # warm-up
        timed(captured, batches[:1])
        bare, probed = [], []
        for _ in range(args.repeats):
            bare.append(timed(lambda b, model=model: call_model(model, b), batches))
            probed.append(timed(captured, batches))
        print(f"{name:10s} {heads} heads in {len(branchset.layers)} layers: bare {min(bare):.3f} s, with head "
              f"capture {min(probed):.3f} s, ratio {min(probed) / min(bare):.2f}")


if __name__ == "__main__":
    main()

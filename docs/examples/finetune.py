#!/usr/bin/env python3
"""A stand-in fine-tuning job: plain python3, no packages beyond the standard library.

It knows nothing about jit. It reads its training data with the credential `jit run` put in its
environment (JIT_FILES_URL, JIT_FILES_TOKEN), "trains" a tiny bigram language model on the
training split, and shows that the evaluation split, outside its grant, stays closed.

    jit run --scope datasets/train -- python3 docs/examples/finetune.py
"""
import json
import math
import os
import sys
import urllib.error
import urllib.request
from collections import Counter


def fetch(path):
    request = urllib.request.Request(
        f"{os.environ['JIT_FILES_URL']}/{path}",
        headers={"Authorization": f"Bearer {os.environ['JIT_FILES_TOKEN']}"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.read()


def tokens(example):
    return ["<s>"] + f"{example['prompt']} {example['completion']}".lower().split() + ["</s>"]


def main():
    if "JIT_FILES_URL" not in os.environ:
        sys.exit("finetune.py: no data credential in the environment; run me under `jit run --scope datasets/train`")
    print(f"finetune: grant {os.environ.get('JIT_GRANT_ID')} valid until {os.environ.get('JIT_EXPIRES_AT')}")

    listing = json.loads(fetch("datasets/train"))
    shards = [entry["name"] for entry in listing["entries"] if entry["name"].endswith(".jsonl")]
    examples = []
    for shard in shards:
        lines = fetch(f"datasets/train/{shard}").decode().splitlines()
        examples += [json.loads(line) for line in lines if line.strip()]
    print(f"finetune: read {len(examples)} examples from {len(shards)} shards of datasets/train")

    unigrams, bigrams = Counter(), Counter()
    for example in examples:
        sequence = tokens(example)
        unigrams.update(sequence[:-1])
        bigrams.update(zip(sequence, sequence[1:]))
    vocabulary = len(set(unigrams) | {"</s>"})
    log_likelihood, count = 0.0, 0
    for example in examples:
        sequence = tokens(example)
        for previous, current in zip(sequence, sequence[1:]):
            probability = (bigrams[(previous, current)] + 1) / (unigrams[previous] + vocabulary)
            log_likelihood += math.log(probability)
            count += 1
    print(f"finetune: bigram model over {vocabulary} tokens, training perplexity {math.exp(-log_likelihood / count):.2f}")

    try:
        fetch("datasets/eval/holdout.jsonl")
    except urllib.error.HTTPError as error:
        print(f"finetune: datasets/eval is outside this grant: HTTP {error.code}, as it should be")
    else:
        sys.exit("finetune: could read datasets/eval, which this grant does not cover")


if __name__ == "__main__":
    main()

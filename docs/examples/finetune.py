#!/usr/bin/env python3
"""A stand-in fine-tuning job that reads its data with boto3, as training code does.

It knows nothing about jit. `jit run` puts S3 credentials for its grant in the environment
(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_ENDPOINT_URL, AWS_REGION, plus
JIT_S3_BUCKET and JIT_S3_PREFIX naming what was granted). The job lists and reads the training
split, "trains" a tiny bigram language model on it, and shows that the evaluation split, outside
its grant, stays closed.

    jit run --scope datasets/train -- python3 docs/examples/finetune.py
"""
import json
import math
import os
import sys
from collections import Counter

try:
    import boto3
    from botocore.exceptions import ClientError
except ImportError:
    sys.exit("finetune.py: boto3 is not installed (Debian: apt install python3-boto3; or pip install boto3)")


def tokens(example):
    return ["<s>"] + f"{example['prompt']} {example['completion']}".lower().split() + ["</s>"]


def main():
    if "AWS_SESSION_TOKEN" not in os.environ or "JIT_S3_BUCKET" not in os.environ:
        sys.exit("finetune.py: no data credential in the environment; run me under `jit run --scope datasets/train`")
    print(f"finetune: grant {os.environ.get('JIT_GRANT_ID')} valid until {os.environ.get('JIT_EXPIRES_AT')}")
    bucket, prefix = os.environ["JIT_S3_BUCKET"], os.environ["JIT_S3_PREFIX"]
    # Credentials and region come from the environment as usual; the endpoint is passed explicitly
    # for botocore releases older than 1.31, which do not read AWS_ENDPOINT_URL themselves.
    s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])

    keys = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys += [item["Key"] for item in page.get("Contents", []) if item["Key"].endswith(".jsonl")]
    examples = []
    for key in keys:
        lines = s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode().splitlines()
        examples += [json.loads(line) for line in lines if line.strip()]
    print(f"finetune: read {len(examples)} examples from {len(keys)} shards of s3://{bucket}/{prefix} with boto3")

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
        s3.get_object(Bucket=bucket, Key="eval/holdout.jsonl")
    except ClientError as error:
        code = error.response["Error"]["Code"]
        print(f"finetune: s3://{bucket}/eval/ is outside this grant: {code}, as it should be")
    else:
        sys.exit("finetune: could read the eval split, which this grant does not cover")


if __name__ == "__main__":
    main()

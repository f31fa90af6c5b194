// The same stand-in fine-tuning job as finetune.py, with the AWS SDK for JavaScript instead of
// boto3: `npm run demo` runs this one when boto3 is not installed. It knows nothing about jit:
// the SDK reads the grant's S3 credentials, endpoint and region from the environment `jit run` set.
//
//   jit run --scope datasets/train -- node docs/examples/finetune-sdk.ts
import { GetObjectCommand, paginateListObjectsV2, S3Client, S3ServiceException } from '@aws-sdk/client-s3';

type Example = { prompt: string; completion: string };

const tokens = (example: Example) => ['<s>', ...`${example.prompt} ${example.completion}`.toLowerCase().split(/\s+/), '</s>'];

const bucket = process.env.JIT_S3_BUCKET;
const prefix = process.env.JIT_S3_PREFIX ?? '';
if (!process.env.AWS_SESSION_TOKEN || !bucket) {
  process.stderr.write('finetune-sdk: no data credential in the environment; run me under `jit run --scope datasets/train`\n');
  process.exit(1);
}
console.log(`finetune: grant ${process.env.JIT_GRANT_ID} valid until ${process.env.JIT_EXPIRES_AT}`);
// Path-style requests: the gateway serves buckets under its endpoint's path.
const s3 = new S3Client({ forcePathStyle: true });

const keys: string[] = [];
for await (const page of paginateListObjectsV2({ client: s3 }, { Bucket: bucket, Prefix: prefix })) {
  for (const item of page.Contents ?? []) if (item.Key?.endsWith('.jsonl')) keys.push(item.Key);
}
const examples: Example[] = [];
for (const key of keys) {
  const text = await (await s3.send(new GetObjectCommand({ Bucket: bucket, Key: key }))).Body?.transformToString();
  for (const line of (text ?? '').split('\n')) if (line.trim()) examples.push(JSON.parse(line) as Example);
}
console.log(
  `finetune: read ${examples.length} examples from ${keys.length} shards of s3://${bucket}/${prefix} with the AWS SDK for JavaScript`,
);

const unigrams = new Map<string, number>();
const bigrams = new Map<string, number>();
const bump = (counts: Map<string, number>, key: string) => counts.set(key, (counts.get(key) ?? 0) + 1);
for (const example of examples) {
  const sequence = tokens(example);
  sequence.slice(0, -1).forEach((token, index) => {
    bump(unigrams, token);
    bump(bigrams, `${token} ${sequence[index + 1]}`);
  });
}
const vocabulary = new Set([...unigrams.keys(), '</s>']).size;
let logLikelihood = 0;
let count = 0;
for (const example of examples) {
  const sequence = tokens(example);
  sequence.slice(0, -1).forEach((token, index) => {
    logLikelihood += Math.log(((bigrams.get(`${token} ${sequence[index + 1]}`) ?? 0) + 1) / ((unigrams.get(token) ?? 0) + vocabulary));
    count += 1;
  });
}
console.log(`finetune: bigram model over ${vocabulary} tokens, training perplexity ${Math.exp(-logLikelihood / count).toFixed(2)}`);

try {
  await s3.send(new GetObjectCommand({ Bucket: bucket, Key: 'eval/holdout.jsonl' }));
  process.stderr.write('finetune: could read the eval split, which this grant does not cover\n');
  process.exit(1);
} catch (error) {
  if (!(error instanceof S3ServiceException)) throw error;
  console.log(`finetune: s3://${bucket}/eval/ is outside this grant: ${error.name}, as it should be`);
}

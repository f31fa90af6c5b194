// Real jobs reading granted data through the S3 gateway under `jit run`: the boto3 example
// (docs/examples/finetune.py) and the AWS SDK for JavaScript one (finetune-sdk.ts).
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { test } from 'node:test';
import { jit, ROOT } from '../helpers/cli.ts';
import { assertReleased, onlyGrant } from '../helpers/state.ts';
import { runArgs, setUp } from './support.ts';

/** A python3 that has boto3: the one on PATH, else Debian's (python3-boto3, which .ci/run installs). */
function pythonWithBoto3(): string | undefined {
  return ['python3', '/usr/bin/python3'].find((python) => spawnSync(python, ['-c', 'import boto3']).status === 0);
}

/** What a careless parent environment might hold: none of it may steer the job's S3 calls. */
const STRAY_AWS = {
  AWS_PROFILE: 'production-admin',
  AWS_ACCESS_KEY_ID: 'AKIASTANDINGKEY00000',
  AWS_SECRET_ACCESS_KEY: 'standing-secret',
  AWS_ENDPOINT_URL_S3: 'http://127.0.0.1:9/',
};

test('the boto3 fine-tuning example reads the train split under jit run, and not the eval split', async (t) => {
  const python = pythonWithBoto3();
  if (!python) {
    if (process.env.CI) assert.fail('no python3 with boto3 (apt install python3-boto3); .ci/run installs it');
    t.skip('no python3 with boto3');
    return;
  }
  const places = await setUp(t);
  if (!places) return;
  const result = await jit(runArgs([python, path.join(ROOT, 'docs', 'examples', 'finetune.py')]), {
    env: { ...places.env, ...STRAY_AWS },
  });
  assert.equal(result.code, 0, result.stderr);
  assert.match(result.stdout, /finetune: read 3 examples from 2 shards of s3:\/\/datasets\/train\/ with boto3/);
  assert.match(result.stdout, /s3:\/\/datasets\/eval\/ is outside this grant: AccessDenied, as it should be/);
  await assertReleased(places, (await onlyGrant(places.broker)).id);
});

test('the AWS SDK for JavaScript example does the same', async (t) => {
  const places = await setUp(t);
  if (!places) return;
  const result = await jit(runArgs([process.execPath, path.join(ROOT, 'docs', 'examples', 'finetune-sdk.ts')]), {
    env: { ...places.env, ...STRAY_AWS },
  });
  assert.equal(result.code, 0, result.stderr);
  assert.match(result.stdout, /read 3 examples from 2 shards of s3:\/\/datasets\/train\/ with the AWS SDK for JavaScript/);
  assert.match(result.stdout, /s3:\/\/datasets\/eval\/ is outside this grant: AccessDenied, as it should be/);
  await assertReleased(places, (await onlyGrant(places.broker)).id);
});

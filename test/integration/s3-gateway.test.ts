// The S3-compatible gateway with the real AWS SDK for JavaScript: what a job's S3 client sees.
import assert from 'node:assert/strict';
import { mkdir, readdir, readFile, symlink } from 'node:fs/promises';
import http from 'node:http';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import {
  AbortMultipartUploadCommand,
  CompleteMultipartUploadCommand,
  CreateMultipartUploadCommand,
  DeleteObjectCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  ListPartsCommand,
  PutObjectCommand,
  S3Client,
  S3ServiceException,
  UploadPartCommand,
} from '@aws-sdk/client-s3';
import { getSignedUrl } from '@aws-sdk/s3-request-presigner';
import { Sha256 } from '@smithy/core/checksum';
import { SignatureV4 } from '@smithy/signature-v4';
import type { AuditRecord } from '../../src/core/audit.ts';
import type { IssuedGrant } from '../../src/core/grant.ts';
import { api, startTestBroker, type TestBroker } from '../helpers/broker.ts';
import { postgresSkipReason } from '../helpers/postgres.ts';
import { refuseAuditRecords } from '../helpers/store-sql.ts';

const POLICY = `policy:
  rules:
    - name: admin-datasets
      subjects: ["user:admin"]
      scopes: ["datasets/**"]
      actions: [read, write, delete]
      defaultTtl: 1h
      maxTtl: 8h
`;

/** An S3 client exactly as a job's would be: everything from the grant's environment. */
function clientFor(grant: IssuedGrant, overrides: { secretAccessKey?: string; accessKeyId?: string; maxAttempts?: number } = {}): S3Client {
  return new S3Client({
    maxAttempts: overrides.maxAttempts,
    endpoint: grant.env.AWS_ENDPOINT_URL,
    region: grant.env.AWS_REGION,
    forcePathStyle: true,
    credentials: {
      accessKeyId: overrides.accessKeyId ?? grant.env.AWS_ACCESS_KEY_ID ?? '',
      secretAccessKey: overrides.secretAccessKey ?? grant.env.AWS_SECRET_ACCESS_KEY ?? '',
      sessionToken: grant.env.AWS_SESSION_TOKEN,
    },
  });
}

/** The S3 error a call fails with: its code (name) and HTTP status. */
async function s3Error(call: Promise<unknown>): Promise<{ code: string; status: number | undefined }> {
  try {
    await call;
  } catch (error) {
    if (error instanceof S3ServiceException) return { code: error.name, status: error.$metadata.httpStatusCode };
    throw error;
  }
  throw new Error('the call succeeded');
}

/**
 * Sends a GET for a raw path exactly as written (no client normalises it), signed with the grant's
 * S3 keys by the SDK's own signer: what a hostile or buggy client can put on the wire.
 */
async function rawSignedGet(grant: IssuedGrant, rawPath: string): Promise<{ status: number; text: string }> {
  const url = new URL(grant.env.AWS_ENDPOINT_URL ?? '');
  const signer = new SignatureV4({
    credentials: {
      accessKeyId: grant.env.AWS_ACCESS_KEY_ID ?? '',
      secretAccessKey: grant.env.AWS_SECRET_ACCESS_KEY ?? '',
      sessionToken: grant.env.AWS_SESSION_TOKEN,
    },
    region: 'us-east-1',
    service: 's3',
    sha256: Sha256,
    uriEscapePath: false,
  });
  const signed = await signer.sign({
    method: 'GET',
    protocol: 'http:',
    hostname: url.hostname,
    port: Number(url.port),
    path: rawPath,
    query: {},
    headers: { host: url.host, 'x-amz-content-sha256': 'UNSIGNED-PAYLOAD' },
  });
  return new Promise((resolve, reject) => {
    const request = http.get({ hostname: url.hostname, port: url.port, path: rawPath, headers: signed.headers }, (response) => {
      let text = '';
      response.on('data', (chunk: Buffer) => {
        text += chunk.toString();
      });
      response.on('end', () => resolve({ status: response.statusCode ?? 0, text }));
    });
    request.on('error', reject);
  });
}

describe('S3 gateway with @aws-sdk/client-s3', () => {
  let broker: TestBroker;
  const grant = async (scopes: string[]) => {
    const response = await api<IssuedGrant>(broker, broker.token, 'POST', 'grants', { scopes, heartbeat: false });
    assert.equal(response.status, 201, JSON.stringify(response.body));
    return response.body;
  };

  before(async () => {
    broker = await startTestBroker({ policy: POLICY });
  });
  after(() => broker.cleanup());

  it('gives the job S3 variables naming the gateway, the bucket and the prefix', async () => {
    const issued = await grant(['datasets/train']);
    assert.equal(issued.env.AWS_ENDPOINT_URL, `${broker.url}/s3`);
    assert.equal(issued.env.AWS_SESSION_TOKEN, issued.credential);
    assert.match(issued.env.AWS_ACCESS_KEY_ID ?? '', /^JIT[0-9A-F]{20}$/);
    assert.equal(issued.env.AWS_SECRET_ACCESS_KEY?.length, 40);
    assert.equal(issued.env.JIT_S3_BUCKET, 'datasets');
    assert.equal(issued.env.JIT_S3_PREFIX, 'train/');
    assert.equal(issued.env.JIT_S3_URIS, 's3://datasets/train/');
  });

  it('lists, heads, gets and range-gets under the granted prefix', async () => {
    const s3 = clientFor(await grant(['datasets/train']));
    const listed = await s3.send(new ListObjectsV2Command({ Bucket: 'datasets', Prefix: 'train/' }));
    const sizeOf = async (key: string) => (await readFile(path.join(broker.dataDir, key))).length;
    assert.deepEqual(
      listed.Contents?.map((item) => [item.Key, item.Size]),
      [
        ['train/shard-0000.jsonl', await sizeOf('train/shard-0000.jsonl')],
        ['train/shard-0001.jsonl', await sizeOf('train/shard-0001.jsonl')],
      ],
    );
    const expected = await readFile(path.join(broker.dataDir, 'train', 'shard-0000.jsonl'), 'utf8');
    const got = await s3.send(new GetObjectCommand({ Bucket: 'datasets', Key: 'train/shard-0000.jsonl' }));
    assert.equal(await got.Body?.transformToString(), expected);
    const head = await s3.send(new HeadObjectCommand({ Bucket: 'datasets', Key: 'train/shard-0000.jsonl' }));
    assert.equal(head.ContentLength, expected.length);
    assert.equal(head.ETag, got.ETag);
    const ranged = await s3.send(new GetObjectCommand({ Bucket: 'datasets', Key: 'train/shard-0000.jsonl', Range: 'bytes=2-7' }));
    assert.equal(await ranged.Body?.transformToString(), expected.slice(2, 8));
    assert.equal(ranged.ContentRange, `bytes 2-7/${expected.length}`);
    const notModified = await s3Error(
      s3.send(new GetObjectCommand({ Bucket: 'datasets', Key: 'train/shard-0000.jsonl', IfNoneMatch: got.ETag })),
    );
    assert.equal(notModified.status, 304);
  });

  it('keeps everything outside the grant closed with the same credential', async () => {
    const s3 = clientFor(await grant(['datasets/train']));
    assert.deepEqual(await s3Error(s3.send(new GetObjectCommand({ Bucket: 'datasets', Key: 'eval/holdout.jsonl' }))), {
      code: 'AccessDenied',
      status: 403,
    });
    assert.deepEqual(await s3Error(s3.send(new ListObjectsV2Command({ Bucket: 'datasets', Prefix: 'eval/' }))), {
      code: 'AccessDenied',
      status: 403,
    });
    assert.deepEqual(await s3Error(s3.send(new ListObjectsV2Command({ Bucket: 'datasets' }))), { code: 'AccessDenied', status: 403 });
    assert.deepEqual(
      await s3Error(s3.send(new PutObjectCommand({ Bucket: 'datasets', Key: 'train/new.jsonl', Body: '{}' }))),
      { code: 'AccessDenied', status: 403 },
      'read does not allow write',
    );
    assert.deepEqual(
      await s3Error(s3.send(new GetObjectCommand({ Bucket: 'datasets', Key: 'train/../eval/holdout.jsonl' }))),
      { code: 'InvalidArgument', status: 400 },
      'a key with ".." is refused before any scope is compared with it',
    );
  });

  it('refuses every encoding of a way out of the granted prefix, signed or not', async () => {
    const issued = await grant(['datasets/train']);
    const plain = await rawSignedGet(issued, '/s3/datasets/train/shard-0001.jsonl');
    assert.equal(plain.status, 200, 'the signer and the raw request agree');
    const attempts: [string, number, string][] = [
      ['/s3/datasets/train/%2e%2e/eval/holdout.jsonl', 400, 'InvalidArgument'],
      ['/s3/datasets/train/%2E%2E%2Feval%2Fholdout.jsonl', 400, 'InvalidArgument'],
      ['/s3/datasets/train/..%5Ceval%5Choldout.jsonl', 400, 'InvalidArgument'],
      ['/s3/datasets/train/x%00.jsonl', 400, 'InvalidArgument'],
      ['/s3/datasets/train/%c0%ae%c0%ae/eval/holdout.jsonl', 400, 'InvalidURI'],
      ['/s3/datasets/train//../eval/holdout.jsonl', 400, 'InvalidArgument'],
      ['/s3/datasets/.jit-staging/tmp', 403, 'AccessDenied'],
    ];
    for (const [rawPath, status, code] of attempts) {
      const response = await rawSignedGet(issued, rawPath);
      assert.equal(response.status, status, `${rawPath}: ${response.text}`);
      assert.match(response.text, new RegExp(`<Code>${code}</Code>`), rawPath);
      assert.doesNotMatch(response.text, /secret eval item/);
    }
  });

  it('does not let a symbolic link under the granted prefix open an ungranted file', async () => {
    await mkdir(path.join(broker.dataDir, 'train', 'links'), { recursive: true });
    await symlink(path.join(broker.dataDir, 'eval', 'holdout.jsonl'), path.join(broker.dataDir, 'train', 'links', 'holdout.jsonl'));
    await symlink('/etc/hostname', path.join(broker.dataDir, 'train', 'links', 'outside'));
    const s3 = clientFor(await grant(['datasets/train']));
    assert.deepEqual(await s3Error(s3.send(new GetObjectCommand({ Bucket: 'datasets', Key: 'train/links/holdout.jsonl' }))), {
      code: 'AccessDenied',
      status: 403,
    });
    assert.deepEqual(await s3Error(s3.send(new GetObjectCommand({ Bucket: 'datasets', Key: 'train/links/outside' }))), {
      code: 'AccessDenied',
      status: 403,
    });
    const both = clientFor(await grant(['datasets/train', 'datasets/eval']));
    const through = await both.send(new GetObjectCommand({ Bucket: 'datasets', Key: 'train/links/holdout.jsonl' }));
    assert.match((await through.Body?.transformToString()) ?? '', /secret eval item/, 'with both prefixes granted the link works');
  });

  it('answers with S3 error codes: NoSuchKey, InvalidRange, InvalidAccessKeyId, SignatureDoesNotMatch', async () => {
    const issued = await grant(['datasets/train']);
    const s3 = clientFor(issued);
    assert.deepEqual(await s3Error(s3.send(new GetObjectCommand({ Bucket: 'datasets', Key: 'train/missing.jsonl' }))), {
      code: 'NoSuchKey',
      status: 404,
    });
    assert.deepEqual(
      await s3Error(s3.send(new GetObjectCommand({ Bucket: 'datasets', Key: 'train/shard-0001.jsonl', Range: 'bytes=9999-' }))),
      { code: 'InvalidRange', status: 416 },
    );
    const wrongSecret = clientFor(issued, { secretAccessKey: 'x'.repeat(40) });
    assert.deepEqual(await s3Error(wrongSecret.send(new GetObjectCommand({ Bucket: 'datasets', Key: 'train/shard-0001.jsonl' }))), {
      code: 'SignatureDoesNotMatch',
      status: 403,
    });
    const wrongKey = clientFor(issued, { accessKeyId: `JIT${'0'.repeat(20)}` });
    assert.deepEqual(await s3Error(wrongKey.send(new GetObjectCommand({ Bucket: 'datasets', Key: 'train/shard-0001.jsonl' }))), {
      code: 'InvalidAccessKeyId',
      status: 403,
    });
  });

  it('writes with :write (atomically), multipart included, and deletes only with :delete', async () => {
    const writer = await grant(['datasets/checkpoints:write', 'datasets/checkpoints']);
    const s3 = clientFor(writer);
    await s3.send(new PutObjectCommand({ Bucket: 'datasets', Key: 'checkpoints/step-1.json', Body: '{"step":1}' }));
    const back = await s3.send(new GetObjectCommand({ Bucket: 'datasets', Key: 'checkpoints/step-1.json' }));
    assert.equal(await back.Body?.transformToString(), '{"step":1}');
    assert.equal(await readFile(path.join(broker.dataDir, 'checkpoints', 'step-1.json'), 'utf8'), '{"step":1}');

    const part1 = Buffer.alloc(5 * 1024 * 1024, 'a');
    const part2 = Buffer.from('tail');
    const { UploadId } = await s3.send(new CreateMultipartUploadCommand({ Bucket: 'datasets', Key: 'checkpoints/model.bin' }));
    const etags = [];
    for (const [index, body] of [part1, part2].entries()) {
      const part = await s3.send(
        new UploadPartCommand({ Bucket: 'datasets', Key: 'checkpoints/model.bin', UploadId, PartNumber: index + 1, Body: body }),
      );
      etags.push({ PartNumber: index + 1, ETag: part.ETag });
    }
    const parts = await s3.send(new ListPartsCommand({ Bucket: 'datasets', Key: 'checkpoints/model.bin', UploadId }));
    assert.deepEqual(
      parts.Parts?.map((part) => part.Size),
      [part1.length, part2.length],
    );
    await assert.rejects(readFile(path.join(broker.dataDir, 'checkpoints', 'model.bin')), 'nothing visible before completion');
    const done = await s3.send(
      new CompleteMultipartUploadCommand({ Bucket: 'datasets', Key: 'checkpoints/model.bin', UploadId, MultipartUpload: { Parts: etags } }),
    );
    assert.match(done.ETag ?? '', /-2"$/);
    const stored = await readFile(path.join(broker.dataDir, 'checkpoints', 'model.bin'));
    assert.equal(stored.length, part1.length + part2.length);
    assert.equal(stored.subarray(-4).toString(), 'tail');

    const aborted = await s3.send(new CreateMultipartUploadCommand({ Bucket: 'datasets', Key: 'checkpoints/dropped.bin' }));
    await s3.send(new AbortMultipartUploadCommand({ Bucket: 'datasets', Key: 'checkpoints/dropped.bin', UploadId: aborted.UploadId }));

    assert.deepEqual(await s3Error(s3.send(new DeleteObjectCommand({ Bucket: 'datasets', Key: 'checkpoints/step-1.json' }))), {
      code: 'AccessDenied',
      status: 403,
    });
    const deleterGrant = await grant(['datasets/checkpoints:delete']);
    const deleter = clientFor(deleterGrant);
    await deleter.send(new DeleteObjectCommand({ Bucket: 'datasets', Key: 'checkpoints/step-1.json' }));
    await assert.rejects(readFile(path.join(broker.dataDir, 'checkpoints', 'step-1.json')));

    // The trail an auditor reads: every write with its key and bytes, the refused delete, the delete.
    const trail = async (id: string) =>
      (await api<{ records: AuditRecord[] }>(broker, broker.token, 'GET', `audit?grant=${id}&action=data.*`)).body.records.map((record) => [
        record.action,
        record.outcome,
        record.actor,
        record.details.operation,
        record.details.key,
        record.details.bytes,
      ]);
    const written = await trail(writer.id);
    assert.deepEqual(
      written.filter(([action]) => action !== 'data.read'),
      [
        ['data.write', 'ok', 'user:admin', 'PutObject', 'checkpoints/step-1.json', '{"step":1}'.length],
        ['data.write', 'ok', 'user:admin', 'CreateMultipartUpload', 'checkpoints/model.bin', undefined],
        ['data.write', 'ok', 'user:admin', 'UploadPart', 'checkpoints/model.bin', part1.length],
        ['data.write', 'ok', 'user:admin', 'UploadPart', 'checkpoints/model.bin', part2.length],
        // Listing an upload's parts is part of writing it: it needs :write, and is recorded so.
        ['data.write', 'ok', 'user:admin', 'ListParts', 'checkpoints/model.bin', undefined],
        ['data.write', 'ok', 'user:admin', 'CompleteMultipartUpload', 'checkpoints/model.bin', part1.length + part2.length],
        ['data.write', 'ok', 'user:admin', 'CreateMultipartUpload', 'checkpoints/dropped.bin', undefined],
        ['data.write', 'ok', 'user:admin', 'AbortMultipartUpload', 'checkpoints/dropped.bin', undefined],
        ['data.refused', 'denied', 'user:admin', 'DeleteObject', 'checkpoints/step-1.json', undefined],
      ],
    );
    assert.deepEqual(await trail(deleterGrant.id), [
      ['data.delete', 'ok', 'user:admin', 'DeleteObject', 'checkpoints/step-1.json', undefined],
    ]);
  });

  it('serves presigned URLs, and refuses a tampered one', async () => {
    const s3 = clientFor(await grant(['datasets/train']));
    const url = await getSignedUrl(s3, new GetObjectCommand({ Bucket: 'datasets', Key: 'train/shard-0001.jsonl' }), { expiresIn: 60 });
    const response = await fetch(url);
    assert.equal(response.status, 200);
    assert.equal(await response.text(), await readFile(path.join(broker.dataDir, 'train', 'shard-0001.jsonl'), 'utf8'));
    const tampered = await fetch(url.replace('shard-0001', 'shard-0000'));
    assert.equal(tampered.status, 403);
    assert.match(await tampered.text(), /<Code>SignatureDoesNotMatch<\/Code>/);
  });

  it("refuses a revoked grant's next request, and records every access and refusal", async () => {
    const issued = await grant(['datasets/train']);
    const s3 = clientFor(issued);
    await s3.send(new GetObjectCommand({ Bucket: 'datasets', Key: 'train/shard-0001.jsonl' }));
    await api(broker, broker.token, 'DELETE', `grants/${issued.id}`);
    assert.deepEqual(await s3Error(s3.send(new GetObjectCommand({ Bucket: 'datasets', Key: 'train/shard-0001.jsonl' }))), {
      code: 'ExpiredToken',
      status: 400,
    });
    const events = await broker.broker.grants.events(issued.id);
    const read = events.find((event) => event.type === 'data.read' && event.detail.operation === 'GetObject');
    assert.equal(read?.detail.key, 'train/shard-0001.jsonl');
    assert.equal(read?.detail.bytes, (await readFile(path.join(broker.dataDir, 'train', 'shard-0001.jsonl'))).length);
    assert.equal(read?.detail.status, 200);
    assert.ok(events.some((event) => event.type === 'data.refused' && event.detail.reason === 'grant_ended'));
    for (const event of events) assert.ok(!JSON.stringify(event).includes(issued.credential), 'no credential in the audit trail');
  });
});

for (const store of ['sqlite', 'postgres'] as const) {
  const skip = store === 'postgres' ? await postgresSkipReason() : undefined;

  describe(`S3 gateway writes and deletes need their audit record (${store})`, { skip }, () => {
    let broker: TestBroker;
    before(async () => {
      broker = await startTestBroker({ store, policy: POLICY });
    });
    after(() => broker.cleanup());

    it('makes no write or delete whose record cannot be written, and makes them, recorded, once it can', async () => {
      const response = await api<IssuedGrant>(broker, broker.token, 'POST', 'grants', {
        scopes: ['datasets/checkpoints', 'datasets/checkpoints:write', 'datasets/checkpoints:delete'],
        heartbeat: false,
      });
      assert.equal(response.status, 201, JSON.stringify(response.body));
      const issued = response.body;
      // One request per call: the SDK would retry a 500 by itself.
      const s3 = clientFor(issued, { maxAttempts: 1 });
      const Bucket = 'datasets';
      const get = async (Key: string) => {
        const object = await s3.send(new GetObjectCommand({ Bucket, Key }));
        return { body: await object.Body?.transformToString(), etag: object.ETag };
      };
      const missing = (Key: string) => s3Error(s3.send(new GetObjectCommand({ Bucket, Key })));
      const first = await s3.send(new PutObjectCommand({ Bucket, Key: 'checkpoints/kept.json', Body: '{"v":1}' }));
      const { UploadId } = await s3.send(new CreateMultipartUploadCommand({ Bucket, Key: 'checkpoints/model.bin' }));
      const part = await s3.send(new UploadPartCommand({ Bucket, Key: 'checkpoints/model.bin', UploadId, PartNumber: 1, Body: 'weights' }));
      const complete = () =>
        s3.send(
          new CompleteMultipartUploadCommand({
            Bucket,
            Key: 'checkpoints/model.bin',
            UploadId,
            MultipartUpload: { Parts: [{ PartNumber: 1, ETag: part.ETag }] },
          }),
        );

      const allow = await refuseAuditRecords(broker, ['data.write', 'data.delete']);
      const failures = [];
      try {
        failures.push(await s3Error(s3.send(new PutObjectCommand({ Bucket, Key: 'checkpoints/kept.json', Body: '{"v":2}' }))));
        failures.push(await s3Error(s3.send(new PutObjectCommand({ Bucket, Key: 'checkpoints/new.json', Body: '{}' }))));
        failures.push(await s3Error(complete()));
        failures.push(await s3Error(s3.send(new DeleteObjectCommand({ Bucket, Key: 'checkpoints/kept.json' }))));
      } finally {
        await allow();
      }
      assert.deepEqual(failures, Array(4).fill({ code: 'InternalError', status: 500 }));
      assert.deepEqual(await get('checkpoints/kept.json'), { body: '{"v":1}', etag: first.ETag }, 'neither replaced nor deleted');
      assert.deepEqual(await missing('checkpoints/new.json'), { code: 'NoSuchKey', status: 404 });
      assert.deepEqual(await missing('checkpoints/model.bin'), { code: 'NoSuchKey', status: 404 });
      assert.deepEqual(await readdir(path.join(broker.dataDir, '.jit-staging', 'tmp')), [], 'no staged body left behind');

      const second = await s3.send(new PutObjectCommand({ Bucket, Key: 'checkpoints/kept.json', Body: '{"v":2}' }));
      assert.deepEqual(await get('checkpoints/kept.json'), { body: '{"v":2}', etag: second.ETag });
      const completed = await complete();
      assert.deepEqual(await get('checkpoints/model.bin'), { body: 'weights', etag: completed.ETag });
      await s3.send(new DeleteObjectCommand({ Bucket, Key: 'checkpoints/kept.json' }));
      assert.deepEqual(await missing('checkpoints/kept.json'), { code: 'NoSuchKey', status: 404 });

      const trail = (await api<{ records: AuditRecord[] }>(broker, broker.token, 'GET', `audit?grant=${issued.id}&action=data.*`)).body
        .records;
      assert.deepEqual(
        trail
          .filter((record) => record.action !== 'data.read')
          .map((record) => [
            record.action,
            record.outcome,
            record.details.operation,
            record.details.key,
            record.details.bytes,
            record.details.etag,
          ]),
        [
          ['data.write', 'ok', 'PutObject', 'checkpoints/kept.json', 7, first.ETag],
          ['data.write', 'ok', 'CreateMultipartUpload', 'checkpoints/model.bin', undefined, undefined],
          ['data.write', 'ok', 'UploadPart', 'checkpoints/model.bin', 7, part.ETag],
          ['data.write', 'ok', 'PutObject', 'checkpoints/kept.json', 7, second.ETag],
          ['data.write', 'ok', 'CompleteMultipartUpload', 'checkpoints/model.bin', 7, completed.ETag],
          ['data.delete', 'ok', 'DeleteObject', 'checkpoints/kept.json', undefined, undefined],
        ],
      );
    });
  });
}

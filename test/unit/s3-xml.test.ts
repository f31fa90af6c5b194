// S3's XML bodies, checked with the real AWS SDK for JavaScript: it writes the request bodies the
// parsers read, and parses the result and error bodies the builders write. Only the transport is
// replaced (a request handler that answers in-process), so no network is involved.
import assert from 'node:assert/strict';
import { Readable } from 'node:stream';
import { describe, it } from 'node:test';
import {
  CompleteMultipartUploadCommand,
  CreateMultipartUploadCommand,
  DeleteObjectsCommand,
  GetObjectCommand,
  ListObjectsV2Command,
  ListPartsCommand,
  S3Client,
  S3ServiceException,
} from '@aws-sdk/client-s3';
import type { ListRequest, ListResult, PartInfo } from '../../src/broker/providers/s3/contracts.ts';
import { S3Error } from '../../src/broker/providers/s3/contracts.ts';
import {
  completeMultipartUploadXml,
  deleteResultXml,
  errorXml,
  escapeXml,
  initiateMultipartUploadXml,
  listObjectsV2Xml,
  listPartsXml,
  parseCompleteMultipartUpload,
  parseDeleteObjects,
  parseXml,
  S3_XMLNS,
} from '../../src/broker/providers/s3/xml.ts';

type Exchange = { body: string; status: number; reply: string };

/** An S3 client whose requests are answered in-process: records the request body, returns `reply`. */
function fakeS3(): { client: S3Client; exchange: Exchange } {
  const exchange: Exchange = { body: '', status: 200, reply: '' };
  const client = new S3Client({
    region: 'us-east-1',
    endpoint: 'http://127.0.0.1:9',
    forcePathStyle: true,
    credentials: { accessKeyId: 'AKIDEXAMPLE', secretAccessKey: 'secret' },
    maxAttempts: 1,
    requestHandler: {
      async handle(request: { body?: unknown }) {
        const sent = request.body;
        exchange.body = typeof sent === 'string' ? sent : sent instanceof Uint8Array ? Buffer.from(sent).toString() : '';
        return {
          response: {
            statusCode: exchange.status,
            headers: { 'content-type': 'application/xml', 'x-amz-request-id': 'req-1' },
            body: Readable.from([Buffer.from(exchange.reply)]),
          },
        };
      },
    },
  });
  return { client, exchange };
}

const when = new Date('2024-05-01T12:00:00.123Z');
const TRICKY_KEYS = ['a & b <c> "d" \'e\'.txt', 'ü/日本語 😀.jsonl', 'tab\there', 'plus+and space', 'ctrl\u0001char'];

function listing(overrides: Partial<ListRequest> = {}): ListRequest {
  return { prefix: '', delimiter: undefined, continuationToken: undefined, startAfter: undefined, maxKeys: 1000, ...overrides };
}

function page(keys: string[], overrides: Partial<ListResult> = {}): ListResult {
  return {
    contents: keys.map((key, index) => ({ key, size: index, etag: `"etag-${index}"`, lastModified: when })),
    commonPrefixes: [],
    isTruncated: false,
    nextContinuationToken: undefined,
    keyCount: keys.length,
    ...overrides,
  };
}

describe('escapeXml', () => {
  it('escapes markup characters, and writes control characters as references', () => {
    assert.equal(escapeXml(`a&b<c>"d"'e'`), 'a&amp;b&lt;c&gt;&quot;d&quot;&apos;e&apos;');
    assert.equal(escapeXml('line\nbreak\r\ttab\u0001\u007f\u0085'), 'line&#xA;break&#xD;&#x9;tab&#x1;&#x7F;&#x85;');
    assert.equal(escapeXml('ü日本😀'), 'ü日本😀');
    assert.equal(escapeXml('lone\uD800'), 'lone\uFFFD');
  });
});

describe('result bodies, read back by the AWS SDK', () => {
  it('ListObjectsV2: keys that need escaping arrive intact, with every field', async () => {
    const { client, exchange } = fakeS3();
    const keys = TRICKY_KEYS.filter((key) => !key.includes('\u0001'));
    exchange.reply = listObjectsV2Xml(
      'datasets',
      listing({ prefix: '', delimiter: '/', maxKeys: 3, continuationToken: 'dG9rZW4', startAfter: 'a' }),
      page(keys, { commonPrefixes: ['dir & co/'], isTruncated: true, nextContinuationToken: 'bmV4dA', keyCount: keys.length + 1 }),
    );
    assert.ok(exchange.reply.startsWith('<?xml version="1.0" encoding="UTF-8"?>'));
    assert.ok(exchange.reply.includes(`xmlns="${S3_XMLNS}"`));
    const result = await client.send(new ListObjectsV2Command({ Bucket: 'datasets', Delimiter: '/' }));
    assert.equal(result.Name, 'datasets');
    assert.deepEqual(
      result.Contents?.map((object) => object.Key),
      keys,
    );
    assert.deepEqual(result.Contents?.[1], {
      Key: keys[1],
      LastModified: when,
      ETag: '"etag-1"',
      Size: 1,
      StorageClass: 'STANDARD',
    });
    assert.deepEqual(result.CommonPrefixes, [{ Prefix: 'dir & co/' }]);
    assert.equal(result.IsTruncated, true);
    assert.equal(result.KeyCount, keys.length + 1);
    assert.equal(result.MaxKeys, 3);
    assert.equal(result.Delimiter, '/');
    assert.equal(result.ContinuationToken, 'dG9rZW4');
    assert.equal(result.NextContinuationToken, 'bmV4dA');
    assert.equal(result.StartAfter, 'a');
  });

  it('ListObjectsV2 with EncodingType=url: every key, prefix and delimiter percent-encoded', async () => {
    const { client, exchange } = fakeS3();
    exchange.reply = listObjectsV2Xml(
      'datasets',
      listing({ prefix: 'ü/', delimiter: '/', startAfter: 'ü/a b' }),
      page(TRICKY_KEYS, { commonPrefixes: ['ü/sub dir/'] }),
      { encodingType: 'url' },
    );
    const result = await client.send(new ListObjectsV2Command({ Bucket: 'datasets', EncodingType: 'url' }));
    assert.equal(result.EncodingType, 'url');
    assert.deepEqual(
      result.Contents?.map((object) => decodeURIComponent(object.Key ?? '')),
      TRICKY_KEYS,
    );
    assert.equal(result.Contents?.[4]?.Key, 'ctrl%01char', 'a control character survives only this way');
    assert.equal(decodeURIComponent(result.Prefix ?? ''), 'ü/');
    assert.equal(result.Prefix, '%C3%BC/', '"/" is kept, as S3 keeps it');
    assert.equal(decodeURIComponent(result.StartAfter ?? ''), 'ü/a b');
    assert.deepEqual(result.CommonPrefixes, [{ Prefix: '%C3%BC/sub%20dir/' }]);
    assert.ok(!exchange.reply.includes('<ContinuationToken>'), 'absent fields are left out');
  });

  it('multipart results: initiate, list parts (paged), complete', async () => {
    const { client, exchange } = fakeS3();
    exchange.reply = initiateMultipartUploadXml('ckpt', 'run & 1/model.bin', 'abc123');
    const created = await client.send(new CreateMultipartUploadCommand({ Bucket: 'ckpt', Key: 'run & 1/model.bin' }));
    assert.deepEqual([created.Bucket, created.Key, created.UploadId], ['ckpt', 'run & 1/model.bin', 'abc123']);

    const parts: PartInfo[] = [1, 2, 3].map((partNumber) => ({
      partNumber,
      etag: `"md5-${partNumber}"`,
      size: partNumber * 10,
      lastModified: when,
    }));
    exchange.reply = listPartsXml('ckpt', 'k', 'abc123', parts, { partNumberMarker: 1, maxParts: 1 });
    const listed = await client.send(new ListPartsCommand({ Bucket: 'ckpt', Key: 'k', UploadId: 'abc123' }));
    assert.deepEqual(listed.Parts, [{ PartNumber: 2, ETag: '"md5-2"', Size: 20, LastModified: when }]);
    assert.equal(listed.IsTruncated, true);
    assert.equal(listed.PartNumberMarker, '1');
    assert.equal(listed.NextPartNumberMarker, '2');
    assert.equal(listed.MaxParts, 1);
    exchange.reply = listPartsXml('ckpt', 'k', 'abc123', parts);
    const all = await client.send(new ListPartsCommand({ Bucket: 'ckpt', Key: 'k', UploadId: 'abc123' }));
    assert.equal(all.Parts?.length, 3);
    assert.equal(all.IsTruncated, false);

    exchange.reply = completeMultipartUploadXml('http://broker/s3/ckpt/k', 'ckpt', 'k', '"abc-3"');
    const done = await client.send(
      new CompleteMultipartUploadCommand({
        Bucket: 'ckpt',
        Key: 'k',
        UploadId: 'abc123',
        MultipartUpload: { Parts: [{ PartNumber: 1, ETag: '"x"' }] },
      }),
    );
    assert.deepEqual([done.Location, done.Bucket, done.Key, done.ETag], ['http://broker/s3/ckpt/k', 'ckpt', 'k', '"abc-3"']);
  });

  it('Error: the SDK raises it with S3s code, message and detail', async () => {
    const { client, exchange } = fakeS3();
    exchange.status = 404;
    exchange.reply = errorXml('NoSuchKey', 'The specified key does not exist.', '/s3/datasets/a&b', 'req-1', {
      Key: 'a&b',
      'bad name<': 'dropped',
    });
    assert.ok(!exchange.reply.includes('bad name'), 'detail names that are not XML names are left out');
    await assert.rejects(client.send(new GetObjectCommand({ Bucket: 'datasets', Key: 'a&b' })), (error: unknown) => {
      assert.ok(error instanceof S3ServiceException);
      assert.equal(error.name, 'NoSuchKey');
      assert.equal(error.message, 'The specified key does not exist.');
      assert.equal(error.$metadata.httpStatusCode, 404);
      assert.equal((error as S3ServiceException & { Key?: string }).Key, 'a&b');
      return true;
    });
    assert.deepEqual(parseXml(exchange.reply), {
      name: 'Error',
      text: '',
      children: [
        { name: 'Code', text: 'NoSuchKey', children: [] },
        { name: 'Message', text: 'The specified key does not exist.', children: [] },
        { name: 'Key', text: 'a&b', children: [] },
        { name: 'Resource', text: '/s3/datasets/a&b', children: [] },
        { name: 'RequestId', text: 'req-1', children: [] },
      ],
    });
  });

  it('DeleteResult: deleted keys and errors; quiet lists only errors', async () => {
    const { client, exchange } = fakeS3();
    const outcomes = [{ key: 'a & b' }, { key: 'c', error: { code: 'AccessDenied', message: 'Access Denied' } }];
    exchange.reply = deleteResultXml(outcomes);
    const result = await client.send(new DeleteObjectsCommand({ Bucket: 'b', Delete: { Objects: [{ Key: 'a & b' }, { Key: 'c' }] } }));
    assert.deepEqual(result.Deleted, [{ Key: 'a & b' }]);
    assert.deepEqual(result.Errors, [{ Key: 'c', Code: 'AccessDenied', Message: 'Access Denied' }]);
    exchange.reply = deleteResultXml(outcomes, true);
    const quiet = await client.send(new DeleteObjectsCommand({ Bucket: 'b', Delete: { Objects: [{ Key: 'c' }], Quiet: true } }));
    assert.equal(quiet.Deleted, undefined);
    assert.equal(quiet.Errors?.length, 1);
  });
});

describe('parseCompleteMultipartUpload', () => {
  it('reads the body the AWS SDK sends, checksums included', async () => {
    const { client, exchange } = fakeS3();
    exchange.reply = completeMultipartUploadXml('l', 'b', 'k', '"e-2"');
    await client.send(
      new CompleteMultipartUploadCommand({
        Bucket: 'b',
        Key: 'k',
        UploadId: 'u',
        MultipartUpload: {
          Parts: [
            { PartNumber: 1, ETag: '"0cc175b9c0f1b6a831c399e269772661"', ChecksumCRC32: 'AAAAAA==' },
            { PartNumber: 2, ETag: '"92eb5ffee6ae2fec3ad71c777531578f"', ChecksumSHA256: 'abc=' },
          ],
        },
      }),
    );
    assert.match(exchange.body, /<CompleteMultipartUpload xmlns=/);
    assert.deepEqual(parseCompleteMultipartUpload(exchange.body), [
      { partNumber: 1, etag: '"0cc175b9c0f1b6a831c399e269772661"' },
      { partNumber: 2, etag: '"92eb5ffee6ae2fec3ad71c777531578f"' },
    ]);
  });

  it('reads what boto3 and hand-written clients send: whitespace, prefixes, unquoted ETags, comments', () => {
    const body = `<?xml version="1.0" encoding="UTF-8"?>
      <!-- written by hand -->
      <s3:CompleteMultipartUpload xmlns:s3="${S3_XMLNS}">
        <s3:Part>
          <s3:PartNumber> 1 </s3:PartNumber>
          <s3:ETag>&quot;aa&quot;</s3:ETag>
        </s3:Part>
        <Part><ETag>bb</ETag><ChecksumCRC32C>x</ChecksumCRC32C><PartNumber>2</PartNumber></Part>
        <Part>
          <PartNumber>3</PartNumber><ETag><![CDATA["cc"]]></ETag>
        </Part>
      </s3:CompleteMultipartUpload>
    `;
    assert.deepEqual(parseCompleteMultipartUpload(body), [
      { partNumber: 1, etag: '"aa"' },
      { partNumber: 2, etag: 'bb' },
      { partNumber: 3, etag: '"cc"' },
    ]);
  });

  it('answers MalformedXML for anything else', () => {
    const malformed = [
      '',
      'not xml',
      '<CompleteMultipartUpload>',
      '<CompleteMultipartUpload></CompleteMultipartUpload>',
      '<CompleteMultipartUpload><Part><PartNumber>1</PartNumber></Part></CompleteMultipartUpload>',
      '<CompleteMultipartUpload><Part><ETag>"a"</ETag></Part></CompleteMultipartUpload>',
      '<CompleteMultipartUpload><Part><PartNumber>one</PartNumber><ETag>"a"</ETag></Part></CompleteMultipartUpload>',
      '<CompleteMultipartUpload><Part><PartNumber>-1</PartNumber><ETag>"a"</ETag></Part></CompleteMultipartUpload>',
      '<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>"a"</ETag></Part></CompleteMultipartUploadX>',
      '<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>&bogus;</ETag></Part></CompleteMultipartUpload>',
      '<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>&#0;</ETag></Part></CompleteMultipartUpload>',
      '<!DOCTYPE x [<!ENTITY e "boom">]><CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>&e;</ETag></Part></CompleteMultipartUpload>',
      '<Other><Part><PartNumber>1</PartNumber><ETag>"a"</ETag></Part></Other>',
      '<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>"a"</ETag></Part></CompleteMultipartUpload><extra/>',
      `${'<a>'.repeat(100)}${'</a>'.repeat(100)}`,
    ];
    for (const body of malformed) {
      assert.throws(
        () => parseCompleteMultipartUpload(body),
        (error: unknown) => error instanceof S3Error && error.code === 'MalformedXML' && error.status === 400,
        body,
      );
    }
  });
});

describe('parseDeleteObjects', () => {
  it('reads the body the AWS SDK sends, keys exactly as written', async () => {
    const { client, exchange } = fakeS3();
    exchange.reply = deleteResultXml([]);
    const keys = ['a & <b>', ' spaced ', 'ü/日本.txt', 'tab\there'];
    await client.send(
      new DeleteObjectsCommand({
        Bucket: 'b',
        Delete: { Objects: [...keys.map((Key) => ({ Key })), { Key: 'v', VersionId: 'v1' }], Quiet: true },
      }),
    );
    assert.deepEqual(parseDeleteObjects(exchange.body), {
      quiet: true,
      objects: [...keys.map((key) => ({ key })), { key: 'v', versionId: 'v1' }],
    });
  });

  it('answers MalformedXML without objects, with an empty key, or with more than 1000', () => {
    const many = `<Delete>${'<Object><Key>k</Key></Object>'.repeat(1001)}</Delete>`;
    for (const body of ['<Delete></Delete>', '<Delete><Object><Key></Key></Object></Delete>', '<Delete><Object/></Delete>', many]) {
      assert.throws(
        () => parseDeleteObjects(body),
        (error: unknown) => error instanceof S3Error && error.code === 'MalformedXML',
      );
    }
    assert.equal(parseDeleteObjects(`<Delete>${'<Object><Key>k</Key></Object>'.repeat(1000)}</Delete>`).objects.length, 1000);
  });
});

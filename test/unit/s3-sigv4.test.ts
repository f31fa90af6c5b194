import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createServer, type IncomingHttpHeaders } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Readable } from 'node:stream';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import { crc32 } from 'node:zlib';
import {
  type ChecksumAlgorithm,
  GetObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
  type S3ClientConfig,
  UploadPartCommand,
} from '@aws-sdk/client-s3';
import { getSignedUrl } from '@aws-sdk/s3-request-presigner';
import { Sha256 } from '@smithy/core/checksum';
import { buildQueryString } from '@smithy/core/protocols';
import { SignatureV4 } from '@smithy/signature-v4';
import { S3Error, type SecretLookup, type SignedRequest, type Verified } from '../../src/broker/providers/s3/contracts.ts';
import { crc32c, EMPTY_SHA256 } from '../../src/broker/providers/s3/payload.ts';
import {
  canonicalQuery,
  canonicalQueryComponent,
  deriveSigningKey,
  SigningKeyCache,
  type VerifyOptions,
  verifySigV4,
} from '../../src/broker/providers/s3/sigv4.ts';

// The clients here are the real ones: @aws-sdk/client-s3 and its presigner sending to a loopback
// server that records the raw request, and @smithy/signature-v4 (the SDK's own signer) for
// requests the SDK would not build by itself. Nothing in these tests signs with our own code.

const ACCESS_KEY = 'JITTESTKEY0000000000';
const SECRET = 'wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY';
const TOKEN = 'jit_grant_credential_for_tests';
const credentials = { accessKeyId: ACCESS_KEY, secretAccessKey: SECRET, sessionToken: TOKEN };

type LookupCall = { accessKeyId: string; sessionToken: string | undefined };

function lookupFor(secret = SECRET): SecretLookup & { calls: LookupCall[] } {
  const calls: LookupCall[] = [];
  const lookup = async (accessKeyId: string, sessionToken: string | undefined) => {
    calls.push({ accessKeyId, sessionToken });
    if (accessKeyId !== ACCESS_KEY)
      throw new S3Error('InvalidAccessKeyId', 403, 'The AWS Access Key Id you provided does not exist in our records.');
    return secret;
  };
  return Object.assign(lookup, { calls });
}

async function rejectsWith(promise: Promise<unknown>, code: string, status: number, message?: RegExp): Promise<S3Error> {
  try {
    await promise;
  } catch (error) {
    assert.ok(error instanceof S3Error, `expected an S3Error, got ${String(error)}`);
    assert.equal(error.code, code, error.message);
    assert.equal(error.status, status);
    if (message) assert.match(error.message, message);
    return error;
  }
  assert.fail(`expected ${code}, but it resolved`);
}

async function readAll(stream: Readable): Promise<Buffer> {
  return Buffer.concat(await stream.toArray());
}

/** The body as a stream that hands it over `size` bytes at a time, as a slow TCP connection might. */
function inPieces(body: Buffer, size: number): Readable {
  const pieces: Buffer[] = [];
  for (let i = 0; i < body.length; i += size) pieces.push(body.subarray(i, i + size));
  return Readable.from(pieces, { objectMode: false });
}

// --- capturing what @aws-sdk/client-s3 really sends --------------------------------------------

type Captured = SignedRequest & { body: Buffer };

function joinHeaders(headers: IncomingHttpHeaders): Record<string, string> {
  const joined: Record<string, string> = {};
  for (const [name, value] of Object.entries(headers))
    if (value !== undefined) joined[name] = Array.isArray(value) ? value.join(',') : value;
  return joined;
}

const captured: Captured[] = [];
const server = createServer((request, response) => {
  const parts: Buffer[] = [];
  request.on('data', (part: Buffer) => parts.push(part));
  request.on('end', () => {
    const url = request.url ?? '/';
    const question = url.indexOf('?');
    captured.push({
      method: request.method ?? 'GET',
      rawPath: question === -1 ? url : url.slice(0, question),
      rawQuery: question === -1 ? '' : url.slice(question + 1),
      headers: joinHeaders(request.headers),
      now: Date.now(),
      body: Buffer.concat(parts),
    });
    response.writeHead(200, { etag: '"0"', 'content-type': 'application/xml' });
    response.end(request.method === 'GET' && url.includes('list-type=2') ? '<ListBucketResult></ListBucketResult>' : '');
  });
});
let endpoint = '';

before(async () => {
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  endpoint = `http://127.0.0.1:${(server.address() as AddressInfo).port}/s3`;
});
after(() => server.close());

function client(config: Partial<S3ClientConfig> = {}): S3Client {
  return new S3Client({ endpoint, region: 'us-east-1', forcePathStyle: true, credentials, maxAttempts: 1, ...config });
}

/** Sends one command through the real client and returns the request the server received. */
async function sent(send: (s3: S3Client) => Promise<unknown>, config: Partial<S3ClientConfig> = {}): Promise<Captured> {
  const before = captured.length;
  const s3 = client(config);
  try {
    await send(s3);
  } catch {
    // Only the request matters here; the loopback server's answers are not always what the client wants to parse.
  } finally {
    s3.destroy();
  }
  const request = captured[before];
  assert.ok(request, 'the client sent nothing');
  return request;
}

describe('verifySigV4 with requests @aws-sdk/client-s3 sends', () => {
  const awkwardKey = 'données/é x+y~(1)*!.jsonl';

  it('accepts a GET of a key that needs encoding, behind an endpoint path prefix, and passes the session token to the lookup', async () => {
    const request = await sent((s3) => s3.send(new GetObjectCommand({ Bucket: 'datasets', Key: awkwardKey, Range: 'bytes=0-9' })));
    assert.ok(request.rawPath.startsWith('/s3/datasets/donn%C3%A9es/'), request.rawPath);
    const lookup = lookupFor();
    const verified = await verifySigV4(request, lookup);
    assert.equal(verified.accessKeyId, ACCESS_KEY);
    assert.equal(verified.sessionToken, TOKEN);
    assert.deepEqual(lookup.calls, [{ accessKeyId: ACCESS_KEY, sessionToken: TOKEN }]);
  });

  it('accepts ListObjectsV2 with a prefix, delimiter, start-after and continuation token that need encoding', async () => {
    const request = await sent((s3) =>
      s3.send(
        new ListObjectsV2Command({
          Bucket: 'datasets',
          Prefix: 'données/a b+c~/',
          Delimiter: '/',
          StartAfter: 'données/a b+c~/é',
          ContinuationToken: 'tok/en+=',
          MaxKeys: 7,
        }),
      ),
    );
    assert.match(request.rawQuery, /list-type=2/);
    assert.match(request.rawQuery, /prefix=donn%C3%A9es%2Fa%20b%2Bc~%2F/);
    const verified = await verifySigV4(request, lookupFor());
    assert.equal(verified.payload, 'signed');
  });

  it('refuses the same request with a changed path, query or signed header, and under a wrong secret', async () => {
    const request = await sent((s3) => s3.send(new ListObjectsV2Command({ Bucket: 'datasets', Prefix: 'train/' })));
    await verifySigV4(request, lookupFor());
    const changed: SignedRequest[] = [
      { ...request, rawPath: request.rawPath.replace('datasets', 'secrets') },
      { ...request, rawQuery: request.rawQuery.replace('prefix=train', 'prefix=test') },
      {
        ...request,
        headers: {
          ...request.headers,
          'x-amz-date': request.headers['x-amz-date']?.replace(/\d(?=Z$)/, (d) => String((Number(d) + 1) % 10)) ?? '',
        },
      },
    ];
    for (const each of changed) await rejectsWith(verifySigV4(each, lookupFor()), 'SignatureDoesNotMatch', 403);
    const error = await rejectsWith(verifySigV4(request, lookupFor('another secret')), 'SignatureDoesNotMatch', 403);
    assert.match(error.detail.StringToSign ?? '', /^AWS4-HMAC-SHA256\n/);
  });

  it('lets the lookup refuse an unknown key', async () => {
    const request = await sent((s3) => s3.send(new GetObjectCommand({ Bucket: 'datasets', Key: 'a' })), {
      credentials: { ...credentials, accessKeyId: 'AKIDUNKNOWN' },
    });
    await rejectsWith(verifySigV4(request, lookupFor()), 'InvalidAccessKeyId', 403);
  });

  it('refuses an x-amz-* header that was not signed', async () => {
    const request = await sent((s3) => s3.send(new GetObjectCommand({ Bucket: 'datasets', Key: 'a' })));
    const error = await rejectsWith(
      verifySigV4({ ...request, headers: { ...request.headers, 'x-amz-copy-source': '/secrets/b' } }, lookupFor()),
      'AccessDenied',
      403,
    );
    assert.equal(error.detail.HeadersNotSigned, 'x-amz-copy-source');
  });

  it('checks a PUT body against its signed sha256 (and its crc32 header) as it streams', async () => {
    const body = Buffer.from('{"text":"hello"}\n'.repeat(1000));
    const request = await sent((s3) => s3.send(new PutObjectCommand({ Bucket: 'datasets', Key: awkwardKey, Body: body })));
    assert.equal(request.headers['x-amz-content-sha256'], createHash('sha256').update(body).digest('hex'));
    const verified = await verifySigV4(request, lookupFor());
    assert.equal(verified.payload, 'signed');
    assert.deepEqual(await readAll(verified.body(inPieces(request.body, 1000))), body);

    const tampered = Buffer.from(body);
    tampered[10] = 0x21;
    await rejectsWith(readAll(verified.body(inPieces(tampered, 1000))), 'XAmzContentSHA256Mismatch', 400);
  });

  for (const algorithm of ['CRC32', 'CRC32C', 'SHA1', 'SHA256'] as ChecksumAlgorithm[]) {
    it(`decodes the aws-chunked body the client streams with a trailing ${algorithm}, and catches a changed byte`, async () => {
      const body = Buffer.alloc(200_000);
      for (let i = 0; i < body.length; i++) body[i] = (i * 31) & 0xff;
      const request = await sent((s3) =>
        s3.send(
          new UploadPartCommand({
            Bucket: 'checkpoints',
            Key: 'run-42/model.safetensors',
            UploadId: 'upload-1',
            PartNumber: 1,
            Body: Readable.from([body.subarray(0, 70_000), body.subarray(70_000)]),
            ContentLength: body.length,
            ChecksumAlgorithm: algorithm,
          }),
        ),
      );
      assert.equal(request.headers['x-amz-content-sha256'], 'STREAMING-UNSIGNED-PAYLOAD-TRAILER');
      assert.equal(request.headers['x-amz-trailer'], `x-amz-checksum-${algorithm.toLowerCase()}`);
      const verified = await verifySigV4(request, lookupFor());
      assert.equal(verified.payload, 'streaming-unsigned-trailer');
      assert.deepEqual(await readAll(verified.body(inPieces(request.body, 4096))), body);
      assert.deepEqual(await readAll(verified.body(inPieces(request.body, 7))), body);

      const tampered = Buffer.from(request.body);
      const at = tampered.indexOf(body.subarray(100_000, 100_016));
      tampered[at] = (tampered[at] as number) ^ 1;
      await rejectsWith(readAll(verified.body(inPieces(tampered, 4096))), 'BadDigest', 400);
    });
  }

  it('decodes what PutObject streams by default, one byte at a time, and refuses a changed x-amz-decoded-content-length', async () => {
    const body = Buffer.from('shard 0\n'.repeat(5000));
    const request = await sent((s3) =>
      s3.send(
        new PutObjectCommand({ Bucket: 'datasets', Key: 'train/shard-0.txt', Body: Readable.from([body]), ContentLength: body.length }),
      ),
    );
    assert.equal(request.headers['content-encoding'], 'aws-chunked');
    const verified = await verifySigV4(request, lookupFor());
    assert.deepEqual(await readAll(verified.body(inPieces(request.body, 1))), body);
    const lying = { ...request, headers: { ...request.headers, 'x-amz-decoded-content-length': String(body.length + 1) } };
    await rejectsWith(verifySigV4(lying, lookupFor()), 'SignatureDoesNotMatch', 403);
  });
});

// boto3 is what training scripts use; .ci/run installs it (python3-boto3). Where it is missing the
// test says so and skips rather than pretending.
const BOTO3_SCRIPT = `
import sys, urllib.request, boto3
from botocore.config import Config
endpoint, token = sys.argv[1], sys.argv[2]
def client(**config):
    return boto3.client('s3', endpoint_url=endpoint, region_name='us-east-1', aws_access_key_id='${ACCESS_KEY}',
        aws_secret_access_key='${SECRET}', aws_session_token=token,
        config=Config(s3={'addressing_style': 'path'}, retries={'max_attempts': 1}, **config))
s3 = client()
key = 'données/é x+y~(1)*!$@:,;=.jsonl'
s3.list_objects_v2(Bucket='datasets', Prefix='données/a b+c~/', Delimiter='/', StartAfter='x y')
s3.put_object(Bucket='datasets', Key=key, Body=b'hello world' * 1000)
urllib.request.urlopen(client(signature_version='s3v4').generate_presigned_url('get_object', Params={'Bucket': 'datasets', 'Key': key}, ExpiresIn=300)).read()
`;

const hasBoto3 = () =>
  promisify(execFile)('python3', ['-c', 'import boto3']).then(
    () => true,
    () => false,
  );

describe('verifySigV4 with requests boto3 sends', () => {
  it('accepts its list, its signed-payload PUT of an awkward key and its SigV4 presigned GET', async (t) => {
    if (!(await hasBoto3())) {
      t.skip('python3 with boto3 is not installed here (Debian: python3-boto3)');
      return;
    }
    const first = captured.length;
    await promisify(execFile)('python3', ['-c', BOTO3_SCRIPT, endpoint, TOKEN]);
    const requests = captured.slice(first);
    assert.equal(requests.length, 3);
    const [list, put, presignedGet] = requests as [Captured, Captured, Captured];
    assert.match(list.rawQuery, /prefix=donn%C3%A9es%2Fa%20b%2Bc~%2F/);
    assert.equal((await verifySigV4(list, lookupFor())).payload, 'signed');
    const verifiedPut = await verifySigV4(put, lookupFor());
    assert.deepEqual(await readAll(verifiedPut.body(inPieces(put.body, 1500))), Buffer.from('hello world'.repeat(1000)));
    assert.match(presignedGet.rawQuery, /X-Amz-Algorithm=AWS4-HMAC-SHA256/);
    const lookup = lookupFor();
    await verifySigV4(presignedGet, lookup);
    assert.deepEqual(lookup.calls, [{ accessKeyId: ACCESS_KEY, sessionToken: TOKEN }]);
  });
});

// --- signing with the SDK's own signer ---------------------------------------------------------

type SignInput = {
  method?: string;
  path: string;
  query?: Record<string, string | string[]>;
  headers?: Record<string, string>;
  body?: string | Uint8Array;
};

function signerFor(options: { region?: string; service?: string; secret?: string; token?: string | undefined } = {}): SignatureV4 {
  return new SignatureV4({
    credentials: {
      accessKeyId: ACCESS_KEY,
      secretAccessKey: options.secret ?? SECRET,
      ...(options.token === undefined ? {} : { sessionToken: options.token }),
    },
    region: options.region ?? 'us-east-1',
    service: options.service ?? 's3',
    sha256: Sha256,
    uriEscapePath: false,
  });
}

/** Signs like the S3 client does, and renders the request as it goes on the wire (the node-http-handler's query building). */
async function signed(input: SignInput, options: Parameters<typeof signerFor>[0] & { date?: Date } = {}): Promise<SignedRequest> {
  const headers = { host: 'gateway.test:9000', ...input.headers };
  const request = await signerFor(options).sign(
    {
      method: input.method ?? 'GET',
      protocol: 'http:',
      hostname: 'gateway.test',
      port: 9000,
      path: input.path,
      query: input.query ?? {},
      headers,
      body: input.body,
    },
    { signingDate: options.date ?? new Date() },
  );
  const lowered: Record<string, string> = {};
  for (const [name, value] of Object.entries(request.headers)) lowered[name.toLowerCase()] = value;
  return {
    method: request.method,
    rawPath: request.path,
    rawQuery: buildQueryString(request.query ?? {}),
    headers: lowered,
    now: Date.now(),
  };
}

describe('verifySigV4 with requests @smithy/signature-v4 signs', () => {
  it('accepts query parameters that need encoding, repeated keys and keys without values', async () => {
    const request = await signed({
      path: '/datasets/donn%C3%A9es/%C3%A9.jsonl',
      query: { 'a key': 'a b', tilde: '~x', slash: 'a/b', plus: 'a+b', clé: 'données/é.jsonl', uploads: '', many: ['z', 'a', 'm'] },
      headers: { 'x-amz-content-sha256': 'UNSIGNED-PAYLOAD' },
    });
    const verified = await verifySigV4(request, lookupFor());
    assert.equal(verified.payload, 'unsigned');
    const raw = Readable.from([Buffer.from('anything')]);
    assert.equal(verified.body(raw), raw, 'an unsigned body with no checksum is the raw stream itself');
  });

  it('checks an unsigned body against the x-amz-checksum-* and Content-MD5 headers it was sent with', async () => {
    const body = Buffer.from('{"step":1}\n'.repeat(100));
    const crc = Buffer.alloc(4);
    crc.writeUInt32BE(crc32(body));
    const headers = {
      'x-amz-content-sha256': 'UNSIGNED-PAYLOAD',
      'x-amz-checksum-crc32': crc.toString('base64'),
      'content-md5': createHash('md5').update(body).digest('base64'),
    };
    const request = await signed({ method: 'PUT', path: '/checkpoints/step-1.json', headers });
    const verified = await verifySigV4(request, lookupFor());
    assert.deepEqual(await readAll(verified.body(inPieces(body, 100))), body);
    await rejectsWith(readAll(verified.body(inPieces(Buffer.concat([body, Buffer.from('!')]), 100))), 'BadDigest', 400);
    const badMd5 = await signed({ method: 'PUT', path: '/checkpoints/step-1.json', headers: { ...headers, 'content-md5': 'not-md5' } });
    await rejectsWith(verifySigV4(badMd5, lookupFor()), 'InvalidDigest', 400);
  });

  it('accepts a request signed without a session token', async () => {
    const request = await signed({ path: '/datasets/a' }, { token: undefined });
    const lookup = lookupFor();
    await verifySigV4(request, lookup);
    assert.deepEqual(lookup.calls, [{ accessKeyId: ACCESS_KEY, sessionToken: undefined }]);
  });

  it('accepts any region in the scope unless one is required', async () => {
    const request = await signed({ path: '/datasets/a' }, { region: 'eu-west-3' });
    await verifySigV4(request, lookupFor());
    await verifySigV4(request, lookupFor(), { region: 'eu-west-3' });
    const error = await rejectsWith(verifySigV4(request, lookupFor(), { region: 'us-east-1' }), 'AuthorizationHeaderMalformed', 400);
    assert.equal(error.detail.Region, 'us-east-1');
  });

  it('refuses a scope for another service', async () => {
    const request = await signed({ path: '/datasets/a' }, { service: 'ec2' });
    await rejectsWith(verifySigV4(request, lookupFor()), 'AuthorizationHeaderMalformed', 400, /incorrect service "ec2"/);
  });

  it('refuses a request signed further from the server clock than the skew allows', async () => {
    const twentyMinutes = 20 * 60 * 1000;
    const old = await signed({ path: '/datasets/a' }, { date: new Date(Date.now() - twentyMinutes) });
    const error = await rejectsWith(verifySigV4(old, lookupFor()), 'RequestTimeTooSkewed', 403);
    assert.equal(error.detail.MaxAllowedSkewMilliseconds, '900000');
    await verifySigV4(old, lookupFor(), { maxSkewMs: twentyMinutes + 60_000 });
    const future = await signed({ path: '/datasets/a' }, { date: new Date(Date.now() + twentyMinutes) });
    await rejectsWith(verifySigV4(future, lookupFor()), 'RequestTimeTooSkewed', 403);
  });

  it('refuses missing and garbled authorization as S3 does', async () => {
    const good = await signed({ path: '/datasets/a' });
    const without = (name: string): SignedRequest => {
      const headers = { ...good.headers };
      delete headers[name];
      return { ...good, headers };
    };
    const authorization = good.headers.authorization ?? '';
    const cases: [SignedRequest, string, number][] = [
      [without('authorization'), 'AccessDenied', 403],
      [without('x-amz-date'), 'AccessDenied', 403],
      [without('x-amz-content-sha256'), 'InvalidRequest', 400],
      [{ ...good, headers: { ...good.headers, authorization: 'AWS AKID:c2lnbmF0dXJl' } }, 'InvalidRequest', 400],
      [
        { ...good, headers: { ...good.headers, authorization: authorization.replace(/, Signature=.*/, '') } },
        'AuthorizationHeaderMalformed',
        400,
      ],
      [
        { ...good, headers: { ...good.headers, authorization: authorization.replace('/aws4_request', '/aws5_request') } },
        'AuthorizationHeaderMalformed',
        400,
      ],
      [
        { ...good, headers: { ...good.headers, authorization: authorization.replace(/\/\d{8}\//, '/20000101/') } },
        'AuthorizationHeaderMalformed',
        400,
      ],
      [
        { ...good, headers: { ...good.headers, authorization: authorization.replace('SignedHeaders=', 'SignedHeaders=x;') } },
        'SignatureDoesNotMatch',
        403,
      ],
      [{ ...good, headers: { ...good.headers, 'x-amz-content-sha256': 'NOT-A-HASH' } }, 'InvalidArgument', 400],
      [{ ...good, rawQuery: 'X-Amz-Algorithm=AWS4-HMAC-SHA256' }, 'InvalidArgument', 400],
      [{ ...without('authorization'), rawQuery: 'AWSAccessKeyId=AKID&Expires=1700000000&Signature=c2ln' }, 'InvalidRequest', 400],
    ];
    for (const [request, code, status] of cases) await rejectsWith(verifySigV4(request, lookupFor()), code, status);
  });

  it('accepts a request dated by the Date header alone', async () => {
    const date = new Date(Math.floor(Date.now() / 1000) * 1000);
    const signer = signerFor();
    // The SDK always adds x-amz-date; sign a canonical request carrying only `date` by hand with its signString.
    const longDate = date.toISOString().replace(/[-:]|\.\d{3}/g, '');
    const scope = `${longDate.slice(0, 8)}/us-east-1/s3/aws4_request`;
    const headers = { host: 'gateway.test', date: date.toUTCString(), 'x-amz-content-sha256': EMPTY_SHA256 };
    const canonical = `GET\n/datasets/a\n\ndate:${headers.date}\nhost:gateway.test\nx-amz-content-sha256:${EMPTY_SHA256}\n\ndate;host;x-amz-content-sha256\n${EMPTY_SHA256}`;
    const toSign = `AWS4-HMAC-SHA256\n${longDate}\n${scope}\n${createHash('sha256').update(canonical).digest('hex')}`;
    const signature = await signer.sign(toSign, { signingDate: date });
    const authorization = `AWS4-HMAC-SHA256 Credential=${ACCESS_KEY}/${scope}, SignedHeaders=date;host;x-amz-content-sha256, Signature=${signature}`;
    await verifySigV4(
      { method: 'GET', rawPath: '/datasets/a', rawQuery: '', headers: { ...headers, authorization }, now: Date.now() },
      lookupFor(),
    );
  });

  it('matches the example in the S3 documentation (GET with Range)', async () => {
    // https://docs.aws.amazon.com/AmazonS3/latest/API/sig-v4-header-based-auth.html, "GET Object"
    const authorization =
      'AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41';
    const request: SignedRequest = {
      method: 'GET',
      rawPath: '/test.txt',
      rawQuery: '',
      headers: {
        host: 'examplebucket.s3.amazonaws.com',
        range: 'bytes=0-9',
        'x-amz-content-sha256': EMPTY_SHA256,
        'x-amz-date': '20130524T000000Z',
        authorization,
      },
      now: Date.UTC(2013, 4, 24, 0, 5),
    };
    const verified = await verifySigV4(request, async () => SECRET);
    assert.equal(verified.accessKeyId, 'AKIAIOSFODNN7EXAMPLE');
  });
});

describe('verifySigV4 with presigned URLs from @aws-sdk/s3-request-presigner', () => {
  const presignClient = () =>
    new S3Client({ endpoint: 'http://127.0.0.1:9000/s3', region: 'us-east-1', forcePathStyle: true, credentials });

  async function presigned(key: string, expiresIn: number, signingDate = new Date()): Promise<SignedRequest> {
    const s3 = presignClient();
    const url = new URL(await getSignedUrl(s3, new GetObjectCommand({ Bucket: 'datasets', Key: key }), { expiresIn, signingDate }));
    s3.destroy();
    return { method: 'GET', rawPath: url.pathname, rawQuery: url.search.slice(1), headers: { host: url.host }, now: Date.now() };
  }

  it('accepts a presigned GET under the endpoint path prefix, with the session token from the query', async () => {
    const request = await presigned('données/é x+y.jsonl', 300);
    assert.ok(request.rawPath.startsWith('/s3/datasets/donn%C3%A9es/%C3%A9%20x%2By.jsonl'), request.rawPath);
    const lookup = lookupFor();
    const verified = await verifySigV4(request, lookup);
    assert.equal(verified.payload, 'unsigned');
    assert.deepEqual(lookup.calls, [{ accessKeyId: ACCESS_KEY, sessionToken: TOKEN }]);
  });

  it('refuses an expired URL, a URL not valid yet, a changed key and a malformed expiry', async () => {
    const request = await presigned('train/a.jsonl', 60, new Date(Date.now() - 61_000));
    await rejectsWith(verifySigV4(request, lookupFor()), 'AccessDenied', 403, /Request has expired/);
    const fresh = await presigned('train/a.jsonl', 60);
    await verifySigV4(fresh, lookupFor());
    await rejectsWith(verifySigV4({ ...fresh, now: fresh.now + 61_000 }, lookupFor()), 'AccessDenied', 403, /Request has expired/);
    await rejectsWith(verifySigV4({ ...fresh, now: fresh.now - 3_600_000 }, lookupFor()), 'AccessDenied', 403, /not valid yet/);
    await rejectsWith(
      verifySigV4({ ...fresh, rawPath: fresh.rawPath.replace('train', 'test') }, lookupFor()),
      'SignatureDoesNotMatch',
      403,
    );
    for (const expires of ['0', '604801', 'soon']) {
      const rawQuery = fresh.rawQuery.replace(/X-Amz-Expires=\d+/, `X-Amz-Expires=${expires}`);
      await rejectsWith(verifySigV4({ ...fresh, rawQuery }, lookupFor()), 'AuthorizationQueryParametersError', 400);
    }
    await rejectsWith(
      verifySigV4({ ...fresh, rawQuery: fresh.rawQuery.replace(/&?X-Amz-Date=[^&]*/, '') }, lookupFor()),
      'AuthorizationQueryParametersError',
      400,
    );
  });
});

// --- aws-chunked with signed chunks, built by hand as boto3 and older SDKs send it --------------

type ChunkedOptions = {
  trailer?: { name: string; value: string };
  chunkSize?: number;
  /** x-amz-decoded-content-length as signed, when it should differ from the data's length. */
  declaredLength?: number;
  tamper?: (body: Buffer) => Buffer;
};

/**
 * A STREAMING-AWS4-HMAC-SHA256-PAYLOAD(-TRAILER) request: headers signed by @smithy/signature-v4,
 * chunk signatures by its signEvent (the chunk string to sign is the event one with no headers),
 * the trailer signature by its signString.
 */
async function signedChunked(data: Buffer, options: ChunkedOptions = {}): Promise<{ request: SignedRequest; body: Buffer }> {
  const date = new Date();
  const signer = signerFor();
  const mode = options.trailer ? 'STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER' : 'STREAMING-AWS4-HMAC-SHA256-PAYLOAD';
  const request = await signed(
    {
      method: 'PUT',
      path: '/checkpoints/run-42/step-1.bin',
      headers: {
        'content-encoding': 'aws-chunked',
        'x-amz-content-sha256': mode,
        'x-amz-decoded-content-length': String(options.declaredLength ?? data.length),
        ...(options.trailer ? { 'x-amz-trailer': options.trailer.name } : {}),
      },
    },
    { date },
  );
  let previous = /Signature=([0-9a-f]{64})/.exec(request.headers.authorization ?? '')?.[1] ?? '';
  const size = options.chunkSize ?? 64 * 1024;
  const parts: Buffer[] = [];
  for (let offset = 0; ; offset += size) {
    const chunk = data.subarray(offset, offset + size);
    previous = await signer.sign({ headers: new Uint8Array(0), payload: chunk }, { signingDate: date, priorSignature: previous });
    parts.push(Buffer.from(`${chunk.length.toString(16)};chunk-signature=${previous}\r\n`), chunk);
    if (chunk.length === 0) break;
    parts.push(Buffer.from('\r\n'));
  }
  if (options.trailer) {
    const { name, value } = options.trailer;
    const longDate = request.headers['x-amz-date'] ?? '';
    const scope = `${longDate.slice(0, 8)}/us-east-1/s3/aws4_request`;
    const hash = createHash('sha256').update(`${name}:${value}\n`).digest('hex');
    const signature = await signer.sign(`AWS4-HMAC-SHA256-TRAILER\n${longDate}\n${scope}\n${previous}\n${hash}`, { signingDate: date });
    parts.push(Buffer.from(`${name}:${value}\r\nx-amz-trailer-signature:${signature}\r\n`));
  }
  parts.push(Buffer.from('\r\n'));
  const body = Buffer.concat(parts);
  return { request, body: options.tamper ? options.tamper(body) : body };
}

const crc32cOf = (data: Buffer) => {
  const value = Buffer.alloc(4);
  value.writeUInt32BE(crc32c(data));
  return value.toString('base64');
};

describe('aws-chunked bodies with signed chunks', () => {
  const data = Buffer.from(Array.from({ length: 3000 }, (_, i) => `line ${i}\n`).join(''));

  async function decode(request: SignedRequest, body: Buffer, pieceSize: number): Promise<Buffer> {
    const verified: Verified = await verifySigV4(request, lookupFor());
    return readAll(verified.body(inPieces(body, pieceSize)));
  }

  it('decodes STREAMING-AWS4-HMAC-SHA256-PAYLOAD read one byte at a time', async () => {
    const { request, body } = await signedChunked(data, { chunkSize: 8192 });
    assert.equal((await verifySigV4(request, lookupFor())).payload, 'streaming-signed');
    assert.deepEqual(await decode(request, body, 1), data);
    assert.deepEqual(await decode(request, body, 8195), data);
  });

  it('decodes an empty body (only the final chunk)', async () => {
    const { request, body } = await signedChunked(Buffer.alloc(0));
    assert.deepEqual(await decode(request, body, 1), Buffer.alloc(0));
  });

  it('refuses a changed byte, a swapped chunk signature, a truncated body and trailing garbage', async () => {
    const flip = (body: Buffer) => {
      const copy = Buffer.from(body);
      const at = copy.indexOf('line 2000');
      copy[at] = 0x4c;
      return copy;
    };
    const changed = await signedChunked(data, { chunkSize: 8192, tamper: flip });
    await rejectsWith(decode(changed.request, changed.body, 1), 'SignatureDoesNotMatch', 403);

    const good = await signedChunked(data, { chunkSize: 8192 });
    const signatures = [...good.body.toString('latin1').matchAll(/chunk-signature=([0-9a-f]{64})/g)].map((match) => match[1] ?? '');
    assert.ok(signatures.length >= 3);
    // The second chunk carrying the first one's signature: chained signatures make a replayed chunk fail.
    const swapped = Buffer.from(good.body.toString('latin1').replace(signatures[1] ?? '', signatures[0] ?? ''), 'latin1');
    await rejectsWith(decode(good.request, swapped, 1000), 'SignatureDoesNotMatch', 403);
    await rejectsWith(decode(good.request, good.body.subarray(0, good.body.length - 5), 1000), 'IncompleteBody', 400);
    await rejectsWith(decode(good.request, Buffer.concat([good.body, Buffer.from('5\r\nextra\r\n')]), 1000), 'InvalidRequest', 400);
  });

  it('refuses a body whose decoded length is not x-amz-decoded-content-length', async () => {
    // Signed consistently, chunks and all: only the length check can catch these.
    const more = await signedChunked(data, { chunkSize: 8192, declaredLength: data.length + 1 });
    await rejectsWith(decode(more.request, more.body, 1000), 'IncompleteBody', 400);
    const fewer = await signedChunked(data, { chunkSize: 8192, declaredLength: data.length - 1 });
    await rejectsWith(decode(fewer.request, fewer.body, 1000), 'IncompleteBody', 400);
  });

  it('verifies a signed trailer and its checksum (STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER)', async () => {
    const trailer = { name: 'x-amz-checksum-crc32c', value: crc32cOf(data) };
    const { request, body } = await signedChunked(data, { chunkSize: 4096, trailer });
    assert.equal((await verifySigV4(request, lookupFor())).payload, 'streaming-signed-trailer');
    assert.deepEqual(await decode(request, body, 1), data);

    const wrongChecksum = await signedChunked(data, { chunkSize: 4096, trailer: { ...trailer, value: crc32cOf(data.subarray(1)) } });
    await rejectsWith(decode(wrongChecksum.request, wrongChecksum.body, 999), 'BadDigest', 400);

    const unsignedChange = Buffer.from(body.toString('latin1').replace(trailer.value, crc32cOf(data.subarray(1))), 'latin1');
    await rejectsWith(decode(request, unsignedChange, 999), 'SignatureDoesNotMatch', 403);
  });

  it('passes an unknown trailing checksum through unverified', async () => {
    const { request, body } = await signedChunked(data, {
      chunkSize: 4096,
      trailer: { name: 'x-amz-checksum-crc64nvme', value: 'AAAAAAAAAAA=' },
    });
    assert.deepEqual(await decode(request, body, 333), data);
  });
});

describe('helpers', () => {
  it('encodes query components as AWS canonicalises them', () => {
    assert.equal(canonicalQueryComponent('abc-._~XYZ09'), 'abc-._~XYZ09');
    assert.equal(canonicalQueryComponent('a b'), 'a%20b');
    assert.equal(canonicalQueryComponent('a%20b'), 'a%20b');
    assert.equal(canonicalQueryComponent('a+b'), 'a%2Bb');
    assert.equal(canonicalQueryComponent('%7e%2f%c3%a9'), '~%2F%C3%A9');
    assert.equal(canonicalQueryComponent('é'), '%C3%A9');
    assert.equal(canonicalQueryComponent('😀'), '%F0%9F%98%80');
    assert.equal(canonicalQueryComponent('100%'), '100%25');
    assert.equal(canonicalQuery('b=2&a=&c&a=1&X-Amz-Signature=abc&%61=0'), 'a=&a=0&a=1&b=2&c=');
  });

  it('computes CRC-32C as the reference vector says, also in pieces (the SDK cross-check is the CRC32C upload above)', async () => {
    assert.equal(crc32c(Buffer.from('123456789')), 0xe3069283);
    const data = Buffer.from(Array.from({ length: 1001 }, (_, i) => (i * 7919) & 0xff));
    assert.equal(crc32c(data.subarray(500), crc32c(data.subarray(0, 500))), crc32c(data));
  });

  it('caches signing keys by secret, day and region', () => {
    const cache = new SigningKeyCache(2);
    const key = cache.get(SECRET, '20130524', 'us-east-1');
    assert.ok(key.equals(deriveSigningKey(SECRET, '20130524', 'us-east-1')));
    assert.equal(cache.get(SECRET, '20130524', 'us-east-1'), key);
    assert.ok(!cache.get(SECRET, '20130525', 'us-east-1').equals(key));
    assert.ok(!cache.get(SECRET, '20130524', 'eu-west-1').equals(key));
    assert.ok(!cache.get('another secret', '20130524', 'us-east-1').equals(key));
    assert.notEqual(cache.get(SECRET, '20130524', 'us-east-1'), key, 'the oldest entry went when a third arrived');
  });

  it('verifies with a shared signing-key cache', async () => {
    const options: VerifyOptions = { signingKeys: new SigningKeyCache() };
    for (let i = 0; i < 3; i++) await verifySigV4(await signed({ path: `/datasets/${i}` }), lookupFor(), options);
    await rejectsWith(verifySigV4(await signed({ path: '/datasets/a' }), lookupFor('other'), options), 'SignatureDoesNotMatch', 403);
  });
});

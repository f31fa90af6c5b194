// FsBackend against real files in a temporary directory: what a bucket kept in a directory does.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, readdir, readFile, rm, stat, symlink, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { PassThrough, Readable } from 'node:stream';
import { text } from 'node:stream/consumers';
import { afterEach, beforeEach, describe, it } from 'node:test';
import type { ListRequest, ListResult } from '../../src/broker/providers/s3/contracts.ts';
import { S3Error } from '../../src/broker/providers/s3/contracts.ts';
import { FsBackend, multipartEtag, STAGING_DIR } from '../../src/broker/providers/s3/fs-backend.ts';

let root: string;
let outside: string;

beforeEach(async () => {
  const base = await mkdtemp(path.join(tmpdir(), 'jit-s3-fs-'));
  root = path.join(base, 'bucket');
  outside = path.join(base, 'outside');
  await mkdir(root);
  await mkdir(outside);
  await writeFile(path.join(outside, 'secret.txt'), 'secret');
});

afterEach(async () => {
  await rm(path.dirname(root), { recursive: true, force: true });
});

async function place(files: Record<string, string>): Promise<void> {
  for (const [key, content] of Object.entries(files)) {
    await mkdir(path.dirname(path.join(root, key)), { recursive: true });
    await writeFile(path.join(root, key), content);
  }
}

function request(overrides: Partial<ListRequest> = {}): ListRequest {
  return { prefix: '', delimiter: undefined, continuationToken: undefined, startAfter: undefined, maxKeys: 1000, ...overrides };
}

const byBytes = (a: string, b: string) => Buffer.compare(Buffer.from(a), Buffer.from(b));

/** S3's ListObjectsV2 over a plain set of keys, written the obvious way, to compare pages against. */
function modelList(keys: string[], listing: ListRequest): { keys: string[]; prefixes: string[] } {
  const items: { key: string; commonPrefix: boolean }[] = [];
  for (const key of [...keys].sort(byBytes)) {
    if (!key.startsWith(listing.prefix)) continue;
    if (listing.startAfter !== undefined && byBytes(key, listing.startAfter) <= 0) continue;
    const index = listing.delimiter ? key.indexOf(listing.delimiter, listing.prefix.length) : -1;
    if (index < 0) items.push({ key, commonPrefix: false });
    else {
      const prefix = key.slice(0, index + (listing.delimiter?.length ?? 0));
      if (items[items.length - 1]?.key !== prefix && (listing.startAfter === undefined || byBytes(prefix, listing.startAfter) > 0)) {
        items.push({ key: prefix, commonPrefix: true });
      }
    }
  }
  return {
    keys: items.filter((item) => !item.commonPrefix).map((item) => item.key),
    prefixes: items.filter((item) => item.commonPrefix).map((item) => item.key),
  };
}

/** Follows continuation tokens to the end, checking each page's bounds. */
async function listAll(backend: FsBackend, listing: ListRequest): Promise<{ keys: string[]; prefixes: string[]; pages: number }> {
  const keys: string[] = [];
  const prefixes: string[] = [];
  let token: string | undefined;
  let pages = 0;
  for (;;) {
    const page: ListResult = await backend.list({ ...listing, continuationToken: token });
    pages++;
    assert.ok(page.keyCount <= listing.maxKeys, `a page of ${page.keyCount} for maxKeys ${listing.maxKeys}`);
    assert.equal(page.keyCount, page.contents.length + page.commonPrefixes.length);
    keys.push(...page.contents.map((object) => object.key));
    prefixes.push(...page.commonPrefixes);
    if (!page.isTruncated) {
      assert.equal(page.nextContinuationToken, undefined);
      return { keys, prefixes, pages };
    }
    assert.equal(page.keyCount, listing.maxKeys, 'a truncated page is full');
    assert.ok(page.nextContinuationToken);
    token = page.nextContinuationToken;
    assert.ok(pages < 10_000, 'listing does not end');
  }
}

async function s3Code(call: Promise<unknown>): Promise<string> {
  try {
    await call;
  } catch (error) {
    if (error instanceof S3Error) return `${error.status} ${error.code}`;
    throw error;
  }
  throw new Error('the call succeeded');
}

function body(content: string | Buffer): Readable {
  return Readable.from([Buffer.from(content)]);
}

/** A body that sends `first`, then fails as a failed signature check would. */
function failingBody(first: string): Readable {
  let sent = false;
  return new Readable({
    read() {
      if (sent) return;
      sent = true;
      this.push(Buffer.from(first));
      setImmediate(() => this.destroy(new S3Error('SignatureDoesNotMatch', 403, 'chunk signature mismatch')));
    },
  });
}

const md5 = (content: string | Buffer) => createHash('md5').update(content).digest('hex');

async function stagingTemp(): Promise<string[]> {
  return readdir(path.join(root, STAGING_DIR, 'tmp')).catch(() => []);
}

const KEYS = [
  'a',
  'a-b',
  'a.txt',
  'a0',
  'b/c',
  'dir/sub/x.txt',
  'dir/sub/y.txt',
  'dir/sub-2/z.txt',
  'dir/top.txt',
  'dir/ü.txt',
  'train/shard-0000.jsonl',
  'train/shard-0001.jsonl',
  'train/shard-0010.jsonl',
  'train/shard-0100.jsonl',
  'train/sub/deep/k',
  'z',
  'Z',
  'é',
  '\uFB00',
  '😀',
  '日本/語.txt',
];

describe('FsBackend list', () => {
  it('lists keys in UTF-8 binary order, not JavaScript string order', async () => {
    await place(Object.fromEntries(KEYS.map((key) => [key, key])));
    const backend = new FsBackend(root);
    const page = await backend.list(request());
    const expected = [...KEYS].sort(byBytes);
    assert.deepEqual(
      page.contents.map((object) => object.key),
      expected,
    );
    // The difference matters: JavaScript orders U+1F600 (a surrogate pair) before U+FB00; UTF-8 after.
    assert.ok(expected.indexOf('\uFB00') < expected.indexOf('😀'));
    assert.ok(['\uFB00', '😀'].sort()[0] === '😀');
    // 'a.txt' < 'a/...' < 'a0' in bytes: directories sort as "name/".
    const dir = page.contents.find((object) => object.key === 'dir/ü.txt');
    assert.equal(dir?.size, Buffer.byteLength('dir/ü.txt'));
  });

  it('pages through prefix, delimiter and startAfter combinations to exactly the full listing', async () => {
    await place(Object.fromEntries(KEYS.map((key) => [key, key])));
    await mkdir(path.join(root, 'empty/nested'), { recursive: true });
    const backend = new FsBackend(root);
    const prefixes = ['', 'a', 'dir/', 'dir/sub', 'train/shard-00', 'train/', 'nope/', 'é', 'empty/'];
    const delimiters = [undefined, '/', '-', 'sub'];
    const starts = [undefined, 'a0', 'dir/sub/', 'dir/sub/x.txt', 'train/shard-0001.jsonl', 'zz'];
    for (const prefix of prefixes) {
      for (const delimiter of delimiters) {
        for (const startAfter of starts) {
          const expected = modelList(KEYS, request({ prefix, delimiter, startAfter }));
          for (const maxKeys of [1, 2, 3, 1000]) {
            const listing = request({ prefix, delimiter, startAfter, maxKeys });
            const { keys, prefixes: common } = await listAll(backend, listing);
            const label = JSON.stringify(listing);
            assert.deepEqual(keys, expected.keys, label);
            assert.deepEqual(common, expected.prefixes, label);
          }
        }
      }
    }
  });

  it('rolls directories up into common prefixes only when they hold an object', async () => {
    await place({ 'train/a/x': '1', 'train/b.txt': '2', 'train/c/d/e/f': '3' });
    await mkdir(path.join(root, 'train/empty/also-empty'), { recursive: true });
    const backend = new FsBackend(root);
    const page = await backend.list(request({ prefix: 'train/', delimiter: '/' }));
    assert.deepEqual(page.commonPrefixes, ['train/a/', 'train/c/']);
    assert.deepEqual(
      page.contents.map((object) => object.key),
      ['train/b.txt'],
    );
    assert.equal(page.keyCount, 3);
  });

  it('counts common prefixes toward maxKeys and continues after them', async () => {
    await place({ 'p/a/1': '', 'p/a/2': '', 'p/b': '', 'p/c/1': '' });
    const backend = new FsBackend(root);
    const first = await backend.list(request({ prefix: 'p/', delimiter: '/', maxKeys: 1 }));
    assert.deepEqual(first.commonPrefixes, ['p/a/']);
    assert.equal(first.isTruncated, true);
    const second = await backend.list(
      request({ prefix: 'p/', delimiter: '/', maxKeys: 2, continuationToken: first.nextContinuationToken }),
    );
    assert.deepEqual(
      second.contents.map((object) => object.key),
      ['p/b'],
    );
    assert.deepEqual(second.commonPrefixes, ['p/c/']);
    assert.equal(second.isTruncated, false);
  });

  it('handles maxKeys edge cases and refuses bad arguments', async () => {
    await place({ a: '1', b: '2' });
    const backend = new FsBackend(root);
    const none = await backend.list(request({ maxKeys: 0 }));
    assert.deepEqual(none, { contents: [], commonPrefixes: [], isTruncated: false, nextContinuationToken: undefined, keyCount: 0 });
    const exact = await backend.list(request({ maxKeys: 2 }));
    assert.equal(exact.isTruncated, false, 'exactly maxKeys objects: not truncated');
    assert.equal(exact.keyCount, 2);
    const capped = await backend.list(request({ maxKeys: 5000 }));
    assert.equal(capped.keyCount, 2);
    assert.equal(await s3Code(backend.list(request({ maxKeys: -1 }))), '400 InvalidArgument');
    assert.equal(await s3Code(backend.list(request({ maxKeys: 1.5 }))), '400 InvalidArgument');
    assert.equal(await s3Code(backend.list(request({ continuationToken: 'not a token!' }))), '400 InvalidArgument');
    assert.equal(await s3Code(backend.list(request({ continuationToken: '' }))), '400 InvalidArgument');
  });

  it('lists nothing for prefixes no valid key has, and for a missing bucket answers NoSuchBucket', async () => {
    await place({ 'a/b': '1' });
    const backend = new FsBackend(root);
    for (const prefix of ['../', 'a/../', '/a', 'a//', `${STAGING_DIR}/`, `${STAGING_DIR}`]) {
      const page = await backend.list(request({ prefix }));
      assert.deepEqual(page.contents, [], prefix);
      assert.deepEqual(page.commonPrefixes, [], prefix);
    }
    assert.equal(await s3Code(new FsBackend(path.join(root, 'missing')).list(request())), '404 NoSuchBucket');
  });

  it('lists a directory of 10,000 files in pages quickly, starting each page where the last ended', async () => {
    await mkdir(path.join(root, 'big'));
    const names = Array.from({ length: 10_000 }, (_, index) => `shard-${String(index).padStart(5, '0')}.jsonl`);
    await Promise.all(names.map((name) => writeFile(path.join(root, 'big', name), 'x')));
    await place({ 'other/a': '1' });
    const backend = new FsBackend(root);
    const started = performance.now();
    const { keys, pages } = await listAll(backend, request({ prefix: 'big/', maxKeys: 1000 }));
    const elapsed = performance.now() - started;
    assert.equal(pages, 10);
    assert.deepEqual(
      keys,
      names.map((name) => `big/${name}`),
    );
    assert.ok(elapsed < 10_000, `10 pages took ${Math.round(elapsed)} ms`);
  });
});

describe('FsBackend key safety', () => {
  const malformed: [string, string][] = [
    ['', 'empty'],
    ['../outside/secret.txt', 'dot-dot'],
    ['a/../../outside/secret.txt', 'inner dot-dot'],
    ['./a', 'dot'],
    ['a/./b', 'inner dot'],
    ['a//b', 'empty segment'],
    ['a/', 'trailing slash'],
    ['/etc/passwd', 'leading slash'],
    ['..\\outside\\secret.txt', 'backslash'],
    ['a\u0000b', 'NUL'],
    ['a\nb', 'newline'],
    ['a\u007fb', 'DEL'],
    ['a\u0085b', 'C1 control'],
    ['a\uD800b', 'lone surrogate'],
  ];

  it('refuses keys that are not plain relative paths, on every method', async () => {
    const backend = new FsBackend(root);
    for (const [key, label] of malformed) {
      for (const call of [
        () => backend.head(key),
        () => backend.read(key),
        () => backend.put(key, body('x')),
        () => backend.delete(key),
        () => backend.createMultipartUpload(key),
      ]) {
        assert.equal(await s3Code(call()), '400 InvalidArgument', label);
      }
    }
    assert.equal(await s3Code(backend.head('k'.repeat(1025))), '400 KeyTooLongError');
    assert.equal(await s3Code(backend.put('é'.repeat(513), body('x'))), '400 KeyTooLongError');
    assert.deepEqual(await readdir(outside), ['secret.txt']);
  });

  it('refuses symbolic links that lead out of the root, and ones into the staging area', async () => {
    await place({ 'inside.txt': 'inside', 'data/real.txt': 'real' });
    await symlink(path.join(outside, 'secret.txt'), path.join(root, 'escape.txt'));
    await symlink(outside, path.join(root, 'escape-dir'));
    await symlink('../../outside/secret.txt', path.join(root, 'data/relative-escape.txt'));
    await symlink(path.join(root, 'inside.txt'), path.join(root, 'alias.txt'));
    await symlink(path.join(root, 'data'), path.join(root, 'data-alias'));
    const backend = new FsBackend(root);
    await backend.put('staged.txt', body('x'));
    await symlink(path.join(root, STAGING_DIR), path.join(root, 'stage'));
    await symlink(path.join(root, STAGING_DIR, 'etags'), path.join(root, 'data/etags'));

    for (const key of ['escape.txt', 'escape-dir/secret.txt', 'data/relative-escape.txt']) {
      assert.equal(await s3Code(backend.head(key)), '403 AccessDenied', key);
      assert.equal(await s3Code(backend.read(key)), '403 AccessDenied', key);
    }
    assert.equal(await s3Code(backend.put('escape-dir/new.txt', body('x'))), '403 AccessDenied');
    assert.equal(await s3Code(backend.createMultipartUpload('escape-dir/new.txt')), '403 AccessDenied');
    assert.deepEqual(await readdir(outside), ['secret.txt']);
    const stagingNames = await readdir(path.join(root, STAGING_DIR, 'etags'));
    assert.ok(stagingNames.length > 0);
    assert.equal(await s3Code(backend.read(`stage/etags/${stagingNames[0]}`)), '403 AccessDenied');
    assert.equal(await s3Code(backend.read(`data/etags/${stagingNames[0]}`)), '403 AccessDenied');

    // Links that stay inside are objects like any other.
    assert.equal(await text(await backend.read('alias.txt')), 'inside');
    assert.equal(await text(await backend.read('data-alias/real.txt')), 'real');

    const listed = (await listAll(backend, request({ maxKeys: 2 }))).keys;
    assert.deepEqual(listed, ['alias.txt', 'data-alias/real.txt', 'data/real.txt', 'inside.txt', 'staged.txt']);
  });

  it('keeps the staging area invisible: not listed, not readable, not writable', async () => {
    const backend = new FsBackend(root, { minPartSize: 1 });
    await backend.put('a.txt', body('a'));
    const uploadId = await backend.createMultipartUpload('big.bin');
    await backend.uploadPart('big.bin', uploadId, 1, body('part'));
    const all = await listAll(backend, request({ maxKeys: 1 }));
    assert.deepEqual(all.keys, ['a.txt']);
    assert.deepEqual((await backend.list(request({ delimiter: '/' }))).commonPrefixes, []);
    assert.deepEqual((await backend.list(request({ prefix: `${STAGING_DIR}/` }))).contents, []);
    const uploadKeyFile = `${STAGING_DIR}/uploads/${uploadId}/key`;
    assert.equal(await backend.head(uploadKeyFile), undefined);
    assert.equal(await s3Code(backend.read(uploadKeyFile)), '404 NoSuchKey');
    assert.equal(await backend.head(`.JIT-Staging/uploads/${uploadId}/key`), undefined);
    assert.equal(await s3Code(backend.put(`${STAGING_DIR}/x`, body('x'))), '400 InvalidArgument');
    await backend.delete(uploadKeyFile);
    assert.equal(await readFile(path.join(root, uploadKeyFile), 'utf8'), 'big.bin');
  });

  it('lists through a symbolic link cycle without looping', async () => {
    await place({ 'loop/file.txt': 'x' });
    await symlink(path.join(root, 'loop'), path.join(root, 'loop/again'));
    await symlink(root, path.join(root, 'loop/root'));
    const backend = new FsBackend(root);
    assert.deepEqual((await listAll(backend, request())).keys, ['loop/file.txt']);
    assert.deepEqual((await backend.list(request({ delimiter: '/' }))).commonPrefixes, ['loop/']);
  });
});

describe('FsBackend read and head', () => {
  it('reads whole objects and inclusive ranges, clamping the end and refusing unsatisfiable ones', async () => {
    await place({ 'data/digits.txt': '0123456789', 'empty.txt': '' });
    const backend = new FsBackend(root);
    assert.equal(await text(await backend.read('data/digits.txt')), '0123456789');
    assert.equal(await text(await backend.read('data/digits.txt', { start: 2, end: 5 })), '2345');
    assert.equal(await text(await backend.read('data/digits.txt', { start: 9, end: 9 })), '9');
    assert.equal(await text(await backend.read('data/digits.txt', { start: 7, end: 100 })), '789');
    assert.equal(await s3Code(backend.read('data/digits.txt', { start: 10, end: 12 })), '416 InvalidRange');
    assert.equal(await s3Code(backend.read('data/digits.txt', { start: 5, end: 4 })), '416 InvalidRange');
    assert.equal(await s3Code(backend.read('empty.txt', { start: 0, end: 0 })), '416 InvalidRange');
    assert.equal(await text(await backend.read('empty.txt')), '');
  });

  it('answers NoSuchKey for missing keys and directories, and head undefined', async () => {
    await place({ 'data/x.txt': 'x' });
    const backend = new FsBackend(root);
    for (const key of ['missing.txt', 'data', 'data/x.txt/more', 'nope/deeper/x']) {
      assert.equal(await s3Code(backend.read(key)), '404 NoSuchKey', key);
      assert.equal(await backend.head(key), undefined, key);
    }
  });

  it("gives an operator's file a cheap stable ETag, without reading it, that changes with the file", async () => {
    await place({ 'operator.bin': 'hello' });
    const when = new Date('2024-05-01T12:00:00.123Z');
    await utimes(path.join(root, 'operator.bin'), when, when);
    const backend = new FsBackend(root);
    const info = await backend.head('operator.bin');
    const stats = await stat(path.join(root, 'operator.bin'), { bigint: true });
    assert.deepEqual(info, {
      key: 'operator.bin',
      size: 5,
      etag: `"5-${stats.mtimeNs.toString(16)}"`,
      lastModified: new Date(Number(stats.mtimeMs)),
    });
    assert.equal((await backend.head('operator.bin'))?.etag, info?.etag, 'stable');
    await writeFile(path.join(root, 'operator.bin'), 'hellO');
    await utimes(path.join(root, 'operator.bin'), when, new Date(when.getTime() + 1000));
    assert.notEqual((await backend.head('operator.bin'))?.etag, info?.etag);
  });
});

describe('FsBackend put', () => {
  it('stores the body with its MD5 as the ETag, creating parent directories', async () => {
    const backend = new FsBackend(root);
    const info = await backend.put('ckpt/run-1/step-10.pt', body('weights'));
    assert.equal(info.etag, `"${md5('weights')}"`);
    assert.equal(info.size, 7);
    assert.equal(await readFile(path.join(root, 'ckpt/run-1/step-10.pt'), 'utf8'), 'weights');
    assert.deepEqual(await backend.head('ckpt/run-1/step-10.pt'), info);
    const listed = await backend.list(request({ prefix: 'ckpt/' }));
    assert.deepEqual(listed.contents, [info]);
    assert.deepEqual(await stagingTemp(), []);
  });

  it('forgets the MD5 ETag when the file is changed by other means', async () => {
    const backend = new FsBackend(root);
    const info = await backend.put('a.txt', body('one'));
    await writeFile(path.join(root, 'a.txt'), 'two');
    const after = await backend.head('a.txt');
    assert.notEqual(after?.etag, info.etag);
    assert.match(after?.etag ?? '', /^"3-[0-9a-f]+"$/);
  });

  it('leaves no object and no partial file when the body fails halfway', async () => {
    const backend = new FsBackend(root);
    assert.equal(await s3Code(backend.put('new/dir/object.bin', failingBody('half of it'))), '403 SignatureDoesNotMatch');
    assert.equal(await backend.head('new/dir/object.bin'), undefined);
    await assert.rejects(stat(path.join(root, 'new')), { code: 'ENOENT' }, 'no parent directories either');
    assert.deepEqual(await stagingTemp(), []);
    assert.deepEqual((await backend.list(request())).contents, []);
  });

  it('keeps the old object whole until the new one is complete, and after a failed replacement', async () => {
    const backend = new FsBackend(root);
    const old = await backend.put('model.bin', body('old content'));

    assert.equal(await s3Code(backend.put('model.bin', failingBody('new cont'))), '403 SignatureDoesNotMatch');
    assert.equal(await text(await backend.read('model.bin')), 'old content');
    assert.deepEqual(await backend.head('model.bin'), old);

    const incoming = new PassThrough();
    const putting = backend.put('model.bin', incoming);
    incoming.write('new ');
    await new Promise((resolve) => setTimeout(resolve, 20));
    assert.equal(await text(await backend.read('model.bin')), 'old content', 'readers see the old object mid-upload');
    incoming.end('content!');
    const fresh = await putting;
    assert.equal(await text(await backend.read('model.bin')), 'new content!');
    assert.equal(fresh.etag, `"${md5('new content!')}"`);
  });

  it('refuses an object where a directory of objects is, or under a key that is an object', async () => {
    await place({ 'd/x': '1', f: '2' });
    const backend = new FsBackend(root);
    assert.equal(await s3Code(backend.put('d', body('x'))), '400 InvalidArgument');
    assert.equal(await s3Code(backend.put('f/x', body('x'))), '400 InvalidArgument');
    assert.equal(await s3Code(backend.createMultipartUpload('f/x/y')), '400 InvalidArgument');
    assert.equal(await readFile(path.join(root, 'f'), 'utf8'), '2');
    assert.deepEqual(await stagingTemp(), []);
  });

  it('removes day-old staging temp files when it starts, and keeps fresh ones', async () => {
    const tmp = path.join(root, STAGING_DIR, 'tmp');
    await mkdir(tmp, { recursive: true });
    await writeFile(path.join(tmp, 'old'), 'crashed upload');
    await writeFile(path.join(tmp, 'fresh'), 'in progress');
    const twoDaysAgo = new Date(Date.now() - 2 * 24 * 3600 * 1000);
    await utimes(path.join(tmp, 'old'), twoDaysAgo, twoDaysAgo);
    const backend = new FsBackend(root);
    await backend.staleCleanup;
    assert.deepEqual(await readdir(tmp), ['fresh']);
  });
});

describe('FsBackend delete', () => {
  it('is idempotent and removes parent directories left empty, never the root', async () => {
    await place({ 'a/b/c/one.txt': '1', 'a/keep.txt': '2' });
    const backend = new FsBackend(root);
    await backend.delete('a/b/c/one.txt');
    await backend.delete('a/b/c/one.txt');
    await backend.delete('never/was/here.txt');
    await assert.rejects(stat(path.join(root, 'a/b')), { code: 'ENOENT' });
    assert.equal(await readFile(path.join(root, 'a/keep.txt'), 'utf8'), '2');
    await backend.delete('a/keep.txt');
    await assert.rejects(stat(path.join(root, 'a')), { code: 'ENOENT' });
    assert.ok((await stat(root)).isDirectory());
  });

  it('does not delete directories, and forgets the MD5 ETag of a deleted object', async () => {
    await place({ 'd/x': '1' });
    const backend = new FsBackend(root);
    await backend.delete('d');
    assert.equal(await readFile(path.join(root, 'd/x'), 'utf8'), '1');
    await backend.put('e.txt', body('e'));
    assert.equal((await readdir(path.join(root, STAGING_DIR, 'etags'))).length, 1);
    await backend.delete('e.txt');
    assert.deepEqual(await readdir(path.join(root, STAGING_DIR, 'etags')), []);
    assert.equal(await backend.head('e.txt'), undefined);
  });

  it('deletes a symbolic link, not what it points to', async () => {
    await symlink(path.join(outside, 'secret.txt'), path.join(root, 'escape.txt'));
    const backend = new FsBackend(root);
    await backend.delete('escape.txt');
    assert.equal(await readFile(path.join(outside, 'secret.txt'), 'utf8'), 'secret');
    await assert.rejects(stat(path.join(root, 'escape.txt')), { code: 'ENOENT' });
  });
});

describe('FsBackend multipart upload', () => {
  it('joins parts in order into the object, with S3s multipart ETag', async () => {
    const backend = new FsBackend(root, { minPartSize: 4 });
    const uploadId = await backend.createMultipartUpload('out/model.bin');
    assert.match(uploadId, /^[0-9a-f]{32}$/);
    const one = await backend.uploadPart('out/model.bin', uploadId, 1, body('first-'));
    await backend.uploadPart('out/model.bin', uploadId, 2, body('wrong'));
    const two = await backend.uploadPart('out/model.bin', uploadId, 2, body('second-'));
    const three = await backend.uploadPart('out/model.bin', uploadId, 3, body('end'));
    assert.equal(two.etag, `"${md5('second-')}"`, 'a part can be replaced');
    assert.deepEqual(
      (await backend.listParts('out/model.bin', uploadId)).map((part) => [part.partNumber, part.etag, part.size]),
      [
        [1, one.etag, 6],
        [2, two.etag, 7],
        [3, three.etag, 3],
      ],
    );
    assert.equal(await backend.head('out/model.bin'), undefined, 'nothing visible before completion');

    const parts = [one, two, three].map((part) => ({ partNumber: part.partNumber, etag: part.etag.replaceAll('"', '') }));
    const info = await backend.completeMultipartUpload('out/model.bin', uploadId, parts);
    const expectedEtag = `"${createHash('md5')
      .update(Buffer.concat(['first-', 'second-', 'end'].map((part) => createHash('md5').update(part).digest())))
      .digest('hex')}-3"`;
    assert.equal(info.etag, expectedEtag);
    assert.equal(multipartEtag([one.etag, two.etag, three.etag]), expectedEtag);
    assert.equal(await text(await backend.read('out/model.bin')), 'first-second-end');
    assert.deepEqual(await backend.head('out/model.bin'), info);
    assert.deepEqual(await readdir(path.join(root, STAGING_DIR, 'uploads')), []);
    assert.deepEqual(await stagingTemp(), []);
    assert.equal(await s3Code(backend.listParts('out/model.bin', uploadId)), '404 NoSuchUpload');
  });

  it('may complete with a subset of the uploaded parts', async () => {
    const backend = new FsBackend(root, { minPartSize: 1 });
    const uploadId = await backend.createMultipartUpload('k');
    const one = await backend.uploadPart('k', uploadId, 1, body('a'));
    await backend.uploadPart('k', uploadId, 2, body('b'));
    const three = await backend.uploadPart('k', uploadId, 3, body('c'));
    await backend.completeMultipartUpload('k', uploadId, [one, three]);
    assert.equal(await text(await backend.read('k')), 'ac');
  });

  it('refuses unknown uploads, bad part numbers, wrong order, wrong ETags and small parts', async () => {
    const backend = new FsBackend(root, { minPartSize: 5 });
    const uploadId = await backend.createMultipartUpload('k');
    const small = await backend.uploadPart('k', uploadId, 1, body('tiny'));
    const big = await backend.uploadPart('k', uploadId, 2, body('large enough'));

    assert.equal(await s3Code(backend.uploadPart('k', 'f'.repeat(32), 1, body('x'))), '404 NoSuchUpload');
    assert.equal(await s3Code(backend.uploadPart('k', '../../etc', 1, body('x'))), '404 NoSuchUpload');
    assert.equal(await s3Code(backend.uploadPart('other-key', uploadId, 1, body('x'))), '404 NoSuchUpload');
    assert.equal(await s3Code(backend.listParts('k', 'nope')), '404 NoSuchUpload');
    for (const partNumber of [0, 10_001, 1.5, -1]) {
      assert.equal(await s3Code(backend.uploadPart('k', uploadId, partNumber, body('x'))), '400 InvalidArgument', String(partNumber));
    }
    assert.equal(await s3Code(backend.completeMultipartUpload('k', uploadId, [big, small])), '400 InvalidPartOrder');
    assert.equal(await s3Code(backend.completeMultipartUpload('k', uploadId, [small, small])), '400 InvalidPartOrder');
    assert.equal(
      await s3Code(backend.completeMultipartUpload('k', uploadId, [{ partNumber: 1, etag: `"${md5('other')}"` }, big])),
      '400 InvalidPart',
    );
    assert.equal(
      await s3Code(backend.completeMultipartUpload('k', uploadId, [small, { partNumber: 3, etag: big.etag }])),
      '400 InvalidPart',
    );
    assert.equal(await s3Code(backend.completeMultipartUpload('k', uploadId, [small, big])), '400 EntityTooSmall');
    assert.equal(await s3Code(backend.completeMultipartUpload('k', uploadId, [])), '400 MalformedXML');
    assert.equal(await backend.head('k'), undefined);

    // A small last part is fine.
    const last = await backend.uploadPart('k', uploadId, 3, body('end'));
    const info = await backend.completeMultipartUpload('k', uploadId, [big, last]);
    assert.equal(info.size, 15);
  });

  it('aborts: the upload and its parts are gone, and later calls answer NoSuchUpload', async () => {
    const backend = new FsBackend(root, { minPartSize: 1 });
    const uploadId = await backend.createMultipartUpload('k');
    const part = await backend.uploadPart('k', uploadId, 1, body('x'));
    await backend.abortMultipartUpload('k', uploadId);
    assert.deepEqual(await readdir(path.join(root, STAGING_DIR, 'uploads')), []);
    assert.equal(await s3Code(backend.uploadPart('k', uploadId, 2, body('y'))), '404 NoSuchUpload');
    assert.equal(await s3Code(backend.completeMultipartUpload('k', uploadId, [part])), '404 NoSuchUpload');
    assert.equal(await s3Code(backend.abortMultipartUpload('k', uploadId)), '404 NoSuchUpload');
    assert.deepEqual(await stagingTemp(), []);
  });

  it('leaves no part when a part body fails', async () => {
    const backend = new FsBackend(root, { minPartSize: 1 });
    const uploadId = await backend.createMultipartUpload('k');
    assert.equal(await s3Code(backend.uploadPart('k', uploadId, 1, failingBody('half'))), '403 SignatureDoesNotMatch');
    assert.deepEqual(await backend.listParts('k', uploadId), []);
    assert.deepEqual(await stagingTemp(), []);
  });
});

describe('FsBackend beforeChange (the audit record is written before a change is visible)', () => {
  const refuse = async () => {
    throw new Error('audit unavailable');
  };

  it('puts nothing when it throws: the previous object, its ETag and the staging area stay as they were', async () => {
    const backend = new FsBackend(root);
    const old = await backend.put('ckpt/model.bin', body('old content'));
    await assert.rejects(backend.put('ckpt/model.bin', body('new content'), refuse), /audit unavailable/);
    await assert.rejects(backend.put('fresh/dir/new.bin', body('new'), refuse), /audit unavailable/);
    assert.equal(await text(await backend.read('ckpt/model.bin')), 'old content');
    assert.deepEqual(await backend.head('ckpt/model.bin'), old);
    assert.equal(await backend.head('fresh/dir/new.bin'), undefined);
    await assert.rejects(stat(path.join(root, 'fresh')), { code: 'ENOENT' }, 'no parent directories either');
    assert.deepEqual(await stagingTemp(), []);

    const seen: unknown[] = [];
    const fresh = await backend.put('ckpt/model.bin', body('new content'), async (object) => {
      seen.push({ ...object, visible: await text(await backend.read('ckpt/model.bin')) });
    });
    assert.deepEqual(seen, [{ ...fresh, visible: 'old content' }], 'told the size and ETag while the old object was still served');
    assert.equal(fresh.etag, `"${md5('new content')}"`);
  });

  it('deletes nothing when it throws, and runs before a delete of a missing key too', async () => {
    await place({ 'a/keep.txt': 'kept' });
    const backend = new FsBackend(root);
    await assert.rejects(backend.delete('a/keep.txt', refuse), /audit unavailable/);
    assert.equal(await readFile(path.join(root, 'a/keep.txt'), 'utf8'), 'kept');
    await assert.rejects(backend.delete('never/was/here.txt', refuse), /audit unavailable/);
    let present: boolean | undefined;
    await backend.delete('a/keep.txt', async () => {
      present = (await backend.head('a/keep.txt')) !== undefined;
    });
    assert.equal(present, true, 'called while the object was still there');
    assert.equal(await backend.head('a/keep.txt'), undefined);
  });

  it('starts, uploads to, completes and aborts no upload when it throws; the upload can be completed afterwards', async () => {
    const backend = new FsBackend(root, { minPartSize: 1 });
    const uploadId = await backend.createMultipartUpload('out/model.bin');
    const one = await backend.uploadPart('out/model.bin', uploadId, 1, body('first-'));
    await assert.rejects(backend.uploadPart('out/model.bin', uploadId, 2, body('second'), refuse), /audit unavailable/);
    assert.deepEqual(
      (await backend.listParts('out/model.bin', uploadId)).map((part) => part.partNumber),
      [1],
    );
    await assert.rejects(backend.completeMultipartUpload('out/model.bin', uploadId, [one], refuse), /audit unavailable/);
    assert.equal(await backend.head('out/model.bin'), undefined);
    await assert.rejects(backend.abortMultipartUpload('out/model.bin', uploadId, refuse), /audit unavailable/);
    await assert.rejects(backend.createMultipartUpload('out/other.bin', refuse), /audit unavailable/);
    assert.deepEqual(await readdir(path.join(root, STAGING_DIR, 'uploads')), [uploadId], 'no other upload, this one kept');
    assert.deepEqual(await stagingTemp(), []);

    let told: unknown;
    const info = await backend.completeMultipartUpload('out/model.bin', uploadId, [one], async (object) => {
      told = object;
    });
    assert.deepEqual(told, info);
    assert.equal(await text(await backend.read('out/model.bin')), 'first-');
  });
});

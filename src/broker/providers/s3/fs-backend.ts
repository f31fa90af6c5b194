import { createHash, randomBytes } from 'node:crypto';
import { type BigIntStats, createReadStream, createWriteStream } from 'node:fs';
import { lstat, mkdir, open, readdir, readFile, realpath, rename, rm, rmdir, stat, unlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import {
  type BeforeChange,
  type ByteRange,
  type ListRequest,
  type ListResult,
  type ObjectBackend,
  type ObjectInfo,
  type OpenObject,
  type PartInfo,
  S3Error,
} from './contracts.ts';

/**
 * A bucket kept in a directory (a files resource's root): key 'train/shard-0.jsonl' is the file
 * <root>/train/shard-0.jsonl. Writes go through the staging area <root>/.jit-staging/ (same
 * filesystem, so a rename publishes an object whole), which no key can name:
 *   tmp/<random>             bodies being received, joined multipart objects; removed when a day old
 *   uploads/<uploadId>/      a multipart upload: `key`, parts `<n>` and their `<n>.etag` sidecars
 *   etags/<sha256 of directory>/<name>   the MD5 ETag of an object written here (see etagOf); one
 *                            directory per object directory, so a listing reads it once
 *
 * Refusals, chosen as S3 would answer them:
 *   - a key no directory can hold safely (empty, "." or ".." or empty segments, a leading "/",
 *     backslashes, control characters, lone surrogates): 400 InvalidArgument, as S3 answers a
 *     parameter it cannot accept; over 1024 bytes of UTF-8: 400 KeyTooLongError, as S3 does;
 *   - a key whose real path (after symbolic links) leaves the root or enters the staging area:
 *     403 AccessDenied; in listings such entries are skipped;
 *   - a key under .jit-staging/: absent for reads (the area is invisible), 400 InvalidArgument
 *     for writes (it is reserved);
 *   - an object where a directory of other objects is, or under a key that is itself an object
 *     ('a' exists, put 'a/b'): S3 allows both, a filesystem cannot, so 400 InvalidArgument with a
 *     message saying why.
 */
/** Bytes per read of an object: large objects stream in fewer, bigger chunks (less per-chunk work). */
const READ_CHUNK = 1 << 20;

/** The read size for `length` bytes: big chunks for big objects, no 1 MiB buffer for a 1 KiB one. */
const chunkFor = (length: number) => Math.max(16 * 1024, Math.min(READ_CHUNK, length));

/** How many ETags FsBackend remembers. */
const ETAG_MEMO = 100_000;

export const STAGING_DIR = '.jit-staging';
export const MAX_KEY_BYTES = 1024;
export const MAX_PART_NUMBER = 10_000;
export const DEFAULT_MIN_PART_SIZE = 5 * 1024 * 1024;
const STALE_TEMP_MS = 24 * 60 * 60 * 1000;
const UPLOAD_ID = /^[0-9a-f]{32}$/;
const PART_FILE = /^[1-9][0-9]{0,4}$/;
const utf8 = new TextDecoder('utf-8', { fatal: true });
/** The default BeforeChange: nothing to do before a change. */
const proceed = async (): Promise<void> => {};

export type FsBackendOptions = {
  /** Smallest size of every part but the last (S3: 5 MiB); smaller in tests. */
  minPartSize?: number;
  /** The clock for staging clean-up, epoch ms. */
  now?: () => number;
};

/**
 * What the staging area remembers about a file it wrote, valid while the file is that same file:
 * same inode, size and mtime (a file replaced or edited by other means falls back to the cheap ETag).
 */
type Sidecar = { path: string; ino: string; size: string; mtimeNs: string; etag: string };

type Entry = { name: string; key: string; sortKey: Buffer; absolute: string; directory: boolean };
type Item = { key: string; absolute: string; commonPrefix: boolean };
type Walk = {
  root: string;
  prefixLength: number;
  delimiter: string | undefined;
  after: Buffer | undefined;
  lastPrefix: string | undefined;
};
/** Per listing: the names in each sidecar directory, read once. */
type SidecarIndex = Map<string, Promise<Set<string>>>;
type ParentLookup = { kind: 'directory'; dir: string } | { kind: 'missing' } | { kind: 'object'; key: string };

export class FsBackend implements ObjectBackend {
  readonly rootPath: string;
  readonly minPartSize: number;
  /** Settles when the start-up removal of day-old staging temp files is done (best effort). */
  readonly staleCleanup: Promise<void>;
  private readonly now: () => number;
  /** ETags by file identity, so a GET of an unchanged file reads no sidecar. */
  private readonly etags = new Map<string, string>();
  private rootReal: Promise<string> | undefined;

  constructor(root: string, options: FsBackendOptions = {}) {
    this.rootPath = path.resolve(root);
    this.minPartSize = options.minPartSize ?? DEFAULT_MIN_PART_SIZE;
    this.now = options.now ?? Date.now;
    this.staleCleanup = this.removeStaleTemp().catch(() => undefined);
  }

  async list(request: ListRequest): Promise<ListResult> {
    const maxKeys = checkMaxKeys(request.maxKeys);
    const afterKey = request.continuationToken !== undefined ? decodeContinuationToken(request.continuationToken) : request.startAfter;
    const empty: ListResult = { contents: [], commonPrefixes: [], isTruncated: false, nextContinuationToken: undefined, keyCount: 0 };
    if (maxKeys === 0) return empty;
    const root = await this.root();
    const start = await this.listStart(root, request.prefix);
    if (!start) return empty;
    const walk: Walk = {
      root,
      prefixLength: request.prefix.length,
      delimiter: request.delimiter || undefined,
      after: afterKey ? Buffer.from(afterKey) : undefined,
      lastPrefix: undefined,
    };
    const items: Item[] = [];
    let isTruncated = false;
    for await (const item of this.walk(walk, start.dir, start.dirKey, start.namePrefix, [root])) {
      if (items.length === maxKeys) {
        isTruncated = true;
        break;
      }
      items.push(item);
    }
    const sidecars: SidecarIndex = new Map();
    const described = await Promise.all(
      items.map(async (item) => (item.commonPrefix ? undefined : this.describe(root, item.key, item.absolute, sidecars))),
    );
    const contents = described.filter((info): info is ObjectInfo => info !== undefined);
    const commonPrefixes = items.filter((item) => item.commonPrefix).map((item) => item.key);
    const last = items[items.length - 1];
    return {
      contents,
      commonPrefixes,
      isTruncated,
      nextContinuationToken: isTruncated && last ? encodeContinuationToken(last.key) : undefined,
      keyCount: contents.length + commonPrefixes.length,
    };
  }

  async head(key: string): Promise<ObjectInfo | undefined> {
    const found = await this.locate(key);
    return found && this.info(found.root, key, found.real, found.stats);
  }

  /**
   * One object for a GET or HEAD: resolved and described once (head + read would resolve the path
   * twice). The caller reads it with `stream` (at most once) or lets it go with `close`.
   */
  async open(key: string): Promise<OpenObject | undefined> {
    const found = await this.locate(key);
    if (!found) return undefined;
    const info = await this.info(found.root, key, found.real, found.stats);
    return {
      info,
      // The resolved path, opened only if the body is wanted (a HEAD, a 304 or a 412 opens nothing).
      stream: (range?: ByteRange) => {
        const start = range?.start ?? 0;
        const end = Math.min(range?.end ?? info.size - 1, info.size - 1);
        // An empty object: nothing to read, and createReadStream refuses an end before its start.
        if (end < start) return Readable.from([]);
        return createReadStream(found.real, { start, end, highWaterMark: chunkFor(end - start + 1) });
      },
      close: async () => {},
    };
  }

  async read(key: string, range?: ByteRange): Promise<Readable> {
    const found = await this.locate(key);
    if (!found) throw noSuchKey(key);
    const handle = await open(found.real, 'r').catch((error: unknown) => {
      throw isMissing(error) ? noSuchKey(key) : error;
    });
    try {
      const stats = await handle.stat();
      if (!stats.isFile()) throw noSuchKey(key);
      if (!range)
        return handle.createReadStream({ start: 0, end: Math.max(0, Number(stats.size) - 1), highWaterMark: chunkFor(Number(stats.size)) });
      if (!Number.isSafeInteger(range.start) || range.start < 0 || range.end < range.start || range.start >= stats.size) {
        throw new S3Error('InvalidRange', 416, 'The requested range is not satisfiable', {
          RangeRequested: `bytes=${range.start}-${range.end}`,
          ActualObjectSize: String(stats.size),
        });
      }
      const end = Math.min(range.end, stats.size - 1);
      return handle.createReadStream({ start: range.start, end, highWaterMark: chunkFor(end - range.start + 1) });
    } catch (error) {
      await handle.close();
      throw error;
    }
  }

  /**
   * Receives the body into the staging area and renames it into place: readers see the old object
   * until the new one is whole. A body that errors (a failed signature check), or a `beforeChange`
   * that throws, leaves nothing. The key is checked before the body is read; the caller owns the
   * body if this throws early.
   */
  async put(key: string, body: Readable, beforeChange: BeforeChange<ObjectInfo> = proceed): Promise<ObjectInfo> {
    const segments = writableSegments(key);
    const root = await this.root();
    await this.checkTarget(root, key, segments);
    const received = await this.receive(body);
    try {
      const etag = quote(received.md5.toString('hex'));
      await beforeChange({ key, size: Number(received.stats.size), etag, lastModified: mtimeOf(received.stats) });
      return await this.publish(root, key, segments, received.temp, received.stats, etag);
    } finally {
      await rm(received.temp, { force: true });
    }
  }

  async delete(key: string, beforeChange: BeforeChange = proceed): Promise<void> {
    const segments = keySegments(key);
    const root = await this.root();
    const found = isStaging(segments) ? undefined : await this.deletable(root, segments);
    await beforeChange();
    if (!found) return;
    // Gone already (a concurrent delete): S3 answers 204 either way.
    await unlink(found.target).catch(ignoreMissing);
    // The object is gone from here on: tidying up is best effort, so the call never fails after it.
    const sidecar = sidecarLocation(root, relativeInside(root, found.target) ?? '');
    await rm(sidecar.file, { force: true }).catch(() => undefined);
    await rmdir(sidecar.dir).catch(() => undefined);
    await removeEmptyParents(root, found.dir);
  }

  /** The file a delete of `segments` would remove, and its directory; undefined when there is none. */
  private async deletable(root: string, segments: string[]): Promise<{ target: string; dir: string } | undefined> {
    const parent = await this.parentOf(root, segments, false);
    if (parent.kind !== 'directory') return undefined;
    const target = path.join(parent.dir, lastOf(segments));
    const stats = await lstat(target).catch(ignoreMissing);
    return stats && !stats.isDirectory() ? { target, dir: parent.dir } : undefined;
  }

  async createMultipartUpload(key: string, beforeChange: BeforeChange<string> = proceed): Promise<string> {
    const segments = writableSegments(key);
    const root = await this.root();
    await this.checkTarget(root, key, segments);
    const uploadId = randomBytes(16).toString('hex');
    // Built under tmp/ and renamed, so an upload directory always has its key file.
    const building = path.join(await this.staging(root, 'tmp'), uploadId);
    try {
      await mkdir(building);
      await writeFile(path.join(building, 'key'), key);
      await beforeChange(uploadId);
      await rename(building, path.join(await this.staging(root, 'uploads'), uploadId));
    } finally {
      await rm(building, { recursive: true, force: true });
    }
    return uploadId;
  }

  async uploadPart(
    key: string,
    uploadId: string,
    partNumber: number,
    body: Readable,
    beforeChange: BeforeChange<PartInfo> = proceed,
  ): Promise<PartInfo> {
    checkPartNumber(partNumber);
    const dir = await this.uploadDir(key, uploadId);
    const received = await this.receive(body);
    try {
      const etag = quote(received.md5.toString('hex'));
      const part = { partNumber, etag, size: Number(received.stats.size), lastModified: mtimeOf(received.stats) };
      await beforeChange(part);
      const partFile = path.join(dir, String(partNumber));
      try {
        await writeSidecar(path.join(dir, `${partNumber}.etag`), sidecarFor(String(partNumber), received.stats, etag), received.temp);
        await rename(received.temp, partFile);
      } catch (error) {
        throw isMissing(error) ? noSuchUpload(uploadId) : error;
      }
      return part;
    } finally {
      await rm(received.temp, { force: true });
      await rm(`${received.temp}.etag`, { force: true });
    }
  }

  async listParts(key: string, uploadId: string): Promise<PartInfo[]> {
    const dir = await this.uploadDir(key, uploadId);
    const names = await readdir(dir).catch((error: unknown) => {
      throw isMissing(error) ? noSuchUpload(uploadId) : error;
    });
    const parts = await Promise.all(names.filter((name) => PART_FILE.test(name)).map((name) => partInfo(dir, Number(name))));
    return parts.filter((part): part is PartInfo => part !== undefined).sort((a, b) => a.partNumber - b.partNumber);
  }

  async completeMultipartUpload(
    key: string,
    uploadId: string,
    parts: { partNumber: number; etag: string }[],
    beforeChange: BeforeChange<ObjectInfo> = proceed,
  ): Promise<ObjectInfo> {
    const segments = writableSegments(key);
    const dir = await this.uploadDir(key, uploadId);
    if (parts.length === 0) {
      throw new S3Error('MalformedXML', 400, 'The XML you provided was not well-formed or did not validate against our published schema');
    }
    const stored: PartInfo[] = [];
    for (const [index, part] of parts.entries()) {
      const previous = parts[index - 1];
      if (previous && part.partNumber <= previous.partNumber) {
        throw new S3Error('InvalidPartOrder', 400, 'The list of parts was not in ascending order. Parts must be ordered by part number.', {
          UploadId: uploadId,
        });
      }
      const info = Number.isInteger(part.partNumber) ? await partInfo(dir, part.partNumber) : undefined;
      if (!info || unquote(info.etag) !== unquote(part.etag)) {
        throw new S3Error(
          'InvalidPart',
          400,
          "One or more of the specified parts could not be found. The part may not have been uploaded, or the specified entity tag may not match the part's entity tag.",
          { UploadId: uploadId, PartNumber: String(part.partNumber), ETag: part.etag },
        );
      }
      stored.push(info);
    }
    for (const info of stored.slice(0, -1)) {
      if (info.size < this.minPartSize) {
        throw new S3Error('EntityTooSmall', 400, 'Your proposed upload is smaller than the minimum allowed object size.', {
          ProposedSize: String(info.size),
          MinSizeAllowed: String(this.minPartSize),
          PartNumber: String(info.partNumber),
          ETag: info.etag,
        });
      }
    }
    const etag = multipartEtag(stored.map((info) => info.etag));
    const root = await this.root();
    await this.checkTarget(root, key, segments);
    const temp = path.join(await this.staging(root, 'tmp'), randomBytes(12).toString('hex'));
    try {
      await pipeline(
        Readable.from(concatenate(stored.map((info) => path.join(dir, String(info.partNumber))))),
        createWriteStream(temp, { flags: 'wx', flush: true }),
      );
      const stats = await stat(temp, { bigint: true });
      await beforeChange({ key, size: Number(stats.size), etag, lastModified: mtimeOf(stats) });
      const object = await this.publish(root, key, segments, temp, stats, etag);
      // The object is in place: a leftover upload directory must not turn that into a failure.
      await rm(dir, { recursive: true, force: true }).catch(() => undefined);
      return object;
    } finally {
      await rm(temp, { force: true });
    }
  }

  async abortMultipartUpload(key: string, uploadId: string, beforeChange: BeforeChange = proceed): Promise<void> {
    const dir = await this.uploadDir(key, uploadId);
    await beforeChange();
    await rm(dir, { recursive: true, force: true });
  }

  /** The root's real path; a missing root is a missing bucket (asked again next time). */
  private root(): Promise<string> {
    this.rootReal ??= realpath(this.rootPath).catch((error: unknown) => {
      this.rootReal = undefined;
      throw isMissing(error) ? new S3Error('NoSuchBucket', 404, 'The specified bucket does not exist') : error;
    });
    return this.rootReal;
  }

  private async staging(root: string, area: 'tmp' | 'uploads'): Promise<string> {
    const dir = path.join(root, STAGING_DIR, area);
    await mkdir(dir, { recursive: true });
    return dir;
  }

  private async removeStaleTemp(): Promise<void> {
    const dir = path.join(await this.root(), STAGING_DIR, 'tmp');
    const names = await readdir(dir).catch(() => []);
    for (const name of names) {
      const stats = await lstat(path.join(dir, name)).catch(() => undefined);
      if (stats && this.now() - stats.mtimeMs > STALE_TEMP_MS) await rm(path.join(dir, name), { recursive: true, force: true });
    }
  }

  /** The regular file a key names, after symbolic links; undefined when there is none. */
  private async locate(key: string): Promise<{ root: string; real: string; stats: BigIntStats } | undefined> {
    const segments = keySegments(key);
    if (isStaging(segments)) return undefined;
    const root = await this.root();
    const real = await realpath(path.join(root, ...segments)).catch(ignoreMissing);
    if (real === undefined) return undefined;
    if (relativeInside(root, real) === undefined) throw leavesBucket(key);
    const stats = await stat(real, { bigint: true }).catch(ignoreMissing);
    return stats?.isFile() ? { root, real, stats } : undefined;
  }

  private async describe(root: string, key: string, absolute: string, sidecars: SidecarIndex): Promise<ObjectInfo | undefined> {
    const stats = await stat(absolute, { bigint: true }).catch(ignoreMissing);
    return stats?.isFile() ? this.info(root, key, absolute, stats, sidecars) : undefined;
  }

  private async info(root: string, key: string, real: string, stats: BigIntStats, sidecars?: SidecarIndex): Promise<ObjectInfo> {
    const realKey = relativeInside(root, real);
    return {
      key,
      size: Number(stats.size),
      etag: await this.etagOf(root, real, stats, sidecars),
      lastModified: mtimeOf(stats),
      ...(realKey !== undefined && realKey !== key ? { realKey } : {}),
    };
  }

  /**
   * The ETag: for an object written through this backend, its MD5 (multipart: S3's MD5 of the
   * part MD5s and "-N"), remembered in a sidecar while the file stays that file. For a file put in
   * the root by other means (an operator's dataset), "<size hex>-<mtime ns hex>": stable, changes
   * when the file does, costs no read of the file, and contains "-" so clients that know S3 do not
   * mistake it for an MD5 of the content. A listing passes `sidecars`, so that it reads each
   * sidecar directory once instead of trying to open a sidecar for every file.
   */
  private async etagOf(root: string, real: string, stats: BigIntStats, sidecars?: SidecarIndex): Promise<string> {
    // Remembered per file identity (inode, size, mtime): a file that changes gets a new entry.
    const identity = `${real}\0${stats.ino}\0${stats.size}\0${stats.mtimeNs}`;
    const cached = this.etags.get(identity);
    if (cached !== undefined) return cached;
    const etag = await this.etagFromDisk(root, real, stats, sidecars);
    if (this.etags.size >= ETAG_MEMO) this.etags.delete(this.etags.keys().next().value ?? '');
    this.etags.set(identity, etag);
    return etag;
  }

  private async etagFromDisk(root: string, real: string, stats: BigIntStats, sidecars?: SidecarIndex): Promise<string> {
    const relative = relativeInside(root, real) ?? '';
    const where = sidecarLocation(root, relative);
    let known = true;
    if (sidecars) {
      let names = sidecars.get(where.dir);
      if (!names) {
        names = readdir(where.dir).then(
          (list) => new Set(list),
          () => new Set<string>(),
        );
        sidecars.set(where.dir, names);
      }
      known = (await names).has(where.name);
    }
    const remembered = known ? await readSidecar(where.file, relative, stats) : undefined;
    return remembered ?? quote(`${stats.size.toString(16)}-${stats.mtimeNs.toString(16)}`);
  }

  private async receive(body: Readable): Promise<{ temp: string; md5: Buffer; stats: BigIntStats }> {
    const temp = path.join(await this.staging(await this.root(), 'tmp'), randomBytes(12).toString('hex'));
    const hash = createHash('md5');
    const out = createWriteStream(temp, { flags: 'wx', flush: true });
    try {
      await pipeline(
        body,
        async function* (source: AsyncIterable<Buffer | string>) {
          for await (const chunk of source) {
            const bytes = typeof chunk === 'string' ? Buffer.from(chunk) : chunk;
            hash.update(bytes);
            yield bytes;
          }
        },
        out,
      );
      return { temp, md5: hash.digest(), stats: await stat(temp, { bigint: true }) };
    } catch (error) {
      // A body that fails early can beat the file's own open: wait for the stream to close, or
      // the file would appear after it was removed.
      if (!out.closed) await new Promise<void>((resolve) => out.once('close', () => resolve()));
      await rm(temp, { force: true });
      throw error;
    }
  }

  /** Renames a received file into place at `key`, remembering its ETag first. */
  private async publish(
    root: string,
    key: string,
    segments: string[],
    temp: string,
    stats: BigIntStats,
    etag: string,
  ): Promise<ObjectInfo> {
    // A concurrent delete may remove a parent directory we just made; make it again.
    for (let attempt = 1; ; attempt++) {
      const parent = await this.parentOf(root, segments, true);
      if (parent.kind === 'object') throw parentIsObject(key, parent.key);
      if (parent.kind === 'missing') throw new Error('unreachable: parentOf creates missing directories');
      const target = path.join(parent.dir, lastOf(segments));
      const existing = await lstat(target).catch(ignoreMissing);
      if (existing?.isDirectory()) throw directoryAtKey(key);
      const relative = relativeInside(root, target) ?? '';
      const sidecar = sidecarLocation(root, relative);
      await mkdir(sidecar.dir, { recursive: true });
      await writeSidecar(sidecar.file, sidecarFor(relative, stats, etag), temp);
      try {
        await rename(temp, target);
      } catch (error) {
        if (isMissing(error) && attempt < 3) continue;
        throw error;
      }
      await syncDirectory(parent.dir);
      return { key, size: Number(stats.size), etag, lastModified: mtimeOf(stats) };
    }
  }

  /** Refuses early what publish would refuse late: a directory at the key, an object above it. */
  private async checkTarget(root: string, key: string, segments: string[]): Promise<void> {
    const parent = await this.parentOf(root, segments, false);
    if (parent.kind === 'object') throw parentIsObject(key, parent.key);
    if (parent.kind === 'missing') return;
    const existing = await stat(path.join(parent.dir, lastOf(segments))).catch(ignoreMissing);
    if (existing?.isDirectory()) throw directoryAtKey(key);
  }

  /**
   * The real directory that holds the key's last segment, following (and checking) symbolic links
   * on the way; `create` makes missing directories.
   */
  private async parentOf(root: string, segments: string[], create: boolean): Promise<ParentLookup> {
    let dir = root;
    for (const [index, segment] of segments.slice(0, -1).entries()) {
      const next = path.join(dir, segment);
      let stats = await lstat(next).catch(ignoreMissing);
      if (!stats) {
        if (!create) return { kind: 'missing' };
        await mkdir(next).catch((error: unknown) => {
          if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
        });
        stats = await lstat(next);
      }
      dir = next;
      if (stats.isSymbolicLink()) {
        const real = await realpath(next).catch(ignoreMissing);
        if (real === undefined) return { kind: 'object', key: segments.slice(0, index + 1).join('/') };
        if (relativeInside(root, real) === undefined) throw leavesBucket(segments.join('/'));
        stats = await stat(real);
        dir = real;
      }
      if (!stats.isDirectory()) return { kind: 'object', key: segments.slice(0, index + 1).join('/') };
    }
    return { kind: 'directory', dir };
  }

  private async uploadDir(key: string, uploadId: string): Promise<string> {
    writableSegments(key);
    if (!UPLOAD_ID.test(uploadId)) throw noSuchUpload(uploadId);
    const dir = path.join(await this.root(), STAGING_DIR, 'uploads', uploadId);
    const recorded = await readFile(path.join(dir, 'key'), 'utf8').catch(ignoreMissing);
    if (recorded !== key) throw noSuchUpload(uploadId);
    return dir;
  }

  /** Where a listing starts: the directory the prefix's last "/" names, and the rest of it. */
  private async listStart(root: string, prefix: string): Promise<{ dir: string; dirKey: string; namePrefix: string } | undefined> {
    const cut = prefix.lastIndexOf('/') + 1;
    const dirKey = prefix.slice(0, cut);
    const namePrefix = prefix.slice(cut);
    if (dirKey === '') return { dir: root, dirKey, namePrefix };
    let segments: string[];
    try {
      segments = keySegments(dirKey.slice(0, -1));
    } catch {
      return undefined; // no key we would serve has this prefix
    }
    if (isStaging(segments)) return undefined;
    const real = await realpath(path.join(root, ...segments)).catch(ignoreMissing);
    if (real === undefined || relativeInside(root, real) === undefined) return undefined;
    const stats = await stat(real).catch(ignoreMissing);
    return stats?.isDirectory() ? { dir: real, dirKey, namePrefix } : undefined;
  }

  /**
   * Yields objects and common prefixes in UTF-8 binary key order, after `walk.after`. Only the
   * subtree the prefix can reach is read; a directory that rolls up into a common prefix is not
   * walked (only searched for one object, so empty directories make no prefix), and a directory
   * whose keys all sort before the start is skipped unread.
   */
  private async *walk(walk: Walk, dir: string, dirKey: string, namePrefix: string, ancestors: string[]): AsyncGenerator<Item> {
    for (const entry of await entriesOf(walk.root, dir, dirKey, namePrefix, ancestors)) {
      if (walk.after && beforeStart(entry, walk.after)) continue;
      const commonPrefix = rollUp(walk, entry.directory ? `${entry.key}/` : entry.key);
      if (commonPrefix !== undefined) {
        if (commonPrefix === walk.lastPrefix) continue;
        if (walk.after && Buffer.compare(Buffer.from(commonPrefix), walk.after) <= 0) continue;
        if (entry.directory && !(await holdsObject(walk.root, entry.absolute, entry.key, [...ancestors, entry.absolute]))) continue;
        walk.lastPrefix = commonPrefix;
        yield { key: commonPrefix, absolute: entry.absolute, commonPrefix: true };
      } else if (entry.directory) {
        yield* this.walk(walk, entry.absolute, `${entry.key}/`, '', [...ancestors, entry.absolute]);
      } else {
        yield { key: entry.key, absolute: entry.absolute, commonPrefix: false };
      }
    }
  }
}

/**
 * Whether an entry's keys all sort at or before the start: a file's key, or for a directory the
 * "name/" every key under it starts with (when the start itself begins so, the directory is walked).
 */
function beforeStart(entry: Entry, after: Buffer): boolean {
  if (!entry.directory) return Buffer.compare(entry.sortKey, after) <= 0;
  return Buffer.compare(entry.sortKey, after.subarray(0, entry.sortKey.length)) < 0;
}

/**
 * The common prefix a key rolls up into: up to the first delimiter after the prefix. Given a
 * directory's path ("a/b/"), the prefix every key under it rolls up into, when the delimiter lies
 * within the path already (an earlier match would lie within it too); else undefined, and the
 * directory's keys roll up one by one.
 */
function rollUp(walk: Walk, keyOrDirectory: string): string | undefined {
  if (!walk.delimiter) return undefined;
  const index = keyOrDirectory.indexOf(walk.delimiter, walk.prefixLength);
  return index < 0 ? undefined : keyOrDirectory.slice(0, index + walk.delimiter.length);
}

/**
 * A directory's entries that can be objects or hold them, sorted so that keys come out in UTF-8
 * binary order: a directory sorts as "name/", since every key under it starts so. Skipped: names
 * that are not UTF-8 or not a valid key segment, the staging area, symbolic links that leave the
 * root or lead into the staging area or back to a directory being walked (a cycle), and anything
 * that is neither a regular file nor a directory.
 */
async function entriesOf(root: string, dir: string, dirKey: string, namePrefix: string, ancestors: string[]): Promise<Entry[]> {
  const dirents = await readdir(dir, { withFileTypes: true, encoding: 'buffer' }).catch(ignoreMissing);
  const entries: Entry[] = [];
  for (const dirent of dirents ?? []) {
    let name: string;
    try {
      name = utf8.decode(dirent.name);
    } catch {
      continue;
    }
    if (!name.startsWith(namePrefix) || segmentProblem(name) !== undefined) continue;
    if (dir === root && isStaging([name])) continue;
    let absolute = `${dir}${path.sep}${name}`;
    let directory = dirent.isDirectory();
    if (dirent.isSymbolicLink()) {
      const real = await realpath(absolute).catch(ignoreMissing);
      if (real === undefined || relativeInside(root, real) === undefined) continue;
      const stats = await stat(real).catch(ignoreMissing);
      if (!stats || !(stats.isFile() || stats.isDirectory())) continue;
      directory = stats.isDirectory();
      if (directory && ancestors.includes(real)) continue;
      absolute = real;
    } else if (!directory && !dirent.isFile()) {
      continue;
    }
    const key = dirKey + name;
    const sortKey = Buffer.from(directory ? `${key}/` : key);
    if (sortKey.length > MAX_KEY_BYTES) continue;
    entries.push({ name, key, sortKey, absolute, directory });
  }
  return entries.sort((a, b) => Buffer.compare(a.sortKey, b.sortKey));
}

/** Whether a directory holds at least one object, at any depth (stops at the first). */
async function holdsObject(root: string, dir: string, dirKey: string, ancestors: string[]): Promise<boolean> {
  const entries = await entriesOf(root, dir, `${dirKey}/`, '', ancestors);
  if (entries.some((entry) => !entry.directory)) return true;
  for (const entry of entries) {
    if (await holdsObject(root, entry.absolute, entry.key, [...ancestors, entry.absolute])) return true;
  }
  return false;
}

async function* concatenate(files: string[]): AsyncGenerator<Buffer> {
  for (const file of files) yield* createReadStream(file);
}

async function partInfo(dir: string, partNumber: number): Promise<PartInfo | undefined> {
  const file = path.join(dir, String(partNumber));
  const stats = await stat(file, { bigint: true }).catch(ignoreMissing);
  if (!stats?.isFile()) return undefined;
  // A sidecar that does not match (a crash between writing it and the part) is recomputed.
  const etag = (await readSidecar(path.join(dir, `${partNumber}.etag`), String(partNumber), stats)) ?? (await md5Of(file));
  return { partNumber, etag, size: Number(stats.size), lastModified: mtimeOf(stats) };
}

async function md5Of(file: string): Promise<string> {
  const hash = createHash('md5');
  for await (const chunk of createReadStream(file)) hash.update(chunk as Buffer);
  return quote(hash.digest('hex'));
}

/** S3's multipart ETag: the MD5 of the parts' binary MD5s, then "-" and the number of parts. */
export function multipartEtag(partEtags: string[]): string {
  const hash = createHash('md5');
  for (const etag of partEtags) hash.update(Buffer.from(unquote(etag), 'hex'));
  return quote(`${hash.digest('hex')}-${partEtags.length}`);
}

/** Where the sidecar of the object at `relative` (root-relative, "/"-separated) lives. */
function sidecarLocation(root: string, relative: string): { dir: string; file: string; name: string } {
  const slash = relative.lastIndexOf('/');
  const dir = path.join(
    root,
    STAGING_DIR,
    'etags',
    createHash('sha256')
      .update(relative.slice(0, Math.max(slash, 0)))
      .digest('hex'),
  );
  const name = relative.slice(slash + 1);
  return { dir, file: path.join(dir, name), name };
}

function sidecarFor(relative: string, stats: BigIntStats, etag: string): Sidecar {
  return { path: relative, ino: String(stats.ino), size: String(stats.size), mtimeNs: String(stats.mtimeNs), etag };
}

async function readSidecar(file: string, relative: string, stats: BigIntStats): Promise<string | undefined> {
  const text = await readFile(file, 'utf8').catch(() => undefined);
  if (text === undefined) return undefined;
  try {
    const sidecar = JSON.parse(text) as Partial<Sidecar>;
    const same =
      sidecar.path === relative &&
      sidecar.ino === String(stats.ino) &&
      sidecar.size === String(stats.size) &&
      sidecar.mtimeNs === String(stats.mtimeNs);
    return same && typeof sidecar.etag === 'string' ? sidecar.etag : undefined;
  } catch {
    return undefined;
  }
}

/** Written beside `temp` and renamed, so a sidecar is never half-written. */
async function writeSidecar(file: string, sidecar: Sidecar, temp: string): Promise<void> {
  const sidecarTemp = `${temp}.etag`;
  await writeFile(sidecarTemp, JSON.stringify(sidecar));
  await rename(sidecarTemp, file);
}

async function syncDirectory(dir: string): Promise<void> {
  const handle = await open(dir, 'r').catch(() => undefined);
  if (!handle) return;
  await handle.sync().catch(() => undefined);
  await handle.close();
}

/** Removes directories left empty by a delete, up to (not including) the root. */
async function removeEmptyParents(root: string, dir: string): Promise<void> {
  let current = dir;
  while (current !== root && relativeInside(root, current) !== undefined) {
    try {
      await rmdir(current);
    } catch {
      return;
    }
    current = path.dirname(current);
  }
}

/** Splits a key into path segments, refusing every key that is not a plain relative path. */
export function keySegments(key: string): string[] {
  if (Buffer.byteLength(key) > MAX_KEY_BYTES) {
    throw new S3Error('KeyTooLongError', 400, 'Your key is too long', { MaxSizeAllowed: String(MAX_KEY_BYTES) });
  }
  if (key === '') throw invalidKey(key, 'the key is empty');
  if (key.startsWith('/')) throw invalidKey(key, 'a key cannot start with "/"');
  const segments = key.split('/');
  for (const segment of segments) {
    const problem = segmentProblem(segment);
    if (problem) throw invalidKey(key, problem);
  }
  return segments;
}

function segmentProblem(segment: string): string | undefined {
  if (segment === '') return 'a key cannot contain an empty segment ("//" or a trailing "/")';
  if (segment === '.' || segment === '..') return 'a key cannot contain "." or ".." segments';
  for (let index = 0; index < segment.length; index++) {
    const code = segment.charCodeAt(index);
    if (code < 0x20 || (code >= 0x7f && code <= 0x9f)) return 'a key cannot contain control characters';
    if (code === 0x5c) return 'a key cannot contain "\\"';
  }
  if (/\p{Cs}/u.test(segment)) return 'a key must be valid Unicode';
  return undefined;
}

/** Case-insensitively, so a case-insensitive filesystem cannot be led into the staging area either. */
function isStaging(segments: string[]): boolean {
  return segments[0]?.toLowerCase() === STAGING_DIR;
}

function writableSegments(key: string): string[] {
  const segments = keySegments(key);
  if (isStaging(segments)) throw invalidKey(key, `keys under ${STAGING_DIR}/ are reserved for the gateway's staging area`);
  return segments;
}

/** `absolute` relative to `root` with "/" separators ('' for the root), or undefined if outside it or in staging. */
function relativeInside(root: string, absolute: string): string | undefined {
  const relative = path.relative(root, absolute);
  if (relative === '..' || relative.startsWith(`..${path.sep}`) || path.isAbsolute(relative)) return undefined;
  const posix = relative.split(path.sep).join('/');
  return isStaging(posix.split('/')) ? undefined : posix;
}

function checkMaxKeys(maxKeys: number): number {
  if (!Number.isInteger(maxKeys) || maxKeys < 0) {
    throw new S3Error('InvalidArgument', 400, 'Provided max-keys not an integer or within integer range', {
      ArgumentName: 'max-keys',
      ArgumentValue: String(maxKeys),
    });
  }
  return Math.min(maxKeys, 1000);
}

function checkPartNumber(partNumber: number): void {
  if (!Number.isInteger(partNumber) || partNumber < 1 || partNumber > MAX_PART_NUMBER) {
    throw new S3Error('InvalidArgument', 400, `Part number must be an integer between 1 and ${MAX_PART_NUMBER}, inclusive`, {
      ArgumentName: 'partNumber',
      ArgumentValue: String(partNumber),
    });
  }
}

/** Continuation tokens are the last key or common prefix returned, base64url-encoded. */
export function encodeContinuationToken(key: string): string {
  return Buffer.from(key).toString('base64url');
}

export function decodeContinuationToken(token: string): string {
  const key = Buffer.from(token, 'base64url').toString('utf8');
  if (token === '' || encodeContinuationToken(key) !== token) {
    throw new S3Error('InvalidArgument', 400, 'The continuation token provided is incorrect', {
      ArgumentName: 'continuation-token',
      ArgumentValue: token,
    });
  }
  return key;
}

function quote(etag: string): string {
  return `"${etag}"`;
}

/** ETags compare without their quotes: clients send them either way. */
export function unquote(etag: string): string {
  const trimmed = etag.trim();
  return trimmed.length >= 2 && trimmed.startsWith('"') && trimmed.endsWith('"') ? trimmed.slice(1, -1) : trimmed;
}

function mtimeOf(stats: BigIntStats): Date {
  return new Date(Number(stats.mtimeMs));
}

function lastOf(segments: string[]): string {
  return segments[segments.length - 1] ?? '';
}

function isMissing(error: unknown): boolean {
  const code = (error as NodeJS.ErrnoException | undefined)?.code;
  return code === 'ENOENT' || code === 'ENOTDIR' || code === 'ELOOP' || code === 'ENAMETOOLONG';
}

function ignoreMissing(error: unknown): undefined {
  if (isMissing(error)) return undefined;
  throw error;
}

function invalidKey(key: string, why: string): S3Error {
  return new S3Error('InvalidArgument', 400, `Invalid key: ${why}`, { ArgumentName: 'key', ArgumentValue: key });
}

function leavesBucket(key: string): S3Error {
  return new S3Error('AccessDenied', 403, 'Access Denied: the key leads outside the bucket through a symbolic link', { Key: key });
}

function directoryAtKey(key: string): S3Error {
  return invalidKey(key, 'other objects are stored under this key followed by "/" (the bucket is a directory, which cannot hold both)');
}

function parentIsObject(key: string, objectKey: string): S3Error {
  return invalidKey(key, `"${objectKey}" is an object, so no key can continue it with "/" (the bucket is a directory)`);
}

function noSuchKey(key: string): S3Error {
  return new S3Error('NoSuchKey', 404, 'The specified key does not exist.', { Key: key });
}

function noSuchUpload(uploadId: string): S3Error {
  return new S3Error(
    'NoSuchUpload',
    404,
    'The specified upload does not exist. The upload ID may be invalid, or the upload may have been aborted or completed.',
    { UploadId: uploadId },
  );
}

import { createHash, createHmac, type KeyObject, timingSafeEqual } from 'node:crypto';
import { type Readable, Transform, type TransformCallback } from 'node:stream';
import { crc32 } from 'node:zlib';
import { S3Error } from './contracts.ts';

/**
 * Request bodies as sigv4.ts hands them on: checked against the hashes and checksums the client
 * sent, and aws-chunked bodies decoded, all while they stream. A stream is never buffered whole;
 * a failed check destroys it with an S3Error before it ends, so a consumer that commits only on
 * 'end' (the object backend's atomic writes) never keeps a body that failed.
 */

/** Hex SHA-256 of the empty string: the chunk signature's "hash of no headers". */
export const EMPTY_SHA256 = 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855';

/** A running checksum over a body, rendered as S3 sends it in headers (base64 of the big-endian value). */
export type Checksum = { update(data: Uint8Array): void; base64(): string };

const CRC32C_TABLES = crc32cTables();

function crc32cTables(): Int32Array {
  const tables = new Int32Array(8 * 256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1;
    tables[n] = c;
  }
  for (let n = 0; n < 256; n++) {
    let c = tables[n] as number;
    for (let t = 1; t < 8; t++) {
      c = (tables[c & 0xff] as number) ^ (c >>> 8);
      tables[t * 256 + n] = c;
    }
  }
  return tables;
}

/** CRC-32C (Castagnoli), slicing by 8: node:zlib has only the IEEE polynomial. */
export function crc32c(data: Uint8Array, previous = 0): number {
  const t = CRC32C_TABLES;
  let crc = ~previous;
  let i = 0;
  const whole = data.length - (data.length % 8);
  for (; i < whole; i += 8) {
    const low =
      crc ^ ((data[i] as number) | ((data[i + 1] as number) << 8) | ((data[i + 2] as number) << 16) | ((data[i + 3] as number) << 24));
    crc =
      (t[7 * 256 + (low & 0xff)] as number) ^
      (t[6 * 256 + ((low >>> 8) & 0xff)] as number) ^
      (t[5 * 256 + ((low >>> 16) & 0xff)] as number) ^
      (t[4 * 256 + (low >>> 24)] as number) ^
      (t[3 * 256 + (data[i + 4] as number)] as number) ^
      (t[2 * 256 + (data[i + 5] as number)] as number) ^
      (t[256 + (data[i + 6] as number)] as number) ^
      (t[data[i + 7] as number] as number);
  }
  for (; i < data.length; i++) crc = (t[(crc ^ (data[i] as number)) & 0xff] as number) ^ (crc >>> 8);
  return ~crc >>> 0;
}

function crcChecksum(step: (data: Uint8Array, previous: number) => number): Checksum {
  let value = 0;
  return {
    update: (data) => {
      value = step(data, value);
    },
    base64: () => {
      const bytes = Buffer.alloc(4);
      bytes.writeUInt32BE(value >>> 0);
      return bytes.toString('base64');
    },
  };
}

function hashChecksum(algorithm: string): Checksum {
  const hash = createHash(algorithm);
  return { update: (data) => hash.update(data), base64: () => hash.digest('base64') };
}

/** The algorithms S3 names in x-amz-checksum-<name> (and md5 for Content-MD5); undefined for others. */
export function createChecksum(name: string): Checksum | undefined {
  switch (name) {
    case 'crc32':
      return crcChecksum(crc32);
    case 'crc32c':
      return crcChecksum(crc32c);
    case 'sha1':
    case 'sha256':
    case 'md5':
      return hashChecksum(name);
    default:
      return undefined;
  }
}

/** One thing to check about a body: fed every byte, asked at the end what is wrong, if anything. */
export type BodyCheck = { update(data: Buffer): void; finish(): S3Error | undefined };

/** The body's SHA-256 must be the x-amz-content-sha256 the request was signed with. */
export function sha256Check(expectedHex: string): BodyCheck {
  const hash = createHash('sha256');
  return {
    update: (data) => hash.update(data),
    finish: () => {
      const actual = hash.digest('hex');
      return actual === expectedHex
        ? undefined
        : new S3Error('XAmzContentSHA256Mismatch', 400, "The provided 'x-amz-content-sha256' header does not match what was computed.", {
            ClientComputedContentSHA256: expectedHex,
            S3ComputedContentSHA256: actual,
          });
    },
  };
}

/** A checksum the client sent (x-amz-checksum-*, Content-MD5 or a trailer); undefined when the algorithm is unknown. */
export function checksumCheck(algorithm: string, expectedBase64: () => string | undefined): BodyCheck | undefined {
  const checksum = createChecksum(algorithm);
  if (!checksum) return undefined;
  return {
    update: (data) => checksum.update(data),
    finish: () => {
      const expected = expectedBase64();
      if (expected === undefined) {
        return new S3Error(
          'MalformedTrailerError',
          400,
          `The request's trailer did not carry the x-amz-checksum-${algorithm} it announced.`,
        );
      }
      return checksum.base64() === expected.trim()
        ? undefined
        : new S3Error('BadDigest', 400, `The ${algorithm.toUpperCase()} you specified did not match the calculated checksum.`);
    },
  };
}

const HEADER_CHECKSUMS = ['crc32', 'crc32c', 'sha1', 'sha256'];

/** A checksum a request's headers announce: x-amz-checksum-<algorithm>, or Content-MD5 as 'md5'. */
export type HeaderChecksum = { algorithm: string; expected: string };

/** The checksum headers a request carries, Content-MD5 checked for form (InvalidDigest) before any byte is read. */
export function headerChecksums(headers: Record<string, string>): HeaderChecksum[] {
  const checksums: HeaderChecksum[] = [];
  for (const algorithm of HEADER_CHECKSUMS) {
    const expected = headers[`x-amz-checksum-${algorithm}`];
    if (expected !== undefined) checksums.push({ algorithm, expected });
  }
  const md5 = headers['content-md5'];
  if (md5 !== undefined) {
    if (Buffer.from(md5.trim(), 'base64').length !== 16)
      throw new S3Error('InvalidDigest', 400, 'The Content-MD5 you specified is not valid.');
    checksums.push({ algorithm: 'md5', expected: md5 });
  }
  return checksums;
}

/** Fresh checks for one body. */
export function checksumChecks(checksums: readonly HeaderChecksum[]): BodyCheck[] {
  return checksums.flatMap(({ algorithm, expected }) => checksumCheck(algorithm, () => expected) ?? []);
}

function finishChecks(checks: readonly BodyCheck[]): S3Error | undefined {
  for (const check of checks) {
    const error = check.finish();
    if (error) return error;
  }
  return undefined;
}

/** The raw body with its checks run as it passes; the raw stream itself when there is nothing to check. */
export function checkedBody(raw: Readable, checks: readonly BodyCheck[]): Readable {
  if (checks.length === 0) return raw;
  const checked = new Transform({
    transform(chunk: Buffer, _encoding, callback) {
      for (const check of checks) check.update(chunk);
      callback(null, chunk);
    },
    flush(callback) {
      callback(finishChecks(checks));
    },
  });
  return pipeFrom(raw, checked);
}

/**
 * raw piped into transform, with raw's errors passed on (pipe alone drops them). When a check
 * fails, raw is unpiped but not destroyed: destroying a request would close its socket before
 * the gateway could answer with the S3 error.
 */
function pipeFrom<T extends Transform>(raw: Readable, transform: T): T {
  raw.on('error', (error) => transform.destroy(error));
  return raw.pipe(transform);
}

/** What the chunk signatures are verified with: the request's signing key, timestamp, scope and seed signature. */
export type ChunkSigning = { signingKey: KeyObject; longDate: string; scope: string; seedSignature: string };

export type AwsChunkedOptions = {
  /** Set for the STREAMING-AWS4-HMAC-SHA256-* modes: every chunk carries a signature to verify. */
  signing: ChunkSigning | undefined;
  /** Whether trailing headers may follow the last chunk (the *-TRAILER modes). */
  trailer: boolean;
  /** The x-amz-trailer header: the trailing header that must arrive, checked when it is a known checksum. */
  trailerName: string | undefined;
  /** x-amz-decoded-content-length, when sent. */
  decodedLength: number | undefined;
  /** Further checks on the decoded bytes (x-amz-checksum-* request headers, Content-MD5). */
  checks: BodyCheck[];
};

const MAX_LINE = 4096;
const MAX_TRAILER = 16 * 1024;
const CHUNK_HEADER = /^([0-9a-fA-F]{1,16})(;.*)?$/;
const CHUNK_SIGNATURE = /(?:^|;)chunk-signature=([0-9a-f]{64})(?:;|$)/;

function malformed(message: string): S3Error {
  return new S3Error('InvalidRequest', 400, `Malformed aws-chunked body: ${message}`);
}

function signatureMismatch(what: string): S3Error {
  return new S3Error('SignatureDoesNotMatch', 403, `The ${what} signature we calculated does not match the signature you provided.`);
}

/** Compares signatures in constant time (for equal lengths; a length says nothing secret). */
export function sameSignature(expected: string, provided: string): boolean {
  const a = Buffer.from(expected, 'latin1');
  const b = Buffer.from(provided, 'latin1');
  return a.length === b.length && timingSafeEqual(a, b);
}

/**
 * Decodes aws-chunked (https://docs.aws.amazon.com/AmazonS3/latest/API/sigv4-streaming.html):
 * `<hex size>[;chunk-signature=<sig>]\r\n<data>\r\n` ... `0[;chunk-signature=<sig>]\r\n`, then
 * trailing `name:value\r\n` lines (with x-amz-trailer-signature when signed) and `\r\n`.
 * Data bytes pass through as slices of the input; only chunk-header and trailer lines are held,
 * and they may arrive split across any number of reads.
 */
export class AwsChunkedDecoder extends Transform {
  readonly #options: AwsChunkedOptions;
  readonly #checks: BodyCheck[];
  #state: 'size' | 'data' | 'data-end' | 'trailer' | 'done' = 'size';
  /** The part of a line read so far (chunk header, data terminator or trailer). */
  #line: Buffer[] = [];
  #lineLength = 0;
  #remaining = 0;
  #decoded = 0;
  #trailerBytes = 0;
  #chunkSignature = '';
  #chunkHash: ReturnType<typeof createHash> | undefined;
  #previousSignature: string;
  readonly #trailers = new Map<string, string>();
  #trailerSignature: string | undefined;

  constructor(options: AwsChunkedOptions) {
    super();
    this.#options = options;
    this.#previousSignature = options.signing?.seedSignature ?? '';
    const checks = [...options.checks];
    const trailerAlgorithm = options.trailerName?.match(/^x-amz-checksum-([a-z0-9]+)$/)?.[1];
    if (options.trailer && options.trailerName && trailerAlgorithm) {
      const name = options.trailerName;
      const check = checksumCheck(trailerAlgorithm, () => this.#trailers.get(name));
      if (check) checks.push(check);
    }
    this.#checks = checks;
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    try {
      this.#consume(chunk);
      callback();
    } catch (error) {
      callback(error as Error);
    }
  }

  override _flush(callback: TransformCallback): void {
    if (this.#state !== 'done') {
      callback(new S3Error('IncompleteBody', 400, 'The request body ended before the last aws-chunked chunk.'));
      return;
    }
    callback();
  }

  #consume(chunk: Buffer): void {
    let offset = 0;
    while (offset < chunk.length) {
      if (this.#state === 'data') {
        const end = Math.min(chunk.length, offset + this.#remaining);
        const data = chunk.subarray(offset, end);
        this.#remaining -= data.length;
        offset = end;
        this.#chunkHash?.update(data);
        for (const check of this.#checks) check.update(data);
        this.push(data);
        if (this.#remaining === 0) this.#endChunk();
        continue;
      }
      if (this.#state === 'done') throw malformed('data after the end of the body');
      const newline = chunk.indexOf(10, offset);
      const end = newline === -1 ? chunk.length : newline;
      this.#lineLength += end - offset;
      if (this.#lineLength > MAX_LINE) throw malformed('a chunk header or trailer line is too long');
      if (end > offset) this.#line.push(chunk.subarray(offset, end));
      if (newline === -1) return;
      offset = newline + 1;
      const line = Buffer.concat(this.#line, this.#lineLength).toString('latin1');
      this.#line = [];
      this.#lineLength = 0;
      if (!line.endsWith('\r')) throw malformed('lines must end in CRLF');
      this.#onLine(line.slice(0, -1));
    }
  }

  #onLine(line: string): void {
    if (this.#state === 'size') this.#onChunkHeader(line);
    else if (this.#state === 'data-end') {
      if (line !== '') throw malformed('chunk data longer than its size');
      this.#state = 'size';
    } else this.#onTrailerLine(line);
  }

  #onChunkHeader(line: string): void {
    const header = CHUNK_HEADER.exec(line);
    if (!header) throw malformed('bad chunk header');
    const size = Number.parseInt(header[1] as string, 16);
    if (this.#options.signing) {
      const signature = CHUNK_SIGNATURE.exec(header[2]?.slice(1) ?? '')?.[1];
      if (!signature) throw malformed('a chunk lacks its chunk-signature');
      this.#chunkSignature = signature;
      this.#chunkHash = createHash('sha256');
    }
    const declared = this.#options.decodedLength;
    if (declared !== undefined && this.#decoded + size > declared) {
      throw new S3Error('IncompleteBody', 400, 'The aws-chunked body is longer than x-amz-decoded-content-length.');
    }
    this.#decoded += size;
    if (size > 0) {
      this.#remaining = size;
      this.#state = 'data';
      return;
    }
    this.#verifyChunk();
    this.#state = 'trailer';
  }

  #endChunk(): void {
    this.#verifyChunk();
    this.#state = 'data-end';
  }

  #verifyChunk(): void {
    const signing = this.#options.signing;
    if (!signing || !this.#chunkHash) return;
    const stringToSign = `AWS4-HMAC-SHA256-PAYLOAD\n${signing.longDate}\n${signing.scope}\n${this.#previousSignature}\n${EMPTY_SHA256}\n${this.#chunkHash.digest('hex')}`;
    const expected = createHmac('sha256', signing.signingKey).update(stringToSign).digest('hex');
    if (!sameSignature(expected, this.#chunkSignature)) throw signatureMismatch('chunk');
    this.#previousSignature = expected;
    this.#chunkHash = undefined;
  }

  #onTrailerLine(line: string): void {
    if (line === '') {
      this.#finish();
      return;
    }
    if (!this.#options.trailer) throw malformed('trailing headers in a mode without a trailer');
    this.#trailerBytes += line.length;
    const colon = line.indexOf(':');
    if (colon <= 0 || this.#trailerBytes > MAX_TRAILER) {
      throw new S3Error('MalformedTrailerError', 400, 'The request contained trailing data that was not well-formed.');
    }
    const name = line.slice(0, colon).trim().toLowerCase();
    const value = line.slice(colon + 1).trim();
    if (name === 'x-amz-trailer-signature') this.#trailerSignature = value;
    else this.#trailers.set(name, value);
  }

  #finish(): void {
    const signing = this.#options.signing;
    if (signing && this.#options.trailer) {
      // The trailer is signed as its headers in order, each `name:value\n`, chained to the last chunk's signature.
      const canonical = [...this.#trailers].map(([name, value]) => `${name}:${value}\n`).join('');
      const hash = createHash('sha256').update(canonical, 'latin1').digest('hex');
      const stringToSign = `AWS4-HMAC-SHA256-TRAILER\n${signing.longDate}\n${signing.scope}\n${this.#previousSignature}\n${hash}`;
      const expected = createHmac('sha256', signing.signingKey).update(stringToSign).digest('hex');
      if (this.#trailerSignature === undefined || !sameSignature(expected, this.#trailerSignature)) throw signatureMismatch('trailer');
    }
    const declared = this.#options.decodedLength;
    if (declared !== undefined && this.#decoded !== declared) {
      throw new S3Error('IncompleteBody', 400, 'You did not provide the number of bytes specified by x-amz-decoded-content-length.');
    }
    const error = finishChecks(this.#checks);
    if (error) throw error;
    this.#state = 'done';
  }
}

/** The decoded body of an aws-chunked request. */
export function decodeAwsChunked(raw: Readable, options: AwsChunkedOptions): Readable {
  return pipeFrom(raw, new AwsChunkedDecoder(options));
}

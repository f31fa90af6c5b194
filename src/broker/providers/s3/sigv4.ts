import { createHash, createHmac, createSecretKey, type KeyObject } from 'node:crypto';
import type { Readable } from 'node:stream';
import { type PayloadMode, S3Error, type SecretLookup, type SignedRequest, type Verified } from './contracts.ts';
import { checkedBody, checksumChecks, decodeAwsChunked, headerChecksums, sameSignature, sha256Check } from './payload.ts';

/**
 * AWS Signature Version 4 as S3 verifies it, in the Authorization header or in a presigned URL
 * (https://docs.aws.amazon.com/AmazonS3/latest/API/sig-v4-authenticating-requests.html).
 * S3's canonical request differs from other services': its path is the one the client sent,
 * neither normalised nor encoded again (the AWS SDK signs S3 with uriEscapePath: false).
 */

export const ALGORITHM = 'AWS4-HMAC-SHA256';
export const UNSIGNED_PAYLOAD = 'UNSIGNED-PAYLOAD';
const SERVICE = 's3';
const TERMINATOR = 'aws4_request';
const MAX_EXPIRES_SECONDS = 604800;
const DEFAULT_MAX_SKEW_MS = 15 * 60 * 1000;

const STREAMING_MODES: Record<string, PayloadMode> = {
  'STREAMING-AWS4-HMAC-SHA256-PAYLOAD': 'streaming-signed',
  'STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER': 'streaming-signed-trailer',
  'STREAMING-UNSIGNED-PAYLOAD-TRAILER': 'streaming-unsigned-trailer',
};

export type VerifyOptions = {
  /** When set, the credential scope must name this region (S3 answers AuthorizationHeaderMalformed otherwise); by default any region is accepted. */
  region?: string;
  /** How far x-amz-date may be from the server's clock: 15 minutes, as S3. */
  maxSkewMs?: number;
  /** Keeps derived signing keys between requests; without it each request derives its own. */
  signingKeys?: SigningKeyCache;
};

/**
 * kSigning = HMAC(HMAC(HMAC(HMAC("AWS4" + secret, date), region), service), "aws4_request"), as a
 * KeyObject: node's createHmac takes one in about a fifth of the time it takes a Buffer key.
 */
export function deriveSigningKey(secret: string, date: string, region: string, service = SERVICE): KeyObject {
  const kDate = createHmac('sha256', `AWS4${secret}`).update(date).digest();
  const kRegion = createHmac('sha256', kDate).update(region).digest();
  const kService = createHmac('sha256', kRegion).update(service).digest();
  return createSecretKey(createHmac('sha256', kService).update(TERMINATOR).digest());
}

/**
 * Signing keys by (secret, day, region), oldest dropped first. Safe to share across grants:
 * the lookup runs on every request before a key is used, so a revoked grant is refused even
 * while its key is still cached.
 */
export class SigningKeyCache {
  readonly #keys = new Map<string, KeyObject>();
  readonly #capacity: number;

  constructor(capacity = 1024) {
    this.#capacity = capacity;
  }

  get(secret: string, date: string, region: string): KeyObject {
    const id = `${date}\n${region}\n${secret}`;
    let key = this.#keys.get(id);
    if (key) return key;
    key = deriveSigningKey(secret, date, region);
    if (this.#keys.size >= this.#capacity) {
      const oldest = this.#keys.keys().next();
      if (!oldest.done) this.#keys.delete(oldest.value);
    }
    this.#keys.set(id, key);
    return key;
  }
}

const UNRESERVED = /^[A-Za-z0-9\-._~]*$/;
const HEX = '0123456789ABCDEF';

function isHexDigit(code: number): boolean {
  return (code >= 48 && code <= 57) || (code >= 65 && code <= 70) || (code >= 97 && code <= 102);
}

/**
 * A query component as AWS canonicalises it: its bytes (percent-escapes decoded, other
 * characters as UTF-8) encoded again with everything but A-Z a-z 0-9 - . _ ~ as %XX. A `+` is
 * a plus, not a space: the SDKs send a space as %20 and sign it that way.
 */
export function canonicalQueryComponent(raw: string): string {
  if (UNRESERVED.test(raw)) return raw;
  const bytes: number[] = [];
  for (let i = 0; i < raw.length; i++) {
    const code = raw.charCodeAt(i);
    if (code === 37 && i + 2 < raw.length && isHexDigit(raw.charCodeAt(i + 1)) && isHexDigit(raw.charCodeAt(i + 2))) {
      bytes.push(Number.parseInt(raw.slice(i + 1, i + 3), 16));
      i += 2;
    } else if (code < 0x80) {
      bytes.push(code);
    } else {
      // Node refuses non-ASCII request lines, so this is only for requests built from decoded strings.
      const char = String.fromCodePoint(raw.codePointAt(i) as number);
      bytes.push(...Buffer.from(char));
      i += char.length - 1;
    }
  }
  let out = '';
  for (const byte of bytes) {
    const char = String.fromCharCode(byte);
    out += UNRESERVED.test(char) ? char : `%${HEX[byte >> 4]}${HEX[byte & 15]}`;
  }
  return out;
}

/** The raw query string as [key, value] pairs, still encoded; `a` and `a=` both give value ''. */
export function queryPairs(rawQuery: string): [string, string][] {
  const pairs: [string, string][] = [];
  if (rawQuery === '') return pairs;
  for (const part of rawQuery.split('&')) {
    if (part === '') continue;
    const equals = part.indexOf('=');
    pairs.push(equals === -1 ? [part, ''] : [part.slice(0, equals), part.slice(equals + 1)]);
  }
  return pairs;
}

/** The canonical query string: every parameter but X-Amz-Signature, encoded as AWS does, sorted by key then value. */
export function canonicalQuery(rawQuery: string): string {
  const encoded: [string, string][] = [];
  for (const [key, value] of queryPairs(rawQuery)) {
    const name = canonicalQueryComponent(key);
    if (name.toLowerCase() === 'x-amz-signature') continue;
    encoded.push([name, canonicalQueryComponent(value)]);
  }
  encoded.sort(([keyA, valueA], [keyB, valueB]) => (keyA < keyB ? -1 : keyA > keyB ? 1 : valueA < valueB ? -1 : valueA > valueB ? 1 : 0));
  return encoded.map(([key, value]) => `${key}=${value}`).join('&');
}

/** A header value as signed: line breaks as spaces, runs of spaces and tabs as one, trimmed. */
export function canonicalHeaderValue(value: string): string {
  return value
    .replace(/[\r\n]/g, ' ')
    .replace(/[ \t]+/g, ' ')
    .replace(/^ | $/g, '');
}

export type CanonicalRequestParts = {
  method: string;
  rawPath: string;
  rawQuery: string;
  headers: Record<string, string>;
  signedHeaders: readonly string[];
  payloadHash: string;
};

export function canonicalRequest(parts: CanonicalRequestParts): string {
  const headerLines = parts.signedHeaders.map((name) => `${name}:${canonicalHeaderValue(parts.headers[name] ?? '')}\n`).join('');
  return `${parts.method}\n${parts.rawPath || '/'}\n${canonicalQuery(parts.rawQuery)}\n${headerLines}\n${parts.signedHeaders.join(';')}\n${parts.payloadHash}`;
}

export function stringToSign(longDate: string, scope: string, canonical: string): string {
  // Node hands header values over as latin1, one character per byte sent: hashing them as latin1
  // hashes the bytes the client signed. A string with wider characters was not read off the wire.
  const encoding = /[\u0100-\uffff]/.test(canonical) ? 'utf8' : 'latin1';
  const hash = createHash('sha256').update(canonical, encoding).digest('hex');
  return `${ALGORITHM}\n${longDate}\n${scope}\n${hash}`;
}

/** How a request was signed, read from its Authorization header or its X-Amz-* query parameters. */
export type SignedAuth = {
  kind: 'header' | 'query';
  accessKeyId: string;
  /** DATE/REGION/s3/aws4_request */
  scope: string;
  region: string;
  signedHeaders: string[];
  signature: string;
  /** The request's timestamp, YYYYMMDD'T'HHMMSS'Z'. */
  longDate: string;
  /** The same instant, epoch ms. */
  time: number;
  sessionToken: string | undefined;
  /** What the canonical request ends with: x-amz-content-sha256, or UNSIGNED-PAYLOAD for presigned URLs. */
  payloadHash: string;
  /** Presigned URLs: seconds from `time` that the URL is valid. */
  expiresSeconds: number | undefined;
};

function malformed(kind: SignedAuth['kind'], message: string, detail: Record<string, string> = {}): S3Error {
  return kind === 'header'
    ? new S3Error('AuthorizationHeaderMalformed', 400, `The authorization header is malformed; ${message}`, detail)
    : new S3Error('AuthorizationQueryParametersError', 400, message, detail);
}

const LONG_DATE = /^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z$/;

/** An x-amz-date (20130524T000000Z) as epoch ms; undefined when it is not one. */
export function parseLongDate(value: string): number | undefined {
  const match = LONG_DATE.exec(value);
  if (!match) return undefined;
  const [year, month, day, hour, minute, second] = match.slice(1).map(Number) as [number, number, number, number, number, number];
  const time = Date.UTC(year, month - 1, day, hour, minute, second);
  const check = new Date(time);
  return check.getUTCDate() === day && check.getUTCHours() === hour && check.getUTCMonth() === month - 1 ? time : undefined;
}

function formatLongDate(time: number): string {
  return new Date(time).toISOString().replace(/[-:]|\.\d{3}/g, '');
}

/** Credential=AKID/DATE/REGION/s3/aws4_request, checked against the request's date. */
function parseCredential(kind: SignedAuth['kind'], credential: string, longDate: string, options: VerifyOptions) {
  const parts = credential.split('/');
  const [accessKeyId, date, region, service, terminator] = parts;
  if (parts.length !== 5 || !accessKeyId || !date || !region || !service || !terminator) {
    throw malformed(kind, `the Credential is mal-formed; expecting "<YOUR-AKID>/YYYYMMDD/REGION/SERVICE/aws4_request".`);
  }
  if (date !== longDate.slice(0, 8)) {
    throw malformed(kind, `Invalid credential date "${date}". This date is not the same as X-Amz-Date: "${longDate.slice(0, 8)}".`);
  }
  if (service !== SERVICE) throw malformed(kind, `incorrect service "${service}". This endpoint belongs to "${SERVICE}".`);
  if (terminator !== TERMINATOR) throw malformed(kind, `incorrect terminal "${terminator}". This endpoint uses "${TERMINATOR}".`);
  if (options.region !== undefined && region !== options.region) {
    throw malformed(kind, `the region '${region}' is wrong; expecting '${options.region}'`, { Region: options.region });
  }
  return { accessKeyId, region, scope: parts.slice(1).join('/') };
}

const AUTH_PARAM = /^\s*(Credential|SignedHeaders|Signature)\s*=\s*(.*?)\s*$/;

function parseHeaderAuth(request: SignedRequest, authorization: string, options: VerifyOptions): SignedAuth {
  if (!authorization.startsWith(`${ALGORITHM} `)) {
    throw new S3Error('InvalidRequest', 400, `The authorization mechanism you have provided is not supported. Please use ${ALGORITHM}.`);
  }
  const fields: Record<string, string> = {};
  for (const part of authorization.slice(ALGORITHM.length + 1).split(',')) {
    const field = AUTH_PARAM.exec(part);
    if (field) fields[field[1] as string] = field[2] as string;
  }
  const { Credential: credential, SignedHeaders: signedHeaders, Signature: signature } = fields;
  if (!credential || !signedHeaders || signature === undefined) {
    throw malformed('header', 'it must contain Credential, SignedHeaders and Signature.');
  }
  const headers = request.headers;
  let time: number | undefined;
  let longDate: string;
  const amzDate = headers['x-amz-date'];
  if (amzDate !== undefined) {
    time = parseLongDate(amzDate.trim());
    longDate = amzDate.trim();
  } else {
    const date = headers.date;
    time = date === undefined ? undefined : Date.parse(date);
    longDate = time === undefined || Number.isNaN(time) ? '' : formatLongDate(time);
  }
  if (time === undefined || Number.isNaN(time)) {
    throw new S3Error('AccessDenied', 403, 'AWS authentication requires a valid Date or x-amz-date header');
  }
  const payloadHash = headers['x-amz-content-sha256']?.trim();
  if (payloadHash === undefined) throw new S3Error('InvalidRequest', 400, 'Missing required header for this request: x-amz-content-sha256');
  return {
    kind: 'header',
    ...parseCredential('header', credential, longDate, options),
    signedHeaders: signedHeaders.split(';'),
    signature,
    longDate,
    time,
    sessionToken: headers['x-amz-security-token'],
    payloadHash,
    expiresSeconds: undefined,
  };
}

const QUERY_AUTH_PARAMS = ['X-Amz-Algorithm', 'X-Amz-Credential', 'X-Amz-Signature'];

function decodeQueryValue(value: string): string {
  try {
    return decodeURIComponent(value);
  } catch {
    throw malformed('query', 'a query parameter is not validly percent-encoded.');
  }
}

function parseQueryAuth(params: Map<string, string>, options: VerifyOptions): SignedAuth {
  const algorithm = params.get('X-Amz-Algorithm');
  const credential = params.get('X-Amz-Credential');
  const longDate = params.get('X-Amz-Date');
  const expires = params.get('X-Amz-Expires');
  const signedHeaders = params.get('X-Amz-SignedHeaders');
  const signature = params.get('X-Amz-Signature');
  if (algorithm === undefined || !credential || !longDate || !expires || !signedHeaders || signature === undefined) {
    throw malformed(
      'query',
      'Query-string authentication version 4 requires the X-Amz-Algorithm, X-Amz-Credential, X-Amz-Signature, X-Amz-Date, X-Amz-SignedHeaders, and X-Amz-Expires parameters.',
    );
  }
  if (algorithm !== ALGORITHM) throw malformed('query', `X-Amz-Algorithm only supports "${ALGORITHM}"`);
  const time = parseLongDate(longDate);
  if (time === undefined) throw malformed('query', `X-Amz-Date must be in the ISO8601 Long Format "yyyyMMdd'T'HHmmss'Z'"`);
  if (!/^\d{1,7}$/.test(expires) || Number(expires) < 1 || Number(expires) > MAX_EXPIRES_SECONDS) {
    throw malformed('query', 'X-Amz-Expires must be a number of seconds from 1 to 604800 (one week).');
  }
  const payloadHash = [...params].find(([key]) => key.toLowerCase() === 'x-amz-content-sha256')?.[1] ?? UNSIGNED_PAYLOAD;
  return {
    kind: 'query',
    ...parseCredential('query', credential, longDate, options),
    signedHeaders: signedHeaders.split(';'),
    signature,
    longDate,
    time,
    sessionToken: params.get('X-Amz-Security-Token'),
    payloadHash,
    expiresSeconds: Number(expires),
  };
}

/** Reads how the request was signed; throws the S3Error S3 would answer for a missing or garbled signature. */
export function parseAuth(request: SignedRequest, options: VerifyOptions = {}): SignedAuth {
  const authorization = request.headers.authorization;
  const params = new Map<string, string>();
  for (const [key, value] of queryPairs(request.rawQuery)) {
    if (key.startsWith('X-Amz-') || key.startsWith('x-amz-')) params.set(key, decodeQueryValue(value));
  }
  const presigned = QUERY_AUTH_PARAMS.some((name) => params.has(name));
  if (authorization !== undefined && presigned) {
    throw new S3Error(
      'InvalidArgument',
      400,
      'Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter or the Authorization header should be specified',
    );
  }
  if (authorization !== undefined) return parseHeaderAuth(request, authorization, options);
  if (presigned) return parseQueryAuth(params, options);
  if (queryPairs(request.rawQuery).some(([key]) => key === 'AWSAccessKeyId')) {
    // A Signature Version 2 presigned URL (boto3 signs these unless configured with signature_version='s3v4').
    throw new S3Error('InvalidRequest', 400, `The authorization mechanism you have provided is not supported. Please use ${ALGORITHM}.`);
  }
  throw new S3Error(
    'AccessDenied',
    403,
    'Access Denied: this gateway needs AWS Signature Version 4 credentials (anonymous requests are refused).',
  );
}

function payloadMode(kind: SignedAuth['kind'], payloadHash: string): PayloadMode {
  if (payloadHash === UNSIGNED_PAYLOAD) return 'unsigned';
  if (/^[0-9a-f]{64}$/.test(payloadHash)) return 'signed';
  const streaming = STREAMING_MODES[payloadHash];
  if (streaming && kind === 'header') return streaming;
  throw new S3Error('InvalidArgument', 400, 'x-amz-content-sha256 must be UNSIGNED-PAYLOAD, STREAMING-* or a valid sha256 value.', {
    ArgumentName: 'x-amz-content-sha256',
    ArgumentValue: payloadHash,
  });
}

function checkTime(auth: SignedAuth, now: number, maxSkewMs: number): void {
  const serverTime = formatLongDate(now);
  if (auth.expiresSeconds === undefined) {
    if (Math.abs(now - auth.time) > maxSkewMs) {
      throw new S3Error('RequestTimeTooSkewed', 403, 'The difference between the request time and the current time is too large.', {
        RequestTime: auth.longDate,
        ServerTime: serverTime,
        MaxAllowedSkewMilliseconds: String(maxSkewMs),
      });
    }
    return;
  }
  if (auth.time - now > maxSkewMs) {
    throw new S3Error('AccessDenied', 403, 'Request is not valid yet', { RequestTime: auth.longDate, ServerTime: serverTime });
  }
  const expires = auth.time + auth.expiresSeconds * 1000;
  if (now > expires) {
    throw new S3Error('AccessDenied', 403, 'Request has expired', {
      'X-Amz-Expires': String(auth.expiresSeconds),
      Expires: formatLongDate(expires),
      ServerTime: serverTime,
    });
  }
}

/** S3 refuses x-amz-* headers that were sent but not signed: they change what a request does. */
function checkSignedHeaders(auth: SignedAuth, headers: Record<string, string>): void {
  if (!auth.signedHeaders.includes('host')) throw malformed(auth.kind, 'SignedHeaders must include host.');
  const unsigned = Object.keys(headers).filter((name) => name.startsWith('x-amz-') && !auth.signedHeaders.includes(name));
  if (unsigned.length > 0) {
    throw new S3Error('AccessDenied', 403, 'There were headers present in the request which were not signed', {
      HeadersNotSigned: unsigned.join(', '),
    });
  }
}

function decodedLength(value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  if (!/^\d{1,15}$/.test(value.trim()))
    throw new S3Error('InvalidArgument', 400, 'x-amz-decoded-content-length must be a number of bytes.');
  return Number(value.trim());
}

function bodyFor(request: SignedRequest, auth: SignedAuth, mode: PayloadMode, signingKey: KeyObject): (raw: Readable) => Readable {
  const headers = request.headers;
  const checksums = headerChecksums(headers);
  if (mode === 'signed') return (raw) => checkedBody(raw, [sha256Check(auth.payloadHash), ...checksumChecks(checksums)]);
  if (mode === 'unsigned') return (raw) => checkedBody(raw, checksumChecks(checksums));
  const length = decodedLength(headers['x-amz-decoded-content-length']);
  const signed = mode === 'streaming-signed' || mode === 'streaming-signed-trailer';
  const trailerName = headers['x-amz-trailer']?.trim().toLowerCase();
  return (raw) =>
    decodeAwsChunked(raw, {
      signing: signed ? { signingKey, longDate: auth.longDate, scope: auth.scope, seedSignature: auth.signature } : undefined,
      trailer: mode !== 'streaming-signed',
      trailerName,
      decodedLength: length,
      checks: checksumChecks(checksums),
    });
}

/**
 * Verifies a request's SigV4 signature and says how to read its body. Throws an S3Error for
 * anything S3 would refuse; errors thrown by `lookup` (InvalidAccessKeyId, ExpiredToken, ...)
 * pass through as they are.
 */
export async function verifySigV4(request: SignedRequest, lookup: SecretLookup, options: VerifyOptions = {}): Promise<Verified> {
  const auth = parseAuth(request, options);
  const mode = payloadMode(auth.kind, auth.payloadHash);
  checkTime(auth, request.now, options.maxSkewMs ?? DEFAULT_MAX_SKEW_MS);
  checkSignedHeaders(auth, request.headers);

  const secret = await lookup(auth.accessKeyId, auth.sessionToken);
  const date = auth.scope.slice(0, 8);
  const signingKey = options.signingKeys?.get(secret, date, auth.region) ?? deriveSigningKey(secret, date, auth.region);
  const canonical = canonicalRequest({ ...request, signedHeaders: auth.signedHeaders, payloadHash: auth.payloadHash });
  const toSign = stringToSign(auth.longDate, auth.scope, canonical);
  const expected = createHmac('sha256', signingKey).update(toSign).digest('hex');
  if (!sameSignature(expected, auth.signature)) {
    throw new S3Error(
      'SignatureDoesNotMatch',
      403,
      'The request signature we calculated does not match the signature you provided. Check your key and signing method.',
      {
        AWSAccessKeyId: auth.accessKeyId,
        StringToSign: toSign,
        SignatureProvided: auth.signature,
      },
    );
  }
  return { accessKeyId: auth.accessKeyId, sessionToken: auth.sessionToken, payload: mode, body: bodyFor(request, auth, mode, signingKey) };
}

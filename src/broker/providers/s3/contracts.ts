import type { Readable } from 'node:stream';

/**
 * The S3-compatible gateway's parts and how they meet (docs/s3.md):
 *   sigv4.ts        verifies AWS Signature Version 4 (header or presigned query; signed,
 *                   UNSIGNED-PAYLOAD and aws-chunked payloads) and decodes aws-chunked bodies
 *   backend.ts      ObjectBackend, one bucket's objects; fs-backend.ts keeps them in a directory
 *   xml.ts          S3's XML bodies (results, errors) and the one XML request it reads
 *   gateway.ts      the HTTP routes: who is calling (grant), what they may do (scopes), the audit
 * Every refusal is an S3Error, which gateway.ts turns into S3's XML error body.
 */

/** An S3 error, with S3's code and HTTP status (AccessDenied 403, NoSuchKey 404, ...). */
export class S3Error extends Error {
  readonly code: string;
  readonly status: number;
  /** Extra elements for the XML error body (Key, BucketName, ...). */
  readonly detail: Record<string, string>;

  constructor(code: string, status: number, message: string, detail: Record<string, string> = {}) {
    super(message);
    this.name = 'S3Error';
    this.code = code;
    this.status = status;
    this.detail = detail;
  }
}

/** The request as sigv4.ts needs it: exactly what came over the wire, before any decoding. */
export type SignedRequest = {
  method: string;
  /** The raw path as sent (still percent-encoded), without the query string. */
  rawPath: string;
  /** The raw query string as sent, without '?'; '' when none. */
  rawQuery: string;
  /** Header names lower-cased; repeated headers joined with ','. */
  headers: Record<string, string>;
  /** The server's clock, epoch ms (the broker clock, for tests). */
  now: number;
};

/**
 * Finds the secret for an access key. The gateway's keys are grant-derived: the session token is
 * the grant credential, so the secret can be recomputed from it (deriveS3Secret) and is never
 * stored. Throws S3Error InvalidAccessKeyId / ExpiredToken / InvalidToken as fits.
 */
export type SecretLookup = (accessKeyId: string, sessionToken: string | undefined) => Promise<string>;

export type PayloadMode =
  /** x-amz-content-sha256 is the body's hex SHA-256 (checked as the body streams: see Verified.body). */
  | 'signed'
  | 'unsigned'
  /** STREAMING-AWS4-HMAC-SHA256-PAYLOAD: aws-chunked, each chunk signed. */
  | 'streaming-signed'
  /** STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER: as above, plus signed trailing headers (checksums). */
  | 'streaming-signed-trailer'
  /** STREAMING-UNSIGNED-PAYLOAD-TRAILER: aws-chunked, unsigned chunks, trailing checksum header. */
  | 'streaming-unsigned-trailer';

export type Verified = {
  accessKeyId: string;
  sessionToken: string | undefined;
  payload: PayloadMode;
  /**
   * The object body the client meant, decoded and checked: for aws-chunked payloads the
   * de-chunked bytes (chunk signatures and trailing checksums verified as it streams, an
   * S3Error destroying the stream on a mismatch: SignatureDoesNotMatch, XAmzContentSHA256Mismatch,
   * BadDigest); for 'signed' the body checked against x-amz-content-sha256 at its end; else the
   * body as is.
   */
  body(raw: Readable): Readable;
};

/** One object as S3 lists and heads it. */
export type ObjectInfo = {
  key: string;
  size: number;
  /** Quoted, as S3 sends it: "\"…\"". */
  etag: string;
  lastModified: Date;
  /**
   * The key of what the object really is, after symbolic links inside the bucket, when that
   * differs from `key`: the gateway checks the grant on it too, so a link under a granted prefix
   * never opens a file under an ungranted one.
   */
  realKey?: string;
};

export type ListRequest = {
  prefix: string;
  delimiter: string | undefined;
  /** Opaque token from a previous page's nextContinuationToken. */
  continuationToken: string | undefined;
  startAfter: string | undefined;
  /** 1..1000 (S3 caps at 1000). */
  maxKeys: number;
};

export type ListResult = {
  /** In UTF-8 binary key order, as S3 lists. */
  contents: ObjectInfo[];
  commonPrefixes: string[];
  isTruncated: boolean;
  nextContinuationToken: string | undefined;
  keyCount: number;
};

export type ByteRange = { start: number; end: number };

/** An object opened for a GET or HEAD: described, and read with `stream` at most once or let go with `close`. */
export type OpenObject = { info: ObjectInfo; stream(range?: ByteRange): Readable; close(): Promise<void> };

export type PartInfo = { partNumber: number; etag: string; size: number; lastModified: Date };

/**
 * Runs once a change is ready and just before it is made visible: the gateway writes the change's
 * audit record here (issue 7: no silent gaps). If it throws, the change is not made, whatever was
 * staged for it is removed, and the call fails with its error.
 */
export type BeforeChange<T = void> = (change: T) => Promise<void>;

/**
 * One bucket's objects (a files resource's root). Keys are S3 keys ('train/shard-0.jsonl');
 * the backend refuses keys that could leave its root (S3Error InvalidArgument / AccessDenied)
 * and never follows a symbolic link out of it. Writes are atomic: an object appears whole or
 * not at all, also after a crash. An upstream S3 bucket can implement the same interface later.
 */
export interface ObjectBackend {
  list(request: ListRequest): Promise<ListResult>;
  /** undefined when there is no such object (a directory is not an object). */
  head(key: string): Promise<ObjectInfo | undefined>;
  /** head and read in one: the path is resolved and the file opened once (a GET's hot path). */
  open(key: string): Promise<OpenObject | undefined>;
  /** The object's bytes, or the inclusive `range` of them; streamed, never buffered whole. */
  read(key: string, range?: ByteRange): Promise<Readable>;
  /** `beforeChange` gets the received object (size, ETag) before it replaces the key's. */
  put(key: string, body: Readable, beforeChange?: BeforeChange<ObjectInfo>): Promise<ObjectInfo>;
  /**
   * Idempotent: deleting a missing key is not an error (S3 answers 204 either way); `beforeChange`
   * runs either way, before anything is removed.
   */
  delete(key: string, beforeChange?: BeforeChange): Promise<void>;
  /** `beforeChange` gets the new upload's id before the upload exists. */
  createMultipartUpload(key: string, beforeChange?: BeforeChange<string>): Promise<string>;
  uploadPart(key: string, uploadId: string, partNumber: number, body: Readable, beforeChange?: BeforeChange<PartInfo>): Promise<PartInfo>;
  listParts(key: string, uploadId: string): Promise<PartInfo[]>;
  /** Joins the named parts (in order, ETags must match) into the object, atomically. */
  completeMultipartUpload(
    key: string,
    uploadId: string,
    parts: { partNumber: number; etag: string }[],
    beforeChange?: BeforeChange<ObjectInfo>,
  ): Promise<ObjectInfo>;
  abortMultipartUpload(key: string, uploadId: string, beforeChange?: BeforeChange): Promise<void>;
}

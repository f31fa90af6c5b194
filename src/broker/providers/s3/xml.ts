import { type ListRequest, type ListResult, type PartInfo, S3Error } from './contracts.ts';

/**
 * S3's XML bodies: the results and errors the gateway sends, and the requests it reads
 * (CompleteMultipartUpload, DeleteObjects). Shapes follow the S3 API reference
 * (https://docs.aws.amazon.com/AmazonS3/latest/API/), which the AWS SDKs and boto3 parse.
 */
export const S3_XMLNS = 'http://s3.amazonaws.com/doc/2006-03-01/';
const DECLARATION = '<?xml version="1.0" encoding="UTF-8"?>\n';
/** DeleteObjects takes at most this many keys (S3 answers MalformedXML beyond). */
export const MAX_DELETE_OBJECTS = 1000;

type Node = string | number | boolean | Date | undefined | Element | Node[];
type Element = { name: string; children: Node };

function element(name: string, children: Node): Element {
  return { name, children };
}

function render(node: Node): string {
  if (node === undefined) return '';
  if (Array.isArray(node)) return node.map(render).join('');
  if (node instanceof Date) return node.toISOString();
  if (typeof node === 'object') return `<${node.name}>${render(node.children)}</${node.name}>`;
  return escapeXml(String(node));
}

function documentOf(name: string, children: Node): string {
  return `${DECLARATION}<${name} xmlns="${S3_XMLNS}">${render(children)}</${name}>`;
}

/**
 * Escapes text for element content and attributes. Line breaks and tabs become character
 * references so parsers keep them; other control characters, which XML 1.0 cannot carry even as
 * references, are written as references the way S3 writes them (ask for EncodingType=url to get
 * such keys intact); a lone surrogate becomes U+FFFD.
 */
export function escapeXml(text: string): string {
  return wellFormed(text).replace(/[&<>"']|\p{Cc}/gu, (char) => {
    switch (char) {
      case '&':
        return '&amp;';
      case '<':
        return '&lt;';
      case '>':
        return '&gt;';
      case '"':
        return '&quot;';
      case "'":
        return '&apos;';
      default:
        return `&#x${(char.codePointAt(0) ?? 0).toString(16).toUpperCase()};`;
    }
  });
}

function wellFormed(text: string): string {
  return text.replace(/\p{Cs}/gu, '\uFFFD');
}

/** EncodingType=url: percent-encoded UTF-8 as S3 does it ("/" kept), which boto3 and the SDKs decode. */
export function urlEncodeKey(text: string): string {
  return encodeURIComponent(wellFormed(text)).replace(/%2F/g, '/');
}

export type ListOptions = { encodingType?: 'url' | undefined };

/** ListObjectsV2's result. `request` is what was asked (echoed back), `result` the backend's page. */
export function listObjectsV2Xml(bucket: string, request: ListRequest, result: ListResult, options: ListOptions = {}): string {
  const encode = options.encodingType === 'url' ? urlEncodeKey : (text: string) => text;
  return documentOf('ListBucketResult', [
    element('Name', bucket),
    element('Prefix', encode(request.prefix)),
    request.delimiter ? element('Delimiter', encode(request.delimiter)) : undefined,
    element('MaxKeys', request.maxKeys),
    options.encodingType ? element('EncodingType', options.encodingType) : undefined,
    element('KeyCount', result.keyCount),
    element('IsTruncated', result.isTruncated),
    request.continuationToken !== undefined ? element('ContinuationToken', request.continuationToken) : undefined,
    result.nextContinuationToken !== undefined ? element('NextContinuationToken', result.nextContinuationToken) : undefined,
    request.startAfter !== undefined ? element('StartAfter', encode(request.startAfter)) : undefined,
    result.contents.map((object) =>
      element('Contents', [
        element('Key', encode(object.key)),
        element('LastModified', object.lastModified),
        element('ETag', object.etag),
        element('Size', object.size),
        element('StorageClass', 'STANDARD'),
      ]),
    ),
    result.commonPrefixes.map((prefix) => element('CommonPrefixes', element('Prefix', encode(prefix)))),
  ]);
}

/** ListBuckets: the buckets a caller's grant names. */
export function listBucketsXml(buckets: string[], created: Date, owner = 'jit'): string {
  return documentOf('ListAllMyBucketsResult', [
    element('Owner', [element('ID', owner), element('DisplayName', owner)]),
    element(
      'Buckets',
      buckets.map((name) => element('Bucket', [element('Name', name), element('CreationDate', created)])),
    ),
  ]);
}

/** GetBucketLocation: empty means us-east-1, which every client accepts. */
export function locationConstraintXml(region = ''): string {
  return documentOf('LocationConstraint', region);
}

export function initiateMultipartUploadXml(bucket: string, key: string, uploadId: string): string {
  return documentOf('InitiateMultipartUploadResult', [element('Bucket', bucket), element('Key', key), element('UploadId', uploadId)]);
}

export function completeMultipartUploadXml(location: string, bucket: string, key: string, etag: string): string {
  return documentOf('CompleteMultipartUploadResult', [
    element('Location', location),
    element('Bucket', bucket),
    element('Key', key),
    element('ETag', etag),
  ]);
}

export type PartsPage = {
  /** Parts after this number (query part-number-marker); 0 for the first page. */
  partNumberMarker?: number;
  /** Query max-parts; S3's default and cap is 1000. */
  maxParts?: number;
};

/** ListParts, one page of `parts` (all of the upload's parts, ascending; this pages them). */
export function listPartsXml(bucket: string, key: string, uploadId: string, parts: PartInfo[], page: PartsPage = {}): string {
  const marker = page.partNumberMarker ?? 0;
  const maxParts = Math.min(page.maxParts ?? 1000, 1000);
  const after = parts.filter((part) => part.partNumber > marker);
  const shown = after.slice(0, maxParts);
  const isTruncated = after.length > shown.length;
  return documentOf('ListPartsResult', [
    element('Bucket', bucket),
    element('Key', key),
    element('UploadId', uploadId),
    element('PartNumberMarker', marker),
    element('NextPartNumberMarker', shown[shown.length - 1]?.partNumber ?? marker),
    element('MaxParts', maxParts),
    element('IsTruncated', isTruncated),
    element('StorageClass', 'STANDARD'),
    shown.map((part) =>
      element('Part', [
        element('PartNumber', part.partNumber),
        element('LastModified', part.lastModified),
        element('ETag', part.etag),
        element('Size', part.size),
      ]),
    ),
  ]);
}

/** S3's error body. `detail` adds elements such as Key or BucketName; names must be XML names. */
export function errorXml(code: string, message: string, resource: string, requestId: string, detail: Record<string, string> = {}): string {
  const extra = Object.entries(detail)
    .filter(([name]) => XML_NAME.test(name) && !['Code', 'Message', 'Resource', 'RequestId'].includes(name))
    .map(([name, value]) => element(name, value));
  // No namespace on Error: S3 sends none.
  return `${DECLARATION}${render(
    element('Error', [
      element('Code', code),
      element('Message', message),
      ...extra,
      element('Resource', resource),
      element('RequestId', requestId),
    ]),
  )}`;
}

export type DeleteRequest = { quiet: boolean; objects: { key: string; versionId?: string }[] };
export type DeleteOutcome = { key: string; error?: { code: string; message: string } };

/** DeleteObjects' result; in quiet mode only the failures are listed, as S3 does. */
export function deleteResultXml(outcomes: DeleteOutcome[], quiet = false): string {
  return documentOf(
    'DeleteResult',
    outcomes.map((outcome) =>
      outcome.error
        ? element('Error', [element('Key', outcome.key), element('Code', outcome.error.code), element('Message', outcome.error.message)])
        : quiet
          ? undefined
          : element('Deleted', element('Key', outcome.key)),
    ),
  );
}

/**
 * The CompleteMultipartUpload request body: its parts, in the order given (the backend checks the
 * order). Whitespace, namespaces and prefixes, and checksum elements (ChecksumCRC32, ...) are
 * accepted; a part without a numeric PartNumber or an ETag is MalformedXML.
 */
export function parseCompleteMultipartUpload(body: string): { partNumber: number; etag: string }[] {
  const root = parseXml(body);
  if (root.name !== 'CompleteMultipartUpload') throw malformed();
  const parts = root.children
    .filter((child) => child.name === 'Part')
    .map((part) => {
      const number = childText(part, 'PartNumber')?.trim();
      const etag = childText(part, 'ETag')?.trim();
      if (number === undefined || !/^[0-9]{1,9}$/.test(number) || !etag) throw malformed();
      return { partNumber: Number(number), etag };
    });
  if (parts.length === 0) throw malformed();
  return parts;
}

/** The DeleteObjects (POST ?delete) request body. Keys are taken as written, spaces included. */
export function parseDeleteObjects(body: string): DeleteRequest {
  const root = parseXml(body);
  if (root.name !== 'Delete') throw malformed();
  const quiet = childText(root, 'Quiet')?.trim().toLowerCase() === 'true';
  const objects = root.children
    .filter((child) => child.name === 'Object')
    .map((object) => {
      const key = childText(object, 'Key');
      if (key === undefined || key === '') throw malformed();
      const versionId = childText(object, 'VersionId')?.trim();
      return versionId ? { key, versionId } : { key };
    });
  if (objects.length === 0 || objects.length > MAX_DELETE_OBJECTS) throw malformed();
  return { quiet, objects };
}

function malformed(): S3Error {
  return new S3Error('MalformedXML', 400, 'The XML you provided was not well-formed or did not validate against our published schema');
}

/** A parsed element: local name (namespace prefix dropped), child elements, and its own text. */
export type XmlElement = { name: string; children: XmlElement[]; text: string };

function childText(parent: XmlElement, name: string): string | undefined {
  return parent.children.find((child) => child.name === name)?.text;
}

const XML_NAME = /^[A-Za-z_][\w.-]*(?::[A-Za-z_][\w.-]*)?$/;
const NAME_AT = /[A-Za-z_][\w.:-]*/y;
const ATTRIBUTE_AT = /\s+([A-Za-z_][\w.:-]*)\s*=\s*(?:"[^"<]*"|'[^'<]*')/y;
const MAX_DEPTH = 32;

/**
 * A small, strict-enough XML reader for the request bodies above: elements, attributes (read past),
 * text with the five entities and character references, CDATA, comments and processing
 * instructions. A DOCTYPE is refused (no entity expansion, no external anything). Any error is
 * S3's MalformedXML.
 */
export function parseXml(source: string): XmlElement {
  let at = source.charCodeAt(0) === 0xfeff ? 1 : 0;

  const skipMisc = () => {
    for (;;) {
      while (at < source.length && /\s/.test(source.charAt(at))) at++;
      if (source.startsWith('<?', at)) at = after('?>');
      else if (source.startsWith('<!--', at)) at = after('-->');
      else return;
    }
  };
  const after = (terminator: string) => {
    const end = source.indexOf(terminator, at);
    if (end < 0) throw malformed();
    return end + terminator.length;
  };
  const name = () => {
    NAME_AT.lastIndex = at;
    const match = NAME_AT.exec(source);
    if (!match) throw malformed();
    at = NAME_AT.lastIndex;
    return match[0];
  };

  const parseElement = (depth: number): XmlElement => {
    if (depth > MAX_DEPTH || source.charAt(at) !== '<') throw malformed();
    at++;
    const qualified = name();
    for (;;) {
      ATTRIBUTE_AT.lastIndex = at;
      if (!ATTRIBUTE_AT.exec(source)) break;
      at = ATTRIBUTE_AT.lastIndex;
    }
    while (/\s/.test(source.charAt(at))) at++;
    const node: XmlElement = { name: localName(qualified), children: [], text: '' };
    if (source.startsWith('/>', at)) {
      at += 2;
      return node;
    }
    if (source.charAt(at) !== '>') throw malformed();
    at++;
    const text: string[] = [];
    for (;;) {
      if (at >= source.length) throw malformed();
      if (source.startsWith('</', at)) {
        at += 2;
        if (name() !== qualified) throw malformed();
        while (/\s/.test(source.charAt(at))) at++;
        if (source.charAt(at) !== '>') throw malformed();
        at++;
        node.text = text.join('');
        return node;
      }
      if (source.startsWith('<!--', at)) at = after('-->');
      else if (source.startsWith('<![CDATA[', at)) {
        const end = after(']]>');
        text.push(source.slice(at + 9, end - 3));
        at = end;
      } else if (source.startsWith('<?', at)) at = after('?>');
      else if (source.startsWith('<!', at)) throw malformed();
      else if (source.charAt(at) === '<') node.children.push(parseElement(depth + 1));
      else {
        const end = source.indexOf('<', at);
        if (end < 0) throw malformed();
        text.push(decodeEntities(source.slice(at, end)));
        at = end;
      }
    }
  };

  skipMisc();
  if (source.startsWith('<!', at)) throw malformed();
  const root = parseElement(0);
  skipMisc();
  if (at !== source.length) throw malformed();
  return root;
}

function localName(qualified: string): string {
  return qualified.slice(qualified.indexOf(':') + 1);
}

const ENTITIES: Record<string, string> = { amp: '&', lt: '<', gt: '>', quot: '"', apos: "'" };

function decodeEntities(text: string): string {
  if (text.includes('>') && text.includes(']]>')) throw malformed();
  return text.replace(/&([^;&\s]*);?/g, (whole, reference: string) => {
    if (!whole.endsWith(';')) throw malformed();
    const named = ENTITIES[reference];
    if (named !== undefined) return named;
    const numeric = /^#(?:x([0-9a-fA-F]{1,6})|([0-9]{1,7}))$/.exec(reference);
    if (!numeric) throw malformed();
    const code = numeric[1] !== undefined ? Number.parseInt(numeric[1], 16) : Number(numeric[2]);
    if (code === 0 || code > 0x10ffff || (code >= 0xd800 && code <= 0xdfff)) throw malformed();
    return String.fromCodePoint(code);
  });
}

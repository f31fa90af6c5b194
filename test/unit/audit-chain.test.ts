import assert from 'node:assert/strict';
import { generateKeyPairSync, type KeyObject } from 'node:crypto';
import { describe, it } from 'node:test';
import {
  type ChainFields,
  type Checkpoint,
  canonicalDetail,
  chainFieldsOf,
  checkpointSigned,
  GENESIS,
  recordHash,
  type SigningKey,
  signCheckpoint,
  signingKeyFromPem,
} from '../../src/broker/audit/chain.ts';
import { AuditLog, type AuditRecord, toRecord } from '../../src/broker/audit/log.ts';
import { ChainVerifier, type VerifyReport } from '../../src/broker/audit/verify.ts';
import { SqliteStore } from '../../src/broker/store/sqlite.ts';
import type { AuditRow } from '../../src/broker/store/store.ts';

const T0 = 1_800_000_000_000;

function newKey(): SigningKey {
  const { privateKey } = generateKeyPairSync('ed25519');
  return signingKeyFromPem(String(privateKey.export({ type: 'pkcs8', format: 'pem' })));
}

const KEY = newKey();
const OTHER_KEY = newKey();
const trusting = (...keys: SigningKey[]) => new Map<string, KeyObject>(keys.map((key) => [key.keyId, key.publicKey]));

const FIELDS: ChainFields = {
  position: 7,
  at: T0,
  action: 'grant.issued',
  actor: 'user:ana',
  subject: 'user:ana',
  grantId: 'g_1',
  scope: 'datasets/train',
  outcome: 'ok',
  detail: '{"scopes":["datasets/train"],"ttlSeconds":3600}',
};

/** A chain of `count` records hashed the way sealing hashes them, with a checkpoint every `every` records. */
function buildChain(count: number, every: number, key = KEY): { rows: AuditRow[]; checkpoints: Checkpoint[] } {
  const rows: AuditRow[] = [];
  const checkpoints: Checkpoint[] = [];
  let previous = GENESIS;
  for (let position = 1; position <= count; position += 1) {
    const fields: ChainFields = {
      position,
      at: T0 + position * 1000,
      action: position % 3 === 0 ? 'data.read' : 'grant.issued',
      actor: 'user:ana',
      subject: 'user:ana',
      grantId: `g_${Math.ceil(position / 3)}`,
      scope: 'datasets/train',
      outcome: 'ok',
      detail: canonicalDetail(JSON.stringify({ n: position, path: `train/shard-${position}.jsonl` })),
    };
    previous = recordHash(previous, fields);
    rows.push({ ...fields, hash: previous });
    if (position % every === 0) checkpoints.push(signCheckpoint(key, position, previous, fields.at));
  }
  return { rows, checkpoints };
}

/** Runs `rows` through a verifier, as verifyStore does with the pages it reads. */
function verifyRows(rows: readonly AuditRow[], checkpoints: readonly Checkpoint[], trusted = trusting(KEY)): VerifyReport {
  const verifier = new ChainVerifier(checkpoints, trusted);
  for (const row of rows) if (!verifier.add(row, row.hash)) break;
  return verifier.finish(0, 0);
}

/** The same record with every hash from `from` (a position) on recomputed, as a careful forger would. */
function rehash(rows: AuditRow[], from: number): AuditRow[] {
  let previous = from === 1 ? GENESIS : (rows[from - 2]?.hash ?? GENESIS);
  return rows.map((row) => {
    if (row.position < from) return row;
    previous = recordHash(previous, row);
    return { ...row, hash: previous };
  });
}

describe('recordHash', () => {
  it('changes with every hashed field and with the previous hash', () => {
    const base = recordHash(GENESIS, FIELDS);
    assert.match(base, /^[0-9a-f]{64}$/);
    assert.equal(recordHash(GENESIS, { ...FIELDS }), base, 'the same record hashes the same');
    const variants: Partial<ChainFields>[] = [
      { position: 8 },
      { at: T0 + 1 },
      { action: 'grant.revoked' },
      { actor: 'user:bo' },
      { actor: null },
      { actor: 'null' },
      { subject: 'user:bo' },
      { subject: null },
      { grantId: 'g_2' },
      { grantId: null },
      { scope: 'datasets/train/x' },
      { scope: null },
      { outcome: 'denied' },
      { detail: '{"scopes":["datasets/train"],"ttlSeconds":3601}' },
    ];
    const seen = new Set([base]);
    for (const variant of variants) {
      const hash = recordHash(GENESIS, { ...FIELDS, ...variant });
      assert.ok(!seen.has(hash), `changing ${JSON.stringify(variant)} changes the hash`);
      seen.add(hash);
    }
    assert.notEqual(recordHash('1'.repeat(64), FIELDS), base, 'the previous hash is part of it');
  });

  it('cannot be matched by moving text between a field and the detail', () => {
    const one = recordHash(GENESIS, { ...FIELDS, outcome: 'ok', detail: '{"a":"b"}' });
    const other = recordHash(GENESIS, { ...FIELDS, outcome: 'ok",{"a":"b"}', detail: '{}' });
    assert.notEqual(one, other);
  });
});

describe('canonicalDetail', () => {
  const texts = [
    '{"reason" : "ttl", "by" : "system"}',
    '{"b":1,"a":2,"10":"x","2":"y"}',
    '{"n":1.0,"big":12345678901234567890,"tiny":1e-7,"huge":1e21,"neg":-0}',
    '{"s":"caf\\u00e9 \\u2028 \\ud83d\\ude00 \\"q\\" \\\\ /","lone":"\\ud800"}',
    '{"nested":{"z":[1,{"y":null,"x":true}],"a":{}},"dup":1,"dup":2}',
    '{"__proto__":{"polluted":true}}',
    '[]',
  ];
  for (const text of texts) {
    it(`is a fixed point: canonicalising ${text} twice changes nothing`, () => {
      const once = canonicalDetail(text);
      assert.equal(canonicalDetail(once), once);
      assert.equal(once, JSON.stringify(JSON.parse(text)));
      assert.equal(JSON.stringify(JSON.parse(once)), once, 'an exported object stringifies back to the hashed text');
    });
  }

  it('refuses text that is not JSON', () => {
    assert.throws(() => canonicalDetail('{reason: ttl}'), SyntaxError);
  });
});

describe('checkpoints', () => {
  const hash = recordHash(GENESIS, FIELDS);

  it('verify with the key that signed them', () => {
    const checkpoint = signCheckpoint(KEY, 7, hash, T0);
    assert.equal(checkpoint.keyId, KEY.keyId);
    assert.match(KEY.keyId, /^[0-9a-f]{16}$/);
    assert.equal(checkpointSigned(checkpoint, KEY.publicKey), true);
  });

  it('are refused with another key, or once their position, hash or time is edited', () => {
    const checkpoint = signCheckpoint(KEY, 7, hash, T0);
    assert.equal(checkpointSigned(checkpoint, OTHER_KEY.publicKey), false);
    assert.equal(checkpointSigned({ ...checkpoint, position: 8 }, KEY.publicKey), false);
    assert.equal(checkpointSigned({ ...checkpoint, hash: recordHash(GENESIS, { ...FIELDS, position: 8 }) }, KEY.publicKey), false);
    assert.equal(checkpointSigned({ ...checkpoint, at: T0 + 1 }, KEY.publicKey), false);
    assert.equal(checkpointSigned({ ...checkpoint, signature: 'not base64 at all!' }, KEY.publicKey), false);
    assert.equal(checkpointSigned({ ...checkpoint, signature: '' }, KEY.publicKey), false);
  });

  it('refuses an audit key that is not Ed25519', () => {
    const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    assert.throws(() => signingKeyFromPem(String(privateKey.export({ type: 'pkcs8', format: 'pem' }))), /not ed25519/);
  });
});

describe('ChainVerifier', () => {
  const { rows, checkpoints } = buildChain(12, 5);

  it('verifies an untouched chain up to its last checkpoint, and reports its head', () => {
    const report = verifyRows(rows, checkpoints);
    assert.equal(report.ok, true, report.problem?.message);
    assert.equal(report.records, 12);
    assert.equal(report.checkpoint?.position, 10);
    assert.equal(report.checkpoint?.keyId, KEY.keyId);
    assert.equal(report.checkpoint?.at, new Date(T0 + 10_000).toISOString());
    assert.deepEqual(report.head, { position: 12, hash: rows[11]?.hash });
    assert.equal(report.problem, null);
  });

  it('verifies an empty chain, with no head and no checkpoint', () => {
    const report = verifyRows([], []);
    assert.equal(report.ok, true);
    assert.equal(report.records, 0);
    assert.equal(report.head, null);
    assert.equal(report.checkpoint, null);
  });

  it('catches an edited record, and names it', () => {
    const edited = rows.map((row) => (row.position === 4 ? { ...row, detail: row.detail.replace('"n":4', '"n":40') } : row));
    const report = verifyRows(edited, checkpoints);
    assert.equal(report.ok, false);
    assert.equal(report.problem?.kind, 'altered');
    assert.equal(report.problem?.position, 4);
    assert.equal(report.records, 3);
    assert.match(report.problem?.message ?? '', /record 4 does not match its hash/);
  });

  it('catches an edit to any hashed column, the stored hash included', () => {
    const columns: Partial<AuditRow>[] = [
      { at: T0 },
      { action: 'grant.revoked' },
      { actor: 'user:mallory' },
      { subject: null },
      { grantId: 'g_99' },
      { scope: 'datasets' },
      { outcome: 'denied' },
      { hash: '0'.repeat(64) },
    ];
    for (const change of columns) {
      const edited = rows.map((row) => (row.position === 6 ? { ...row, ...change } : row));
      const report = verifyRows(edited, checkpoints);
      assert.equal(report.problem?.kind, 'altered', JSON.stringify(change));
      assert.equal(report.problem?.position, 6, JSON.stringify(change));
    }
  });

  it('catches a deleted record in the middle, and a deleted first record', () => {
    const middle = verifyRows(
      rows.filter((row) => row.position !== 7),
      checkpoints,
    );
    assert.equal(middle.problem?.kind, 'missing');
    assert.equal(middle.problem?.position, 7);
    assert.equal(middle.records, 6);
    assert.match(middle.problem?.message ?? '', /record 7 is missing/);
    const first = verifyRows(rows.slice(1), checkpoints);
    assert.equal(first.problem?.kind, 'missing');
    assert.equal(first.problem?.position, 1);
    assert.equal(first.records, 0);
    const several = verifyRows(
      rows.filter((row) => row.position < 3 || row.position > 5),
      checkpoints,
    );
    assert.equal(several.problem?.kind, 'missing');
    assert.match(several.problem?.message ?? '', /record 3-5 is missing/);
  });

  it('catches two records swapped in place (positions kept)', () => {
    const swapped = rows.map((row) => {
      if (row.position === 3) return { ...(rows[3] as AuditRow), position: 3 };
      if (row.position === 4) return { ...(rows[2] as AuditRow), position: 4 };
      return row;
    });
    const report = verifyRows(swapped, checkpoints);
    assert.equal(report.problem?.kind, 'altered');
    assert.equal(report.problem?.position, 3);
  });

  it('catches a record that comes again or goes back (a repeated delivery, a reordered copy)', () => {
    const repeated = [...rows.slice(0, 6), rows[5] as AuditRow, ...rows.slice(6)];
    const report = verifyRows(repeated, checkpoints);
    assert.equal(report.problem?.kind, 'out-of-order');
    assert.equal(report.problem?.position, 7);
    assert.equal(report.records, 6);
    const backwards = [...rows.slice(0, 6), rows[2] as AuditRow];
    assert.equal(verifyRows(backwards, checkpoints).problem?.kind, 'out-of-order');
  });

  it('catches a chain rewritten after an edit (every later hash recomputed) by the signed checkpoint', () => {
    const edited = rows.map((row) => (row.position === 2 ? { ...row, detail: '{"n":2,"forged":true}' } : row));
    const report = verifyRows(rehash(edited, 2), checkpoints);
    assert.equal(report.problem?.kind, 'rewritten');
    assert.equal(report.problem?.position, 5, 'the first checkpoint after the edit');
    assert.equal(report.records, 4);
    assert.equal(report.checkpoint, null, 'no checkpoint was reached');
  });

  it('passes a rewrite after the last checkpoint: only the signed part is proven', () => {
    // The unsigned tail is exactly what the next checkpoint will prove; until then a rewrite of it
    // is not detectable, which is why checkpoints are also signed on a timer.
    const edited = rows.map((row) => (row.position === 11 ? { ...row, detail: '{"n":11,"forged":true}' } : row));
    const report = verifyRows(rehash(edited, 11), checkpoints);
    assert.equal(report.ok, true);
    assert.equal(report.checkpoint?.position, 10);
  });

  it('catches a truncated tail by the checkpoint past its end', () => {
    const report = verifyRows(rows.slice(0, 7), checkpoints);
    assert.equal(report.problem?.kind, 'truncated');
    assert.equal(report.problem?.position, 10);
    assert.equal(report.records, 7);
    assert.equal(report.checkpoint?.position, 5, 'the checkpoint the remaining records still reach');
    assert.match(report.problem?.message ?? '', /records 8-10 were deleted/);
  });

  it('refuses checkpoints signed by a key it does not trust', () => {
    const report = verifyRows(rows, checkpoints, trusting(OTHER_KEY));
    assert.equal(report.problem?.kind, 'untrusted-key');
    assert.equal(report.problem?.position, 5);
    assert.equal(report.records, 4);
    const rotated = verifyRows(rows, checkpoints, trusting(OTHER_KEY, KEY));
    assert.equal(rotated.ok, true, 'a key kept as trusted after rotation still verifies');
  });

  it('catches a checkpoint whose signature is edited, or forged with another key under the trusted id', () => {
    const edited = checkpoints.map((checkpoint) =>
      checkpoint.position === 10 ? { ...checkpoint, signature: `AAAA${checkpoint.signature.slice(4)}` } : checkpoint,
    );
    const report = verifyRows(rows, edited);
    assert.equal(report.problem?.kind, 'bad-signature');
    assert.equal(report.problem?.position, 10);
    assert.equal(report.records, 9);
    const forged = checkpoints.map((checkpoint) =>
      checkpoint.position === 5 ? { ...signCheckpoint(OTHER_KEY, 5, checkpoint.hash, checkpoint.at), keyId: KEY.keyId } : checkpoint,
    );
    assert.equal(verifyRows(rows, forged).problem?.kind, 'bad-signature');
  });

  it('catches a checkpoint moved to another position', () => {
    const moved = checkpoints.map((checkpoint) => (checkpoint.position === 5 ? { ...checkpoint, position: 6 } : checkpoint));
    assert.equal(verifyRows(rows, moved).problem?.kind, 'rewritten');
  });

  it('stops at the first problem and checks nothing after it', () => {
    const verifier = new ChainVerifier(checkpoints, trusting(KEY));
    assert.equal(verifier.add(rows[0] as AuditRow, 'f'.repeat(64)), false);
    assert.equal(verifier.add(rows[0] as AuditRow, rows[0]?.hash ?? ''), false, 'even a good record after a failure');
    assert.equal(verifier.finish(3, 1).records, 0);
    assert.equal(verifier.finish(3, 1).unsealed, 3);
  });
});

describe('an exported chain verifies offline', () => {
  it('from the JSONL a sink writes: JSON.stringify(details) reproduces the hashed detail', async () => {
    const store = new SqliteStore(':memory:');
    try {
      let now = T0;
      const audit = new AuditLog({ store, clock: { now: () => now }, key: KEY, checkpointEvery: 4, checkpointIntervalMs: 3_600_000 });
      const details: Record<string, unknown>[] = [
        { reason: 'ttl', by: 'system' },
        { b: 1, a: 2, 10: 'x', 2: 'y' },
        { n: 1.5, big: 2 ** 70 + 1, tiny: 1e-7, huge: 1e21, neg: -0 },
        { s: 'café \u2028 😀 "q" \\ /', lone: '\ud800', empty: '' },
        { nested: { z: [1, { y: null, x: true }], a: {} }, undef: undefined },
      ];
      for (let round = 0; round < 3; round += 1) {
        await store.appendEvents(
          details.map((detail, index) => ({
            at: now + index,
            type: index % 2 ? 'data.read' : 'grant.issued',
            subject: index === 4 ? null : 'user:ana',
            grantId: index === 4 ? null : `g_${round}`,
            scope: index === 3 ? null : 'datasets/train datasets/eval',
            detail,
          })),
        );
        now += 60_000;
        await audit.seal();
      }
      const records = (await store.queryAudit({ limit: 1000 })).map(toRecord);
      assert.equal(records.length, 15);
      const jsonl = records.map((record) => JSON.stringify(record)).join('\n');
      const copy = jsonl.split('\n').map((line) => JSON.parse(line) as AuditRecord);
      const checkpoints = await store.listCheckpoints();
      assert.ok(checkpoints.length >= 3, 'sealing signed checkpoints');
      const verifier = new ChainVerifier(checkpoints, trusting(KEY));
      for (const record of copy) assert.ok(verifier.add(chainFieldsOf(record), record.hash), verifier.problem?.message);
      const report = verifier.finish(0, 0);
      assert.equal(report.ok, true);
      assert.equal(report.records, 15);
      assert.equal(report.checkpoint?.position, checkpoints.at(-1)?.position);

      // And an edit in the copy is caught there.
      const tampered = copy.map((record) => (record.seq === 8 ? { ...record, details: { ...record.details, extra: 1 } } : record));
      const offline = new ChainVerifier(checkpoints, trusting(KEY));
      for (const record of tampered) if (!offline.add(chainFieldsOf(record), record.hash)) break;
      assert.equal(offline.finish(0, 0).problem?.kind, 'altered');
      assert.equal(offline.problem?.position, 8);
    } finally {
      await store.close();
    }
  });
});

// `jit watch` and `jit audit` as a data owner and an auditor use them: the real bin/jit against a
// real broker shows a `jit run` live from request to revocation, queries the trail, verifies its
// chain, and catches tampering done behind the broker's back (exit 10), including a tail cut off
// together with its checkpoints, which only the head this machine verified last time reveals.
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import { describe, test } from 'node:test';
import type { AuditRecord, VerifyReport } from '../../src/core/audit.ts';
import { api } from '../helpers/broker.ts';
import { jit } from '../helpers/cli.ts';
import { runArgs, setUp, startJit } from './support.ts';

function tamper(dir: string, sql: string): void {
  const db = new DatabaseSync(path.join(dir, 'broker.db'));
  try {
    db.exec(sql);
  } finally {
    db.close();
  }
}

describe('jit watch and jit audit', () => {
  test('jit watch --json shows a jit run live, from its grant to its revocation, with the data it read', async (t) => {
    const places = await setUp(t);
    if (!places) return;
    const watch = startJit(t, ['watch', '--json'], { env: places.env });
    await watch.readUntil('stderr', /watching http/);
    const run = await jit(
      runArgs([
        'sh',
        '-c',
        'curl -sf -H "authorization: Bearer $JIT_FILES_TOKEN" "$JIT_FILES_URL/datasets/train/shard-0000.jsonl" > /dev/null',
      ]),
      {
        env: places.env,
      },
    );
    assert.equal(run.code, 0, run.stderr);
    await watch.readUntil('stdout', /"action":"grant\.revoked"/);
    const records = watch.stdout
      .toString()
      .trim()
      .split('\n')
      .map((line) => JSON.parse(line) as AuditRecord);
    const grant = records[0]?.grant;
    assert.ok(grant, 'the first record names the grant');
    assert.deepEqual(
      records.filter((record) => record.grant === grant).map((record) => record.action),
      ['grant.issued', 'data.read', 'grant.revoked'],
    );
    assert.equal(records.find((record) => record.action === 'data.read')?.details.path, 'train/shard-0000.jsonl');
    const seqs = records.map((record) => record.seq);
    assert.deepEqual(
      seqs,
      [...seqs].sort((a, b) => a - b),
      'in chain order',
    );
  });

  test('jit watch on a terminal prints a coloured line per record; Ctrl-C ends it with exit 0', async (t) => {
    const places = await setUp(t);
    if (!places) return;
    const { NO_COLOR: _, ...colourful } = places.env;
    const watch = startJit(t, ['watch'], { env: colourful, terminal: true });
    await watch.readUntil('stdout', /watching http/);
    assert.equal((await jit(runArgs(['true']), { env: places.env })).code, 0);
    const line = await watch.readUntil('stdout', /.*grant\.revoked.*/);
    assert.ok(line[0].includes('\x1b[32mok\x1b[39m'), 'ok is green');
    assert.match(line[0], /user:admin\s+g_[0-9a-f]{20}\s+datasets\/train/);
    watch.child.stdin?.write('\x03');
    const done = await watch.done;
    assert.equal(done.code, 0);
  });

  test('jit audit queries and pages the trail; --format jsonl streams every record', async (t) => {
    const places = await setUp(t);
    if (!places) return;
    for (let run = 0; run < 3; run += 1) assert.equal((await jit(runArgs(['true']), { env: places.env })).code, 0);
    const table = await jit(['audit', '--action', 'grant.*'], { env: places.env });
    assert.equal(table.code, 0, table.stderr);
    assert.match(table.stdout, /^SEQ\s+TIME\s+ACTION\s+OUTCOME\s+ACTOR\s+GRANT\s+SCOPE\s+DETAILS/);
    assert.equal(table.stdout.match(/grant\.issued/g)?.length, 3);
    const page = await jit(['audit', '--limit', '2', '--json'], { env: places.env });
    const body = JSON.parse(page.stdout) as { records: AuditRecord[]; next: number };
    assert.deepEqual(
      body.records.map((record) => record.seq),
      [1, 2],
    );
    assert.equal(body.next, 2);
    const all = await jit(['audit', '--format', 'jsonl'], { env: places.env });
    const lines = all.stdout.trim().split('\n');
    assert.ok(lines.length >= 8, 'three runs of two records each, the admin token and the broker start');
    assert.deepEqual(
      lines.map((line) => (JSON.parse(line) as AuditRecord).seq),
      lines.map((_, index) => index + 1),
    );
    const bad = await jit(['audit', '--since', 'yesterday'], { env: places.env });
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /^jit: error: --since "yesterday" is neither a date-time nor a duration; e\.g\. --since/);
  });

  test('jit audit verify passes an untouched chain and exits 10 on an edited record or a cut tail', async (t) => {
    const places = await setUp(t, { extraYaml: 'audit:\n  checkpointEvery: 2\n' });
    if (!places) return;
    assert.equal((await jit(runArgs(['true']), { env: places.env })).code, 0);
    const ok = await jit(['audit', 'verify'], { env: places.env });
    assert.equal(ok.code, 0, ok.stderr);
    assert.match(ok.stdout, /^verified \d+ records up to checkpoint \d+ \(signed .* by key [0-9a-f]{16}\)/);
    const report = JSON.parse((await jit(['audit', 'verify', '--json'], { env: places.env })).stdout) as VerifyReport;
    assert.equal(report.ok, true);

    tamper(places.broker.dir, `UPDATE events SET actor = 'user:nobody' WHERE type = 'grant.issued'`);
    const edited = await jit(['audit', 'verify'], { env: places.env });
    assert.equal(edited.code, 10);
    assert.match(edited.stderr, /^jit: error: the audit trail does not verify: record \d+ does not match its hash/);
    tamper(places.broker.dir, `UPDATE events SET actor = 'user:admin' WHERE type = 'grant.issued'`);
    assert.equal((await jit(['audit', 'verify'], { env: places.env })).code, 0);

    // Cut the tail and every checkpoint with it: the broker's own chain looks whole, but this
    // machine verified a longer one.
    const head = report.records;
    tamper(
      places.broker.dir,
      `DELETE FROM events WHERE position >= ${head - 1}; DELETE FROM audit_checkpoints WHERE position >= ${head - 1};`,
    );
    const cut = await jit(['audit', 'verify', '--json'], { env: places.env });
    assert.equal(cut.code, 10);
    const error = JSON.parse(cut.stdout) as { error: { code: string; message: string; exitCode: number } };
    assert.equal(error.error.exitCode, 10);
    assert.match(error.error.message, /records were deleted/);
  });

  test('jit audit verify --file checks an exported copy offline, repeats and all, and catches an edit in it', async (t) => {
    const places = await setUp(t, { extraYaml: 'audit:\n  checkpointEvery: 2\n' });
    if (!places) return;
    for (let run = 0; run < 2; run += 1) assert.equal((await jit(runArgs(['true']), { env: places.env })).code, 0);
    const exported = await jit(['audit', '--format', 'jsonl'], { env: places.env });
    assert.equal(exported.code, 0, exported.stderr);
    const lines = exported.stdout.trim().split('\n');
    assert.ok(
      lines.some((line) => (JSON.parse(line) as AuditRecord).checkpoint),
      'the export carries the signed checkpoints',
    );
    const dir = await mkdtemp(path.join(tmpdir(), 'jit-export-'));
    t.after(() => rm(dir, { recursive: true, force: true }));
    const key = JSON.parse((await jit(['audit', 'verify', '--json'], { env: places.env })).stdout) as VerifyReport;
    assert.equal(key.ok, true);
    const publicKey = path.join(dir, 'audit.pub');
    await writeFile(publicKey, (await api<{ publicKey: string }>(places.broker, places.broker.token, 'GET', 'audit/key')).body.publicKey);
    const copy = path.join(dir, 'audit.jsonl');
    // At least once: a repeated batch is not a problem.
    await writeFile(copy, `${[...lines, ...lines.slice(1, 3)].join('\n')}\n`);
    // Offline: no broker in the environment.
    const offline = { ...places.env, JIT_BROKER_URL: undefined, JIT_TOKEN: undefined };
    const good = await jit(['audit', 'verify', '--file', copy, '--public-key', publicKey], { env: offline });
    assert.equal(good.code, 0, good.stderr);
    assert.match(good.stdout, new RegExp(`^verified ${copy}: records 1-${lines.length}, up to checkpoint \\d+ signed by key [0-9a-f]{16}`));

    const tail = path.join(dir, 'tail.jsonl');
    await writeFile(tail, `${lines.slice(3).join('\n')}\n`);
    const fromTail = await jit(['audit', 'verify', '--file', tail, '--public-key', publicKey], { env: offline });
    assert.equal(fromTail.code, 0, fromTail.stderr);
    assert.match(fromTail.stdout, /from signed checkpoint \d+/, 'a copy may start mid-chain, from a signed checkpoint');

    // A second, different record 5 (a SIEM keeping the last one would take the forgery).
    const forged = lines[4]?.replace('"user:admin"', '"user:mallory"') ?? '';
    await writeFile(copy, `${[...lines, forged].join('\n')}\n`);
    const twice = await jit(['audit', 'verify', '--file', copy, '--public-key', publicKey], { env: offline });
    assert.equal(twice.code, 10);
    assert.match(twice.stderr, /two different records claim seq 5/);

    // Every checkpoint stripped: nothing ties the copy to the broker's key any more.
    const stripped = lines.map((line) => {
      const { checkpoint: _, ...record } = JSON.parse(line) as AuditRecord;
      return JSON.stringify(record);
    });
    await writeFile(copy, `${stripped.join('\n')}\n`);
    const unsigned = await jit(['audit', 'verify', '--file', copy, '--public-key', publicKey, '--json'], { env: offline });
    assert.equal(unsigned.code, 10);
    assert.equal((JSON.parse(unsigned.stdout) as { error: { code: string } }).error.code, 'audit_unsigned');

    const edited = lines.map((line, index) => (index === 3 ? line.replace('"user:admin"', '"user:mallory"') : line));
    await writeFile(copy, `${edited.join('\n')}\n`);
    const bad = await jit(['audit', 'verify', '--file', copy, '--public-key', publicKey], { env: offline });
    assert.equal(bad.code, 10);
    assert.match(bad.stderr, /^jit: error: .*audit\.jsonl does not verify: record 4 does not match its hash/);
  });
});

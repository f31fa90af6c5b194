// `jit watch` as a data owner leaves it running: the real bin/jit against a real broker keeps
// following the trail across a broker restart (showing what happened while it was cut off, once),
// shows only what its --grant, --subject and --scope filters match, and on a terminal colours a
// refusal apart from what went through.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { AuditRecord } from '../../src/core/audit.ts';
import type { IssuedGrant } from '../../src/core/grant.ts';
import { api, createToken, readGranted } from '../helpers/broker.ts';
import { type JitProcess, terminalAvailable } from '../helpers/cli.ts';
import { setUp, startJit } from './support.ts';

/** admin and ana may read every dataset; bo may read nothing. */
const POLICY = `policy:
  rules:
    - name: datasets
      subjects: ["user:admin", "user:ana"]
      scopes: ["datasets/**"]
      defaultTtl: 1h
      maxTtl: 2h
`;

/** The records a `jit watch --json` printed so far, one per line. */
function printed(watch: JitProcess): AuditRecord[] {
  return watch.stdout
    .toString()
    .split('\n')
    .filter(Boolean)
    .map((line) => JSON.parse(line) as AuditRecord);
}

type Page = { records: AuditRecord[]; next: number | null };

describe('jit watch', () => {
  test('survives a broker restart: reconnects on its own and shows, once, what happened while it was cut off', async (t) => {
    const places = await setUp(t, { policy: POLICY });
    if (!places) return;
    const { broker } = places;
    const grant = async () => {
      const issued = await api<IssuedGrant>(broker, broker.token, 'POST', 'grants', { scopes: ['datasets/train'], heartbeat: false });
      assert.equal(issued.status, 201);
      assert.equal((await api(broker, broker.token, 'DELETE', `grants/${issued.body.id}`)).status, 200);
      return issued.body.id;
    };
    const watch = startJit(t, ['watch', '--json'], { env: places.env });
    await watch.readUntil('stderr', /watching http/);
    const before = await grant();
    await watch.readUntil('stdout', new RegExp(`"action":"grant\\.revoked".*"grant":"${before}"`));
    const seenBefore = printed(watch).at(-1)?.seq ?? 0;

    await broker.stop();
    await watch.readUntil('stderr', /lost the stream from http:\S+; reconnecting in/);
    // Held down until the watch backs off for 2 s, so what follows happens while it is away.
    await watch.readUntil('stderr', /reconnecting in 2\.0 s/);
    await broker.restart();
    const during = await grant();
    await watch.readUntil('stdout', new RegExp(`"action":"grant\\.revoked".*"grant":"${during}"`));
    assert.match(watch.stderr, new RegExp(`reconnected to http:\\S+, resuming after record ${seenBefore}\\n`));

    const records = printed(watch);
    const afterRestart = records.filter((record) => record.seq > seenBefore).map((record) => record.action);
    assert.deepEqual(
      afterRestart,
      ['config.loaded', 'grant.issued', 'grant.revoked'],
      "the restart's own record and the grant made before the watch got back, nothing else",
    );
    const seqs = records.map((record) => record.seq);
    assert.deepEqual(
      seqs,
      Array.from({ length: seqs.length }, (_, index) => (seqs[0] ?? 0) + index),
      'one unbroken run of seqs: none lost, none twice',
    );
    const trail = (await api<Page>(broker, broker.token, 'GET', `audit?after=${(seqs[0] ?? 1) - 1}&limit=1000`)).body.records;
    assert.deepEqual(
      seqs,
      trail.map((record) => record.seq),
      'what the broker holds',
    );
  });

  test('--grant, --subject and --scope each show only the records they match (NDJSON with --json)', async (t) => {
    const places = await setUp(t, { policy: POLICY });
    if (!places) return;
    const { broker } = places;
    const ana = await createToken(broker, 'user:ana', ['requester']);
    const issue = async (token: string, scope: string) => {
      const issued = await api<IssuedGrant>(broker, token, 'POST', 'grants', { scopes: [scope], heartbeat: false });
      assert.equal(issued.status, 201, JSON.stringify(issued.body));
      return issued.body;
    };
    // Made before the watches start (they start from the whole trail): history and live alike.
    const trainOfAdmin = await issue(broker.token, 'datasets/train');
    const watches = {
      grant: startJit(t, ['watch', '--json', '--from', '0', '--grant', trainOfAdmin.id], { env: places.env }),
      subject: startJit(t, ['watch', '--json', '--from', '0', '--subject', 'user:ana'], { env: places.env }),
      scope: startJit(t, ['watch', '--json', '--from', '0', '--scope', 'datasets/eval'], { env: places.env }),
    };
    for (const watch of Object.values(watches)) await watch.readUntil('stderr', /watching http/);

    assert.equal((await readGranted(broker.url, trainOfAdmin.credential, 'datasets/train/shard-0000.jsonl')).status, 200);
    const evalOfAna = await issue(ana, 'datasets/eval');
    const trainOfAna = await issue(ana, 'datasets/train');
    const evalOfAdmin = await issue(broker.token, 'datasets/eval/holdout.jsonl');
    for (const [token, grant] of [
      [broker.token, trainOfAdmin],
      [ana, evalOfAna],
      [ana, trainOfAna],
      [broker.token, evalOfAdmin],
    ] as const) {
      assert.equal((await api(broker, token, 'DELETE', `grants/${grant.id}`)).status, 200);
    }
    const last = (await api<Page>(broker, broker.token, 'GET', `audit?grant=${evalOfAdmin.id}&action=grant.revoked`)).body.records[0];
    assert.ok(last);

    // Each has seen the trail up to the last revocation once the scope watch shows it and the others
    // show their own last matching record.
    await watches.grant.readUntil('stdout', new RegExp(`"action":"grant\\.revoked".*"grant":"${trainOfAdmin.id}"`));
    await watches.subject.readUntil('stdout', new RegExp(`"action":"grant\\.revoked".*"grant":"${trainOfAna.id}"`));
    await watches.scope.readUntil('stdout', new RegExp(`"seq":${last.seq},`));

    const show = (watch: JitProcess) => printed(watch).map((record) => [record.action, record.grant]);
    assert.deepEqual(show(watches.grant), [
      ['grant.issued', trainOfAdmin.id],
      ['data.read', trainOfAdmin.id],
      ['grant.revoked', trainOfAdmin.id],
    ]);
    assert.deepEqual(show(watches.subject), [
      ['token.created', null],
      ['grant.issued', evalOfAna.id],
      ['grant.issued', trainOfAna.id],
      ['grant.revoked', evalOfAna.id],
      ['grant.revoked', trainOfAna.id],
    ]);
    assert.ok(
      printed(watches.subject).every((record) => record.subject === 'user:ana'),
      'only records about ana',
    );
    assert.deepEqual(show(watches.scope), [
      ['grant.issued', evalOfAna.id],
      ['grant.issued', evalOfAdmin.id],
      ['grant.revoked', evalOfAna.id],
      ['grant.revoked', evalOfAdmin.id],
    ]);
  });

  test('on a terminal, a refusal is coloured apart from what went through (red denied, green ok)', {
    skip: !terminalAvailable(),
  }, async (t) => {
    const places = await setUp(t, { policy: POLICY });
    if (!places) return;
    const { broker } = places;
    const bo = await createToken(broker, 'user:bo', ['requester']);
    const { NO_COLOR: _, ...colourful } = places.env;
    const watch = startJit(t, ['watch', '--subject', 'user:bo'], { env: colourful, terminal: true, terminalColumns: 160 });
    await watch.readUntil('stdout', /watching http/);
    assert.equal((await api(broker, bo, 'POST', 'grants', { scopes: ['datasets/train'] })).status, 403);
    const refused = await watch.readUntil('stdout', /.*grant\.refused.*/);
    assert.ok(refused[0].includes('\x1b[31mdenied\x1b[39m'), `denied is red: ${JSON.stringify(refused[0])}`);
    assert.match(refused[0], /user:bo\s+-\s+datasets\/train/);
    // bo's token, revoked by the admin: a record about bo that went through.
    const tokens = (await api<{ tokens: { tokenId: string; subject: string }[] }>(broker, broker.token, 'GET', 'tokens')).body.tokens;
    const boToken = tokens.find((token) => token.subject === 'user:bo');
    assert.ok(boToken);
    assert.equal((await api(broker, broker.token, 'DELETE', `tokens/${boToken.tokenId}`)).status, 200);
    const revoked = await watch.readUntil('stdout', /.*token\.revoked.*/);
    assert.ok(revoked[0].includes('\x1b[32mok\x1b[39m'), `ok is green: ${JSON.stringify(revoked[0])}`);
    assert.ok(!revoked[0].includes('\x1b[31m'), 'and not red');
    watch.child.stdin?.write('\x03');
    assert.equal((await watch.done).code, 0);
  });
});

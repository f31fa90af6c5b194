// The schemas of src/cli/shapes.ts are what the e2e test holds every command's --json output to
// (test/e2e/cli-json-shapes.test.ts), so here they must be shown to refuse: a document with a
// field too many, one missing, or one of the wrong type or value fails to parse. They also stay
// in step with the types the handlers build their data from (checked by `npm run typecheck`),
// and the CLI never loads them (nor zod) at run time.
import assert from 'node:assert/strict';
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { describe, test } from 'node:test';
import type { z } from 'zod';
import type { ConfigSummary } from '../../src/broker/check-config.ts';
import type { Decision } from '../../src/broker/policy/evaluate.ts';
import type { Check } from '../../src/cli/commands/doctor.ts';
import { errorDocument, JSON_OUTPUTS, jsonShapes, toJsonSchema } from '../../src/cli/shapes.ts';
import type { WatchChange } from '../../src/cli/watch.ts';
import type { GrantAuth, LocalGrant } from '../../src/config/local.ts';
import type { AuditRecord, VerifyReport } from '../../src/core/audit.ts';
import type { GrantView, RevocationReceipt } from '../../src/core/grant.ts';
import type { CreatedToken, TokenRevocation, TokenView } from '../../src/core/token.ts';
import { ROOT } from '../helpers/cli.ts';

/** True when A and B are assignable both ways: the schema describes exactly the handler's type. */
type Same<A, B> = [A] extends [B] ? ([B] extends [A] ? true : false) : false;
/** True when A is assignable to B: the schema is narrower than a handler type that says `string` where it means an enum. */
type Fits<A, B> = [A] extends [B] ? true : false;
type Out<T extends z.ZodType> = z.output<T>;

// Each line fails `npm run typecheck` when a schema and the type a handler returns drift apart.
const typesAgree: true[] = [
  true satisfies Same<Out<typeof jsonShapes.grantView>, GrantView>,
  true satisfies Same<Out<typeof jsonShapes.localGrant>, LocalGrant & { wrapperAlive: boolean }>,
  true satisfies Same<Out<typeof jsonShapes.revocationReceipt>, RevocationReceipt>,
  // AuditRecord says `outcome: string`; docs/audit.md lists the five there are.
  true satisfies Fits<Out<typeof jsonShapes.auditRecord>, AuditRecord>,
  true satisfies Same<Out<typeof jsonShapes.tokenView>, TokenView>,
  true satisfies Same<Out<typeof jsonShapes.tokenCreate>, CreatedToken>,
  true satisfies Same<Out<typeof jsonShapes.tokenRevoke>, TokenRevocation>,
  true satisfies Same<Out<typeof jsonShapes.verifyReport>, VerifyReport>,
  true satisfies Same<Out<typeof jsonShapes.decision>, Decision>,
  true satisfies Same<Out<typeof jsonShapes.checkConfig>, ConfigSummary & { valid: true }>,
  true satisfies Fits<Out<typeof jsonShapes.doctor>['checks'][number], Check>,
  true satisfies Same<Out<typeof jsonShapes.whoami>['auth'], GrantAuth>,
  true satisfies Fits<Out<typeof jsonShapes.grantsWatchRemote>, WatchChange>,
  true satisfies Fits<Out<typeof jsonShapes.grantsWatch>, WatchChange>,
];

const GRANT: GrantView = {
  id: 'g_0123456789abcdef0123',
  subject: 'user:ana',
  scopes: ['datasets/eval'],
  reason: null,
  state: 'pending',
  createdAt: '2026-11-25T14:35:22.844Z',
  activatedAt: null,
  expiresAt: null,
  ttlSeconds: 3600,
  heartbeatDeadline: null,
  heartbeatIntervalSeconds: 10,
  endedAt: null,
  endReason: null,
  approval: {
    deadline: '2026-11-25T15:35:22.844Z',
    requirements: [{ scopes: ['datasets/eval'], approvers: ['group:data-owners'], count: 2, approvedBy: [] }],
    deniedBy: null,
  },
};

const LOCAL = {
  id: 'g_0e56777fd3775ed6ac44',
  profile: 'default',
  brokerUrl: 'http://127.0.0.1:33787',
  auth: 'profile',
  scopes: ['datasets/train'],
  pid: 6100,
  wrapper: { pid: 6100, host: 'vm', bootId: '8a930f22-1719-486e-bc59-bca7ae6757f8', startTicks: 275934 },
  command: 'sleep 30',
  createdAt: '2026-11-25T12:41:08.661Z',
  expiresAt: '2026-11-25T13:41:08.661Z',
  state: 'active',
  wrapperAlive: true,
};

const RECORD: AuditRecord = {
  seq: 3,
  at: '2026-11-25T17:05:53.120Z',
  action: 'grant.issued',
  actor: 'user:ada',
  subject: 'user:ada',
  grant: 'g_01a213abc1e3e32840fc',
  scope: 'datasets/train',
  outcome: 'ok',
  details: { ttlSeconds: 3600 },
  hash: 'ab'.repeat(32),
};

/** A document each schema takes, and ways of spoiling it that must each be refused. */
const CASES: { name: string; schema: z.ZodType; good: unknown; bad: Record<string, unknown> }[] = [
  {
    name: 'the grant object',
    schema: jsonShapes.grantView,
    good: GRANT,
    bad: {
      'an unknown field': { ...GRANT, credential: 'jitg_secret' },
      'a missing field': { ...GRANT, heartbeatIntervalSeconds: undefined },
      'an unknown state': { ...GRANT, state: 'approved' },
      'a date that is not ISO 8601': { ...GRANT, createdAt: 'yesterday' },
      'a field of an approval requirement too many': {
        ...GRANT,
        approval: { ...GRANT.approval, requirements: [{ scopes: [], approvers: [], count: 1, approvedBy: [], extra: 1 }] },
      },
      'a malformed id': { ...GRANT, id: 'g_1' },
    },
  },
  {
    name: 'jit grants --json',
    schema: jsonShapes.grants,
    good: { grants: [LOCAL, { ...LOCAL, pid: null, wrapper: null, expiresAt: null, approvalDeadline: null, state: 'pending' }] },
    bad: {
      'a broker grant where a local one belongs': { grants: [GRANT] },
      'a local state the index never has': { grants: [{ ...LOCAL, state: 'revoked' }] },
      'no wrapperAlive': { grants: [{ ...LOCAL, wrapperAlive: undefined }] },
      'a list under another name': { items: [LOCAL] },
    },
  },
  {
    name: 'jit grants --watch --json (a line)',
    schema: jsonShapes.grantsWatch,
    good: { at: '2026-11-25T12:41:04.215Z', change: 'added', id: LOCAL.id, state: 'active', timeLeft: '59m', grant: LOCAL },
    bad: {
      'an unknown change': {
        at: '2026-11-25T12:41:04.215Z',
        change: 'updated',
        id: LOCAL.id,
        state: 'active',
        timeLeft: '59m',
        grant: LOCAL,
      },
      'no grant': { at: '2026-11-25T12:41:04.215Z', change: 'added', id: LOCAL.id, state: 'active', timeLeft: '59m' },
    },
  },
  {
    name: 'jit env --json',
    schema: jsonShapes.env,
    good: { JIT_FILES_URL: 'http://127.0.0.1:1/v1/files', JIT_GRANT_ID: GRANT.id, JIT_EXPIRES_AT: '2026-11-25T15:05:22.505Z' },
    bad: {
      'no JIT_GRANT_ID': { JIT_FILES_URL: 'x', JIT_EXPIRES_AT: '2026-11-25T15:05:22.505Z' },
      'an empty expiry': { JIT_GRANT_ID: GRANT.id, JIT_EXPIRES_AT: '' },
      'a value that is not a string': { JIT_GRANT_ID: GRANT.id, JIT_EXPIRES_AT: '2026-11-25T15:05:22.505Z', PGPORT: 5432 },
      'a name a shell cannot export': { JIT_GRANT_ID: GRANT.id, JIT_EXPIRES_AT: '2026-11-25T15:05:22.505Z', 'A-B': 'x' },
    },
  },
  {
    name: 'jit audit --json',
    schema: jsonShapes.auditPage,
    good: {
      records: [RECORD, { ...RECORD, seq: 4, checkpoint: { at: RECORD.at, keyId: '3f41df00abc03b48', signature: 'c2ln' } }],
      next: null,
    },
    bad: {
      'no next': { records: [RECORD] },
      'an outcome audit.md does not list': { records: [{ ...RECORD, outcome: 'allowed' }], next: null },
      'a seq 0': { records: [{ ...RECORD, seq: 0 }], next: 1 },
      'a fractional cursor': { records: [], next: 1.5 },
    },
  },
  {
    name: 'jit revoke --all --yes --json',
    schema: jsonShapes.receipts,
    good: { revoked: [{ id: GRANT.id, state: 'unknown', revokedAt: null, alreadyEnded: true, actions: [] }] },
    bad: {
      'a receipt without actions': { revoked: [{ id: GRANT.id, state: 'revoked', revokedAt: null, alreadyEnded: false }] },
      'a single receipt where a list belongs': { id: GRANT.id, state: 'revoked', revokedAt: null, alreadyEnded: false, actions: [] },
    },
  },
  {
    name: 'jit whoami --json',
    schema: jsonShapes.whoami,
    good: {
      brokerUrl: 'http://127.0.0.1:47311',
      profile: 'default',
      auth: 'env',
      subject: 'user:admin',
      roles: ['admin'],
      tokenId: 'tok_4bdd9aa2788725f569f2',
    },
    bad: {
      'a role there is not': {
        brokerUrl: 'u',
        profile: 'p',
        auth: 'env',
        subject: 's',
        roles: ['root'],
        tokenId: 'tok_4bdd9aa2788725f569f2',
      },
      'the token itself where its id belongs': { brokerUrl: 'u', profile: 'p', auth: 'env', subject: 's', roles: [], tokenId: 'jit_abc' },
    },
  },
  {
    name: 'jit doctor --json',
    schema: jsonShapes.doctor,
    good: {
      checks: [
        { name: 'broker', status: 'pass', detail: 'up' },
        { name: 'keychain', status: 'warn', detail: 'memory', fix: 'x' },
      ],
      ok: true,
    },
    bad: {
      'a status doctor never gives': { checks: [{ name: 'broker', status: 'ok', detail: 'up' }], ok: true },
      'no ok': { checks: [] },
    },
  },
];

describe('the --json schemas refuse what they do not describe', () => {
  for (const { name, schema, good, bad } of CASES) {
    test(name, () => {
      const parsed = schema.safeParse(good);
      assert.ok(parsed.success, `the documented example does not parse: ${parsed.error?.message}`);
      for (const [spoilt, document] of Object.entries(bad)) {
        assert.equal(schema.safeParse(document).success, false, `${name} with ${spoilt} parsed`);
      }
    });
  }

  test('the error document: code, message, exitCode and nothing unknown; grantId only as a grant id', () => {
    const ok = { error: { code: 'approval_pending', message: 'm', hint: 'h', grantId: GRANT.id, exitCode: 9 } };
    assert.ok(errorDocument.safeParse(ok).success);
    assert.ok(errorDocument.safeParse({ error: { code: 'invalid_request', message: 'm', exitCode: 2 } }).success);
    for (const bad of [
      { error: { code: 'x', message: 'm' } },
      { error: { code: 'x', message: 'm', exitCode: 2, stack: 'at ...' } },
      { error: { code: 'x', message: 'm', exitCode: 2 }, ok: false },
      { error: { code: 'x', message: 'm', exitCode: 2, grantId: 'nope' } },
      { code: 'x', message: 'm', exitCode: 2 },
    ]) {
      assert.equal(errorDocument.safeParse(bad).success, false, JSON.stringify(bad));
    }
  });

  test('every object of every documented output is strict: a field jit adds fails until the schema has it', () => {
    // The objects meant to be open: the variables of `jit env`, and an audit record's details.
    const open = new Set(['jit env --json', 'AuditRecord.details']);
    const loose: string[] = [];
    const walk = (node: unknown, where: string): void => {
      if (Array.isArray(node)) {
        for (const child of node) walk(child, where);
        return;
      }
      if (typeof node !== 'object' || node === null) return;
      const schema = node as Record<string, unknown>;
      if (schema.type === 'object' && schema.additionalProperties !== false && !open.has(where)) loose.push(where);
      for (const [key, child] of Object.entries(schema)) {
        if (key === 'properties') for (const [name, property] of Object.entries(child as object)) walk(property, `${where}.${name}`);
        else if (key === '$defs') for (const [name, definition] of Object.entries(child as object)) walk(definition, name);
        else walk(child, where);
      }
    };
    for (const outputs of Object.values(JSON_OUTPUTS)) for (const output of outputs) walk(toJsonSchema(output.schema), output.invocation);
    walk(toJsonSchema(errorDocument), 'error');
    assert.deepEqual(loose, []);
  });
});

test('the CLI never loads the schemas, nor zod, at run time: only docs generation and tests do', async () => {
  const dir = path.join(ROOT, 'src', 'cli');
  const files = (await readdir(dir, { recursive: true })).filter((file) => file.endsWith('.ts') && file !== 'shapes.ts');
  for (const file of files) {
    const text = await readFile(path.join(dir, file), 'utf8');
    const loads = [...text.matchAll(/^\s*import\s+(?!type\b)[^;]*?from\s+'([^']+)'|import\(\s*'([^']+)'\s*\)/gm)].map(
      (match) => match[1] ?? match[2] ?? '',
    );
    for (const target of loads) {
      assert.ok(!/shapes\.ts$/.test(target) && target !== 'zod', `src/cli/${file} loads ${target} at run time; use \`import type\``);
    }
  }
  assert.ok(typesAgree.length > 0);
});

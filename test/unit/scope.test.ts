import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { closestName, formatScope, globMatches, parseScope, scopeCovers } from '../../src/core/scope.ts';

describe('parseScope', () => {
  it('reads resource, path and action, with read as the default action', () => {
    assert.deepEqual(parseScope('datasets'), { resource: 'datasets', path: '', action: 'read' });
    assert.deepEqual(parseScope('datasets/train'), { resource: 'datasets', path: 'train', action: 'read' });
    assert.deepEqual(parseScope('datasets/train/shard-0001.jsonl'), {
      resource: 'datasets',
      path: 'train/shard-0001.jsonl',
      action: 'read',
    });
    assert.deepEqual(parseScope('checkpoints/run-42:write'), { resource: 'checkpoints', path: 'run-42', action: 'write' });
    assert.deepEqual(parseScope('warehouse/public.customers:select'), {
      resource: 'warehouse',
      path: 'public.customers',
      action: 'select',
    });
    assert.deepEqual(parseScope('apis/embeddings:POST /v1/embeddings'), {
      resource: 'apis',
      path: 'embeddings',
      action: 'POST /v1/embeddings',
    });
  });

  it('reads a column list after a table, and formats it back', () => {
    assert.deepEqual(parseScope('warehouse/public.customers(id,email):select'), {
      resource: 'warehouse',
      path: 'public.customers',
      action: 'select',
      columns: ['id', 'email'],
    });
    assert.equal(formatScope(parseScope('warehouse/public.customers(id,email):select')), 'warehouse/public.customers(id,email):select');
    const refused: [string, RegExp][] = [
      ['warehouse(id):select', /a column list follows a table/],
      ['warehouse/public.customers():select', /the column list has an empty name/],
      ['warehouse/public.customers(id,id):select', /names a column twice/],
      ['warehouse/public.customers(e mail):select', /"e mail" is not a column name/],
      ['warehouse/public.customers(id;drop):select', /is not a column name/],
    ];
    for (const [text, reason] of refused) assert.throws(() => parseScope(text), reason, text);
  });

  it('formats back to the shortest form', () => {
    for (const text of ['datasets', 'datasets/train', 'checkpoints/run-42:write']) assert.equal(formatScope(parseScope(text)), text);
    assert.equal(formatScope(parseScope('datasets/train:read')), 'datasets/train');
  });

  const rejected: [string, RegExp, RegExp][] = [
    ['', /it is empty/, /a scope looks like/],
    ['/datasets/train', /not a resource name/, /did you mean "datasets\/train"/],
    ['datasets/train/', /empty path segment/, /did you mean "datasets\/train"/],
    ['datasets//train', /empty path segment/, /did you mean "datasets\/train"/],
    ['Datasets/train', /not a resource name/, /did you mean "datasets\/train"/],
    ['datasets\\train', /not a resource name/, /did you mean "datasets\/train"/],
    ['datasets/../eval', /"\." and "\.\." are not allowed/, /did you mean "datasets\/eval"/],
    ['datasets/tr ain', /path segment "tr ain"/, /a scope looks like/],
    ['datasets/train:', /action after ":" is empty/, /did you mean "datasets\/train"/],
  ];
  for (const [text, problem, hint] of rejected) {
    it(`rejects ${JSON.stringify(text)} with the reason and the nearest valid form`, () => {
      assert.throws(
        () => parseScope(text),
        (error: Error & { hint?: string; exitCode?: number }) => {
          assert.match(error.message, problem);
          assert.match(error.hint ?? '', hint);
          assert.equal(error.exitCode, 2);
          return true;
        },
      );
    });
  }
});

describe('globMatches', () => {
  it('treats ** as any number of segments, zero included', () => {
    assert.ok(globMatches('datasets/**', 'datasets'));
    assert.ok(globMatches('datasets/**', 'datasets/train'));
    assert.ok(globMatches('datasets/**', 'datasets/train/shard-1.jsonl'));
    assert.ok(!globMatches('datasets/**', 'checkpoints/train'));
    assert.ok(globMatches('datasets/**/x.jsonl', 'datasets/a/b/x.jsonl'));
  });

  it('keeps * inside one segment', () => {
    assert.ok(globMatches('datasets/*', 'datasets/train'));
    assert.ok(!globMatches('datasets/*', 'datasets/train/shard-1.jsonl'));
    assert.ok(globMatches('datasets/train/*.jsonl', 'datasets/train/shard-1.jsonl'));
    assert.ok(!globMatches('datasets/train/*.jsonl', 'datasets/train/shard-1.csv'));
    assert.ok(!globMatches('datasets/tr.in', 'datasets/train'), 'a dot is literal, not a regex wildcard');
  });
});

describe('scopeCovers', () => {
  it('covers the path itself and what lies under it, never a sibling sharing a prefix', () => {
    const train = parseScope('datasets/train');
    assert.ok(scopeCovers(train, 'train'));
    assert.ok(scopeCovers(train, 'train/shard-0.jsonl'));
    assert.ok(!scopeCovers(train, 'training-secrets/x'));
    assert.ok(!scopeCovers(train, 'eval/x'));
    assert.ok(!scopeCovers(train, ''));
    assert.ok(scopeCovers(parseScope('datasets'), 'anything/at/all'));
  });
});

describe('closestName', () => {
  it('suggests a near name and nothing for a far one', () => {
    assert.equal(closestName('dataset', ['datasets', 'checkpoints']), 'datasets');
    assert.equal(closestName('chekpoints', ['datasets', 'checkpoints']), 'checkpoints');
    assert.equal(closestName('warehouse', ['datasets', 'checkpoints']), undefined);
  });
});

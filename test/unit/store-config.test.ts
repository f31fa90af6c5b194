import assert from 'node:assert/strict';
import path from 'node:path';
import { describe, it } from 'node:test';
import { initialConfigYaml, parseBrokerConfig } from '../../src/broker/config.ts';

const FILE = '/srv/jit/broker.yaml';
const parse = (store: string) => parseBrokerConfig(`${initialConfigYaml('user:admin')}\n${store}`, FILE);
const refusal = (store: string) => {
  try {
    parse(store);
  } catch (error) {
    return (error as Error).message;
  }
  assert.fail('the config was accepted');
};

describe('broker.yaml store:', () => {
  it('defaults to broker.db next to broker.yaml, and resolves a relative file from there', () => {
    assert.deepEqual(parse('').store, { engine: 'sqlite', file: path.join('/srv/jit', 'broker.db') });
    assert.deepEqual(parse('store:\n  engine: sqlite\n  file: state/jit.db\n').store, { engine: 'sqlite', file: '/srv/jit/state/jit.db' });
  });

  it('takes a PostgreSQL URL from a named variable or, without a password, inline', () => {
    assert.deepEqual(parse('store:\n  engine: postgres\n  urlEnv: JIT_BROKER_DATABASE_URL\n').store, {
      engine: 'postgres',
      url: undefined,
      urlEnv: 'JIT_BROKER_DATABASE_URL',
    });
    assert.deepEqual(parse('store:\n  engine: postgres\n  url: postgres://jit@db.internal:5432/jit\n').store, {
      engine: 'postgres',
      url: 'postgres://jit@db.internal:5432/jit',
      urlEnv: undefined,
    });
  });

  it('refuses what it cannot use, naming the line and key', () => {
    assert.match(refusal('store:\n  engine: mysql\n'), /broker\.yaml:\d+: store\.engine: engine is sqlite or postgres/);
    assert.match(refusal('store:\n  engine: postgres\n'), /store\.urlEnv: a postgres store needs exactly one of urlEnv and url/);
    assert.match(
      refusal('store:\n  engine: postgres\n  url: postgres://a@h/d\n  urlEnv: DB_URL\n'),
      /store\.urlEnv: a postgres store needs exactly one of urlEnv and url/,
    );
    assert.match(refusal('store:\n  engine: postgres\n  url: mysql://h/d\n'), /store\.url: a PostgreSQL URL starts with postgres:\/\//);
    assert.match(
      refusal('store:\n  engine: postgres\n  urlEnv: not a name\n'),
      /store\.urlEnv: urlEnv is the name of an environment variable/,
    );
    assert.match(refusal('store:\n  engine: sqlite\n  url: postgres://h/d\n'), /store/);
  });
});

import path from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import type { TestBroker } from './broker.ts';
import { queryDatabase } from './postgres.ts';

/** Runs SQL on a test broker's store behind its back (SQLite file or PostgreSQL database), as someone with database access would. */
export async function runOnStore(broker: TestBroker, sql: string): Promise<void> {
  if (broker.database) {
    await queryDatabase(broker.database.url, sql);
    return;
  }
  const db = new DatabaseSync(path.join(broker.dir, 'broker.db'));
  try {
    db.exec(sql);
  } finally {
    db.close();
  }
}

/**
 * Makes the broker's store refuse to insert audit records of `types` (a trigger), as a store that
 * is down or full would; the returned function lifts it.
 */
export async function refuseAuditRecords(broker: TestBroker, types: string[]): Promise<() => Promise<void>> {
  const list = types.map((type) => `'${type}'`).join(', ');
  await runOnStore(
    broker,
    broker.database
      ? `CREATE FUNCTION no_audit() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'audit unavailable'; END $$ LANGUAGE plpgsql;
         CREATE TRIGGER no_audit BEFORE INSERT ON events FOR EACH ROW WHEN (NEW.type IN (${list})) EXECUTE FUNCTION no_audit();`
      : `CREATE TRIGGER no_audit BEFORE INSERT ON events WHEN NEW.type IN (${list}) BEGIN SELECT RAISE(ABORT, 'audit unavailable'); END;`,
  );
  return () =>
    runOnStore(broker, broker.database ? 'DROP TRIGGER no_audit ON events; DROP FUNCTION no_audit();' : 'DROP TRIGGER no_audit;');
}

import type { KeyObject } from 'node:crypto';
import type { ChainProblem, VerifyReport } from '../../core/audit.ts';
import type { BrokerStore } from '../store/store.ts';
import { type ChainFields, type Checkpoint, checkpointSigned, GENESIS, recordHash } from './chain.ts';

export type { ChainProblem, VerifyReport };

/**
 * Walks a chain record by record: each must follow the previous position, hash to its stored
 * hash from the previous one, and agree with any checkpoint at its position, whose signature must
 * come from a trusted key. The first failure stops the walk.
 */
export class ChainVerifier {
  readonly #checkpoints: Map<number, Checkpoint>;
  readonly #lastCheckpoint: Checkpoint | undefined;
  readonly #trusted: Map<string, KeyObject>;
  #previous = GENESIS;
  #position = 0;
  #reached: Checkpoint | undefined;
  problem: ChainProblem | null = null;

  /**
   * `start`: verify from the record after this one, taking its hash as given (a copy that begins
   * mid-chain); by default from record 1.
   */
  constructor(checkpoints: readonly Checkpoint[], trusted: Map<string, KeyObject>, start?: { position: number; hash: string }) {
    if (start) {
      this.#position = start.position;
      this.#previous = start.hash;
    }
    this.#checkpoints = new Map(checkpoints.map((checkpoint) => [checkpoint.position, checkpoint]));
    this.#lastCheckpoint = checkpoints.at(-1);
    this.#trusted = trusted;
  }

  /** Checks the next record; false (and `problem` set) when it does not verify. */
  add(fields: ChainFields, hash: string): boolean {
    if (this.problem) return false;
    const expected = this.#position + 1;
    if (fields.position !== expected) {
      return this.#fail(
        fields.position > expected ? 'missing' : 'out-of-order',
        expected,
        fields.position > expected
          ? `record ${expected}${fields.position - 1 > expected ? `-${fields.position - 1}` : ''} is missing (deleted): the chain goes from ${expected - 1} to ${fields.position}`
          : `record ${fields.position} appears after record ${expected - 1} (reordered or duplicated)`,
      );
    }
    if (recordHash(this.#previous, fields) !== hash) {
      return this.#fail('altered', expected, `record ${expected} does not match its hash: it was edited, or a record before it was`);
    }
    const checkpoint = this.#checkpoints.get(expected);
    if (checkpoint) {
      if (checkpoint.hash !== hash) {
        return this.#fail(
          'rewritten',
          expected,
          `record ${expected} disagrees with signed checkpoint ${expected}: the chain up to it was rewritten`,
        );
      }
      const key = this.#trusted.get(checkpoint.keyId);
      if (!key) {
        return this.#fail('untrusted-key', expected, `checkpoint ${expected} is signed by key ${checkpoint.keyId}, which is not trusted`);
      }
      if (!checkpointSigned(checkpoint, key)) {
        return this.#fail('bad-signature', expected, `checkpoint ${expected}'s signature does not verify: it was forged or edited`);
      }
      this.#reached = checkpoint;
    }
    this.#previous = hash;
    this.#position = expected;
    return true;
  }

  #fail(kind: ChainProblem['kind'], position: number, message: string): false {
    this.problem = { kind, position, message };
    return false;
  }

  /** The report once every record was added; a checkpoint past the last record means truncation. */
  finish(unsealed: number, elapsedMs: number): VerifyReport {
    const last = this.#lastCheckpoint;
    if (!this.problem && last && last.position > this.#position) {
      this.#fail(
        'truncated',
        last.position,
        `the chain ends at record ${this.#position}, but checkpoint ${last.position} was signed: records ${this.#position + 1}-${last.position} were deleted`,
      );
    }
    const reached = this.#reached;
    return {
      ok: this.problem === null,
      records: this.#position,
      checkpoint: reached
        ? { position: reached.position, at: new Date(reached.at).toISOString(), keyId: reached.keyId, hash: reached.hash }
        : null,
      head: this.#position === 0 ? null : { position: this.#position, hash: this.#previous },
      problem: this.problem,
      unsealed,
      elapsedMs,
    };
  }
}

const PAGE = 5000;

/** Verifies the whole sealed chain in `store`, page by page. */
export async function verifyStore(store: BrokerStore, trusted: Map<string, KeyObject>): Promise<VerifyReport> {
  const started = performance.now();
  const verifier = new ChainVerifier(await store.listCheckpoints(), trusted);
  // Read by position > the last one read: a record missing in the middle shows as a jump, not a stop.
  let next = store.readChain(0, PAGE);
  for (;;) {
    const rows = await next;
    const last = rows.at(-1)?.position;
    // The next page is read while this one is hashed, so the database and the hashing overlap.
    next = rows.length === PAGE && last !== undefined ? store.readChain(last, PAGE) : Promise.resolve([]);
    for (const row of rows) if (!verifier.add(row, row.hash)) break;
    if (verifier.problem || rows.length < PAGE) break;
  }
  // A page read ahead of a problem is not needed; its failure is not the verification's.
  next.catch(() => undefined);
  const { count } = await store.unsealed();
  return verifier.finish(count, performance.now() - started);
}

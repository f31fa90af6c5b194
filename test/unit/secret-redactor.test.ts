import assert from 'node:assert/strict';
import { Readable } from 'node:stream';
import { describe, it } from 'node:test';
import { SecretRedactor } from '../../src/broker/providers/http/proxy.ts';

const SECRET = 'sk-abcdef123456';

async function through(chunks: string[]): Promise<{ text: string; pieces: string[] }> {
  const pieces: string[] = [];
  for await (const piece of Readable.from(chunks.map((chunk) => Buffer.from(chunk))).pipe(new SecretRedactor(SECRET))) {
    pieces.push(String(piece));
  }
  return { text: pieces.join(''), pieces };
}

describe('SecretRedactor', () => {
  it('blanks the secret with as many stars, so the length stays the same', async () => {
    const { text } = await through([`before ${SECRET} middle ${SECRET}after`]);
    assert.equal(text, `before ${'*'.repeat(SECRET.length)} middle ${'*'.repeat(SECRET.length)}after`);
  });

  it('catches a secret split across chunks, wherever the split falls', async () => {
    for (let split = 1; split < SECRET.length; split++) {
      const { text } = await through([`x ${SECRET.slice(0, split)}`, `${SECRET.slice(split)} y`]);
      assert.equal(text, `x ${'*'.repeat(SECRET.length)} y`, `split at ${split}`);
    }
    const { text } = await through([...`a${SECRET}b`].map((char) => char));
    assert.equal(text, `a${'*'.repeat(SECRET.length)}b`, 'one byte at a time');
  });

  it('holds nothing back from a chunk that cannot be the start of the secret (streamed events stay prompt)', async () => {
    const redactor = new SecretRedactor(SECRET);
    const next = () => new Promise<string>((resolve) => redactor.once('data', (chunk: Buffer) => resolve(String(chunk))));
    const first = next();
    redactor.write(Buffer.from('data: {"token":1}\n\n'));
    assert.equal(await first, 'data: {"token":1}\n\n', 'out before the next chunk exists');
    const second = next();
    redactor.write(Buffer.from('data: {"token":2}\n\n'));
    assert.equal(await second, 'data: {"token":2}\n\n');
    redactor.end();
  });

  it('gives back a held tail that turned out not to be the secret', async () => {
    const { text } = await through(['ends with sk-ab', 'xyz']);
    assert.equal(text, 'ends with sk-abxyz');
  });
});

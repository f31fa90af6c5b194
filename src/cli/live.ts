import { stripVTControlCharacters } from 'node:util';

/** A terminal stream as far as a redraw needs it. */
export type TerminalStream = NodeJS.WritableStream & { columns?: number; rows?: number };

const HIDE_CURSOR = '\x1b[?25l';
const SHOW_CURSOR = '\x1b[?25h';
/** Cursor to the start of the line `n` lines up (CPL), then clear to the end of the screen (ED). */
const up = (lines: number) => (lines > 0 ? `\x1b[${lines}F\x1b[J` : '\r\x1b[J');

/**
 * A block of a terminal's output redrawn in place, like `watch` and `kubectl get -w` do: each
 * frame moves the cursor back over the lines the previous one took and clears them before
 * printing. The cursor is hidden while it runs; `close` shows it again and leaves the last frame.
 */
export class Redraw {
  readonly #stream: TerminalStream;
  #lines = 0;
  #started = false;

  constructor(stream: TerminalStream) {
    this.#stream = stream;
  }

  frame(text: string): void {
    const rows = this.#stream.rows || 24;
    const columns = this.#stream.columns || 80;
    // A frame taller than the screen could not be moved back over: keep its first rows - 1 lines.
    const lines = text
      .replace(/\n$/, '')
      .split('\n')
      .slice(0, Math.max(1, rows - 1));
    const prefix = this.#started ? up(this.#lines) : HIDE_CURSOR;
    this.#started = true;
    this.#stream.write(`${prefix}${lines.join('\n')}\n`);
    // A line wider than the terminal wraps onto more rows; an empty one still takes one.
    this.#lines = lines.reduce((total, line) => total + Math.max(1, Math.ceil(stripVTControlCharacters(line).length / columns)), 0);
  }

  close(): void {
    if (this.#started) this.#stream.write(SHOW_CURSOR);
  }
}

import { Chalk, type ChalkInstance } from 'chalk';
import type { Ora } from 'ora';
import type { JitError } from '../core/errors.ts';
import { Redraw, type TerminalStream } from './live.ts';

export type Spinner = { text(text: string): void; succeed(text: string): void; fail(text: string): void; stop(): void };

/** A wait shorter than this shows no spinner at all. */
const SPINNER_DELAY_MS = 150;

const silentSpinner: Spinner = { text() {}, succeed() {}, fail() {}, stop() {} };

/**
 * Everything jit itself prints goes through here: results on stdout (human text or one JSON
 * document with --json), progress, warnings and errors on stderr. `--json` means no colour, no
 * spinner, no prompt.
 */
export class Output {
  readonly json: boolean;
  readonly verbose: boolean;
  /** -q: only results, warnings and errors; no notices, no spinners. */
  readonly quiet: boolean;
  readonly color: ChalkInstance;
  /** --no-color or NO_COLOR: plain output, so no colours and no spinner either. */
  readonly #plain: boolean;
  readonly #stdout: TerminalStream & { isTTY?: boolean };
  readonly #stderr: NodeJS.WritableStream & { isTTY?: boolean };

  constructor(options: {
    json: boolean;
    verbose: boolean;
    quiet?: boolean;
    /** false: --no-color. */
    color?: boolean;
    stdout?: TerminalStream & { isTTY?: boolean };
    stderr?: NodeJS.WritableStream & { isTTY?: boolean };
  }) {
    this.json = options.json;
    this.verbose = options.verbose && !options.quiet;
    this.quiet = Boolean(options.quiet);
    this.#stdout = options.stdout ?? process.stdout;
    this.#stderr = options.stderr ?? process.stderr;
    this.#plain = options.color === false || Boolean(process.env.NO_COLOR);
    const colorful = !this.json && !this.#plain && Boolean(this.#stderr.isTTY);
    this.color = new Chalk({ level: colorful ? 1 : 0 });
  }

  /** The command's result: JSON when asked for, else the human rendering; nothing when it has none (jit run). */
  result(data: unknown, human: string | undefined): void {
    if (this.json) {
      if (data !== undefined) this.#stdout.write(`${JSON.stringify(data, null, 2)}\n`);
    } else if (human !== undefined && human !== '') this.#stdout.write(human.endsWith('\n') ? human : `${human}\n`);
  }

  /** Whether stdout is a terminal and the output is for a person: where a live view redraws in place. */
  get liveTerminal(): boolean {
    return !this.json && Boolean(this.#stdout.isTTY);
  }

  /** A block of stdout redrawn in place (jit grants --watch); for a live terminal only. */
  redraw(): Redraw {
    return new Redraw(this.#stdout);
  }

  /** One JSON document on one line of stdout: a stream's item (NDJSON). */
  line(data: unknown): void {
    this.#stdout.write(`${JSON.stringify(data)}\n`);
  }

  /** Resolves when stdout can take no more (its reader went away: `jit grants --watch | head -1`), so a stream can stop. */
  stdoutClosed(): Promise<void> {
    return new Promise((resolve) => this.#stdout.once('error', () => resolve()));
  }

  /** Progress worth seeing only with -v. */
  info(message: string): void {
    if (this.verbose) this.#stderr.write(`${this.color.dim('jit:')} ${message}\n`);
  }

  /** Something the user should see even without -v (who can approve, say), in one line on stderr. */
  notice(message: string): void {
    if (this.quiet) return;
    this.#stderr.write(`${this.color.dim('jit:')} ${message}\n`);
  }

  /** Whether a person is at this terminal to answer a prompt (stdin and stderr are terminals, no --json). */
  get interactive(): boolean {
    return !this.json && Boolean(process.stdin.isTTY) && Boolean(this.#stderr.isTTY);
  }

  /** Something the user must know even without -v, in one line. */
  warn(message: string): void {
    this.#stderr.write(`${this.color.yellow('jit: warning:')} ${message}\n`);
  }

  error(error: JitError): void {
    if (this.json) {
      this.#stdout.write(`${JSON.stringify({ error: { ...error.toJSON(), exitCode: error.exitCode } }, null, 2)}\n`);
      return;
    }
    const hint = error.hint ? `; ${error.hint}` : '';
    this.#stderr.write(`${this.color.red('jit: error:')} ${error.message}${hint}\n`);
  }

  unexpected(error: unknown): void {
    const detail = error instanceof Error ? (this.verbose ? (error.stack ?? error.message) : error.message) : String(error);
    this.#stderr.write(
      `${this.color.red('jit: unexpected error:')} ${detail}; this is a bug in jit, please report it${this.verbose ? '' : ' (run with -v for details)'}\n`,
    );
  }

  /** Awaits `work` (a call to the broker, say) with a spinner saying `text` while it lasts; see spinner. */
  async during<T>(text: string, work: () => Promise<T>): Promise<T> {
    const spinner = this.spinner(text);
    try {
      return await work();
    } finally {
      spinner.stop();
    }
  }

  /** A spinner on stderr when it is a terminal and the output is for a person (not --json, -q, --no-color or NO_COLOR); silent otherwise. */
  spinner(text: string): Spinner {
    // A terminal that reports no width (`script` without a terminal of its own) sends ora 9 into
    // an endless redraw loop, so such terminals get no spinner.
    const columns = (this.#stderr as { columns?: number }).columns;
    if (this.json || this.quiet || this.#plain || !this.#stderr.isTTY || !columns) return silentSpinner;
    // ora loads in the background, after a moment: a quick answer finishes before any spinner
    // shows (no flicker), and commands that never spin never pay for it.
    let spinner: Ora | undefined;
    let finished = false;
    let label = text;
    const show = setTimeout(() => {
      void import('ora').then(({ default: ora }) => {
        if (!finished) spinner = ora({ text: label, stream: this.#stderr, discardStdin: false }).start();
      });
    }, SPINNER_DELAY_MS);
    show.unref();
    const finish = (end: (current: Ora) => void) => {
      finished = true;
      clearTimeout(show);
      if (spinner) end(spinner);
    };
    return {
      text: (message) => {
        label = message;
        if (spinner) spinner.text = message;
      },
      succeed: (message) => finish((current) => (this.verbose ? current.succeed(message) : current.stop())),
      fail: (message) => finish((current) => current.fail(message)),
      stop: () => finish((current) => current.stop()),
    };
  }
}

import { readFileSync } from 'node:fs';
import { constants } from 'node:os';

/** Signals jit relays to its child (SIGBREAK exists only on Windows); SIGQUIT so Ctrl-\\ cannot skip cleanup. */
export const RELAYED_SIGNALS: NodeJS.Signals[] =
  process.platform === 'win32' ? ['SIGINT', 'SIGTERM', 'SIGBREAK'] : ['SIGINT', 'SIGTERM', 'SIGHUP', 'SIGQUIT'];

/** Signals a terminal sends to the whole foreground process group by itself (Ctrl-C, Ctrl-\, hang-up). */
const GROUP_SIGNALS = new Set<NodeJS.Signals>(['SIGINT', 'SIGQUIT', 'SIGHUP']);

export function signalNumber(signal: NodeJS.Signals): number {
  return constants.signals[signal] ?? 0;
}

/** The exit status a shell reports for a process killed by `signal`: 128 + its number. */
export function exitCodeForSignal(signal: NodeJS.Signals): number {
  return 128 + signalNumber(signal);
}

/**
 * Whether this process sits in the foreground process group of a terminal, so that a Ctrl-C (or
 * a hang-up) already reached the child, which shares our group: relaying it would deliver it
 * twice. Linux tells exactly through /proc (pgrp vs. the terminal's foreground pgrp); elsewhere a
 * TTY on stdin is the best guess.
 */
export function inForegroundOfTerminal(): boolean {
  try {
    const stat = readFileSync('/proc/self/stat', 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const processGroup = Number(fields[2]);
    const terminalForegroundGroup = Number(fields[5]);
    return terminalForegroundGroup > 0 && terminalForegroundGroup === processGroup;
  } catch {
    return Boolean(process.stdin.isTTY);
  }
}

/** Whether jit should pass `signal` on to a child in its own process group. */
export function shouldRelay(signal: NodeJS.Signals, foreground: boolean): boolean {
  return !(foreground && GROUP_SIGNALS.has(signal));
}

import { UsageError } from './errors.ts';

const UNIT_SECONDS = { d: 86_400, h: 3_600, m: 60, s: 1 } as const;
const DURATION = /^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$/;

/**
 * Parses a duration such as `30m`, `2h`, `1h30m`, `90s` or `1d` into seconds. Bare numbers are
 * refused: `--ttl 30` could mean seconds or minutes, and a guess would grant the wrong window.
 */
export function parseDuration(text: string, what = 'duration'): number {
  const trimmed = text.trim().toLowerCase();
  const match = DURATION.exec(trimmed);
  if (trimmed === '' || !match) {
    const hint = /^\d+$/.test(trimmed)
      ? `add a unit, e.g. ${trimmed}m or ${trimmed}s`
      : 'use a number with a unit: 90s, 30m, 2h, 1h30m, 1d';
    throw new UsageError(`invalid ${what} "${text}"`, { hint, code: 'invalid_duration' });
  }
  const [, days, hours, minutes, seconds] = match;
  const total =
    Number(days ?? 0) * UNIT_SECONDS.d + Number(hours ?? 0) * UNIT_SECONDS.h + Number(minutes ?? 0) * UNIT_SECONDS.m + Number(seconds ?? 0);
  if (total <= 0) throw new UsageError(`${what} "${text}" must be longer than zero`, { hint: 'e.g. 30m', code: 'invalid_duration' });
  return total;
}

/** The shortest exact form: 5400 -> "1h30m". */
export function formatDuration(totalSeconds: number): string {
  let rest = Math.max(0, Math.round(totalSeconds));
  if (rest === 0) return '0s';
  let text = '';
  for (const [unit, size] of Object.entries(UNIT_SECONDS)) {
    const count = Math.floor(rest / size);
    if (count > 0) text += `${count}${unit}`;
    rest -= count * size;
  }
  return text;
}

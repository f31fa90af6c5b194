/**
 * Text from someone else (a requester's reason, an object key, a claim) shown on a person's
 * terminal, with control characters made visible: `\x1b` and friends could otherwise move the
 * cursor, erase lines or forge coloured output in `jit watch`, `jit audit` and the review lists.
 * C0 and C1 controls and DEL become `\u001b`-style escapes; everything else is kept.
 */
export function printable(text: string): string {
  // biome-ignore lint/suspicious/noControlCharactersInRegex: matching control characters is the point
  return text.replace(/[\u0000-\u001f\u007f-\u009f]/g, (char) => `\\u${char.charCodeAt(0).toString(16).padStart(4, '0')}`);
}

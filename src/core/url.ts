/** A broker URL in the one form jit stores and compares: without trailing slashes. */
export function canonicalUrl(url: string): string {
  return url.replace(/\/+$/, '');
}

export function sameUrl(a: string, b: string): boolean {
  return canonicalUrl(a) === canonicalUrl(b);
}

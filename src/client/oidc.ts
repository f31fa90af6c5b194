import { readFile } from 'node:fs/promises';
import { AuthError, UsageError } from '../core/errors.ts';

/**
 * Where a CI job's OIDC identity token comes from (docs/ci.md#oidc), in this order:
 *   JIT_OIDC_TOKEN        the token itself (GitLab CI `id_tokens:`, any CI that puts one in a variable)
 *   JIT_OIDC_TOKEN_FILE   a file holding it (Kubernetes projected tokens, CircleCI, ...)
 *   GitHub Actions        requested from ACTIONS_ID_TOKEN_REQUEST_URL with ACTIONS_ID_TOKEN_REQUEST_TOKEN
 *                         (the job needs `permissions: id-token: write`), for the broker's audience
 * JIT_OIDC=off turns all of them off.
 */
export type OidcSource = 'JIT_OIDC_TOKEN' | 'JIT_OIDC_TOKEN_FILE' | 'github-actions';

export function oidcSource(env: NodeJS.ProcessEnv): OidcSource | undefined {
  if (env.JIT_OIDC === 'off' || env.JIT_OIDC === '0') return undefined;
  if (env.JIT_OIDC_TOKEN) return 'JIT_OIDC_TOKEN';
  if (env.JIT_OIDC_TOKEN_FILE) return 'JIT_OIDC_TOKEN_FILE';
  if (env.ACTIONS_ID_TOKEN_REQUEST_URL && env.ACTIONS_ID_TOKEN_REQUEST_TOKEN) return 'github-actions';
  return undefined;
}

/** How the CLI names a source in messages. */
export function describeSource(source: OidcSource): string {
  return source === 'github-actions' ? 'GitHub Actions' : source;
}

/** The audience to ask GitHub for: JIT_OIDC_AUDIENCE, else the broker's URL (what the broker's `audience` usually is). */
export function oidcAudience(env: NodeJS.ProcessEnv, brokerUrl: string): string {
  return env.JIT_OIDC_AUDIENCE || brokerUrl;
}

/** Reads or requests the job's identity token. It is a secret: never in a message, an argument or a file of ours. */
export async function ciIdentityToken(env: NodeJS.ProcessEnv, source: OidcSource, audience: string): Promise<string> {
  if (source === 'JIT_OIDC_TOKEN') return (env.JIT_OIDC_TOKEN ?? '').trim();
  if (source === 'JIT_OIDC_TOKEN_FILE') {
    const file = env.JIT_OIDC_TOKEN_FILE ?? '';
    const token = await readFile(file, 'utf8').then(
      (text) => text.trim(),
      (error: NodeJS.ErrnoException) => {
        throw new UsageError(`cannot read JIT_OIDC_TOKEN_FILE ${file} (${error.code ?? error.message})`, {
          hint: "point it at the file the CI system writes the job's OIDC token to",
        });
      },
    );
    if (!token) throw new UsageError(`JIT_OIDC_TOKEN_FILE ${file} is empty`, { hint: "point it at the file holding the job's OIDC token" });
    return token;
  }
  return requestGitHubToken(env, audience);
}

/**
 * GitHub Actions' ID token request: GET the URL with `&audience=`, bearer the request token, and
 * the answer is `{ "value": "<jwt>" }`
 * (https://docs.github.com/en/actions/security-for-github-actions/security-hardening-your-deployments/about-security-hardening-with-openid-connect).
 */
async function requestGitHubToken(env: NodeJS.ProcessEnv, audience: string): Promise<string> {
  const url = new URL(env.ACTIONS_ID_TOKEN_REQUEST_URL ?? '');
  url.searchParams.set('audience', audience);
  let response: Response;
  try {
    response = await fetch(url, {
      headers: { authorization: `bearer ${env.ACTIONS_ID_TOKEN_REQUEST_TOKEN}`, accept: 'application/json' },
      signal: AbortSignal.timeout(10_000),
    });
  } catch (error) {
    throw new AuthError(`cannot reach GitHub's OIDC token endpoint at ${url.host} (${(error as Error).message})`, {
      code: 'oidc_unavailable',
      hint: 'retry the job; or set JIT_TOKEN, or JIT_OIDC=off to use an API token instead',
    });
  }
  const body = (await response.json().catch(() => undefined)) as { value?: unknown } | undefined;
  if (!response.ok || typeof body?.value !== 'string') {
    throw new AuthError(`GitHub refused the OIDC token request (HTTP ${response.status})`, {
      code: 'oidc_unavailable',
      hint: 'give the job `permissions: id-token: write` (docs/ci.md#github-actions-with-oidc)',
    });
  }
  return body.value;
}

import { randomBytes } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { type CryptoKey, exportJWK, generateKeyPair, type JWK, type JWTPayload, SignJWT } from 'jose';

/**
 * A local OIDC issuer for tests, on a free loopback port: its own RSA keys (made with jose), a
 * discovery document and a JWKS endpoint, like token.actions.githubusercontent.com or gitlab.com.
 * It also serves a FAKE of GitHub Actions' ID token request endpoint (ACTIONS_ID_TOKEN_REQUEST_URL,
 * which only exists inside a GitHub runner): it answers `{ value: <token> }` for the audience asked,
 * to a caller that presents the request token.
 */
export type TestIssuer = {
  /** The issuer URL: the `iss` of its tokens. */
  url: string;
  /** The current signing key's id. */
  kid: string;
  /** The public keys it publishes, as JWKS (for inline `jwks:` configs). */
  jwks(): { keys: JWK[] };
  /** A signed token: GitHub-like default claims, overridden by `claims`. `iat`/`exp` in epoch seconds. */
  sign(claims?: JWTPayload, options?: { kid?: string; key?: CryptoKey; alg?: string; header?: Record<string, unknown> }): Promise<string>;
  /** Makes a new signing key and publishes it alongside the old one (`keep: false`: instead of it); returns its kid. */
  rotate(options?: { publish?: boolean; keep?: boolean }): Promise<string>;
  /** Publishes every key made so far (after `rotate({ publish: false })`). */
  publishAll(): void;
  /** How often the JWKS endpoint was fetched. */
  jwksFetches(): number;
  /** Every request it was sent, whatever it answered (discovery, JWKS, while down). */
  requests(): number;
  /** Down: every request answers 503, as an issuer in an outage does. */
  setDown(down: boolean): void;
  /** The FAKE GitHub token request endpoint: ACTIONS_ID_TOKEN_REQUEST_URL and _TOKEN for a job's environment. */
  github: { requestUrl: string; requestToken: string; audiences: string[] };
  close(): Promise<void>;
};

export const GITHUB_CLAIMS = {
  sub: 'repo:acme/train-pipeline:ref:refs/heads/main',
  repository: 'acme/train-pipeline',
  repository_owner: 'acme',
  ref: 'refs/heads/main',
  ref_type: 'branch',
  ref_protected: 'true',
  workflow: 'train',
  job_workflow_ref: 'acme/train-pipeline/.github/workflows/train.yml@refs/heads/main',
  run_id: '4242',
  actor: 'ana',
  event_name: 'push',
};

type Key = { kid: string; privateKey: CryptoKey; publicJwk: JWK };

async function newKey(): Promise<Key> {
  const { privateKey, publicKey } = await generateKeyPair('RS256', { extractable: true });
  const kid = `k${randomBytes(4).toString('hex')}`;
  return { kid, privateKey, publicJwk: { ...(await exportJWK(publicKey)), kid, alg: 'RS256', use: 'sig' } };
}

export async function startTestIssuer(options: { audience: string; githubClaims?: JWTPayload }): Promise<TestIssuer> {
  const keys: Key[] = [await newKey()];
  let published: Key[] = [...keys];
  let current = keys[0] as Key;
  let fetches = 0;
  let requests = 0;
  let down = false;
  const requestToken = randomBytes(16).toString('hex');
  const audiences: string[] = [];
  let url = '';

  const sign: TestIssuer['sign'] = async (claims = {}, signOptions = {}) => {
    const now = Math.floor(Date.now() / 1000);
    const payload: JWTPayload = { iss: url, aud: options.audience, iat: now, nbf: now - 5, exp: now + 300, ...GITHUB_CLAIMS, ...claims };
    return new SignJWT(payload)
      .setProtectedHeader({ alg: signOptions.alg ?? 'RS256', kid: signOptions.kid ?? current.kid, typ: 'JWT', ...signOptions.header })
      .sign(signOptions.key ?? current.privateKey);
  };

  const server: Server = createServer((request, response) => {
    const path = new URL(request.url ?? '/', url).pathname;
    const send = (status: number, body: unknown) => {
      response.writeHead(status, { 'content-type': 'application/json' });
      response.end(JSON.stringify(body));
    };
    requests += 1;
    if (down) return send(503, { message: 'down' });
    if (path === '/.well-known/openid-configuration') return send(200, { issuer: url, jwks_uri: `${url}/jwks` });
    if (path === '/jwks') {
      fetches += 1;
      return send(200, { keys: published.map((key) => key.publicJwk) });
    }
    if (path === '/fake-github/idtoken') {
      // As GitHub's endpoint: `Authorization: bearer $ACTIONS_ID_TOKEN_REQUEST_TOKEN`, `&audience=` appended.
      if (request.headers.authorization !== `bearer ${requestToken}`) return send(401, { message: 'bad request token' });
      const audience = new URL(request.url ?? '/', url).searchParams.get('audience');
      audiences.push(audience ?? '');
      sign({ ...(audience ? { aud: audience } : {}), ...options.githubClaims }).then((value) => send(200, { count: 1, value }));
      return;
    }
    send(404, { message: 'not found' });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;

  return {
    url,
    get kid() {
      return current.kid;
    },
    jwks: () => ({ keys: published.map((key) => key.publicJwk) }),
    sign,
    async rotate({ publish = true, keep = true } = {}) {
      const key = await newKey();
      keys.push(key);
      current = key;
      if (publish) published = keep ? [...published, key] : [key];
      return key.kid;
    },
    publishAll() {
      published = [...keys];
    },
    jwksFetches: () => fetches,
    requests: () => requests,
    setDown(value) {
      down = value;
    },
    github: { requestUrl: `${url}/fake-github/idtoken?api-version=2.0`, requestToken, audiences },
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

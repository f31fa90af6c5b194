import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { exportJWK, generateKeyPair } from 'jose';
import { explainRequest } from '../../src/broker/check-config.ts';
import { parseBrokerConfig } from '../../src/broker/config.ts';
import { OidcRejection, subjectFor } from '../../src/broker/oidc/verify.ts';
import { decide, type Principal } from '../../src/broker/policy/evaluate.ts';
import { parseScope } from '../../src/core/scope.ts';
import { ROOT } from '../helpers/cli.ts';

const HEADER = 'version: 1\nresources:\n  datasets:\n    kind: files\n    root: data\n';
const FILE = '/srv/jit/broker.yaml';
const GITHUB = 'https://token.actions.githubusercontent.com';
const MAIN = { iss: GITHUB, repository: 'acme/train-pipeline', ref: 'refs/heads/main', ref_protected: true };

/** The rule docs/policy.md#claims shows for "main of acme/train-pipeline may read datasets/train for 2h". */
async function documentedRule(): Promise<string> {
  const doc = await readFile(path.join(ROOT, 'docs', 'policy.md'), 'utf8');
  const block = [...doc.matchAll(/```yaml\n([\s\S]*?)```/g)]
    .map((match) => match[1] ?? '')
    .find((text) => text.includes('train-pipeline-main'));
  assert.ok(block, 'docs/policy.md shows the rule');
  return block;
}

describe('claims in policy (OIDC subjects)', () => {
  it('allows the main branch of acme/train-pipeline datasets/train for up to 2h, and nothing else, as docs/policy.md writes it', async () => {
    const config = parseBrokerConfig(`${HEADER}${await documentedRule()}`, FILE);
    const ask = (principal: Principal, scope: string, ttl?: number) => decide(config, principal, [parseScope(scope)], ttl);
    const ci = { subject: 'ci:github:acme/train-pipeline@refs/heads/main', claims: MAIN };
    const allowed = ask(ci, 'datasets/train', 7200);
    assert.deepEqual([allowed.allowed, allowed.explanation[0]?.rule, allowed.ttlSeconds], [true, 'train-pipeline-main', 7200]);
    assert.equal(ask(ci, 'datasets/train').ttlSeconds, 3600, 'the default TTL');
    assert.equal(ask(ci, 'datasets/train', 3 * 3600).refusal?.code, 'ttl_too_long');
    const feature = ask({ ...ci, claims: { ...MAIN, ref: 'refs/heads/feature' } }, 'datasets/train');
    assert.equal(feature.refusal?.code, 'policy_denied');
    assert.deepEqual(feature.explanation[0]?.notMatched, [
      { rule: 'no-ci-pii', kind: 'deny', why: 'pattern did not match' },
      { rule: 'train-pipeline-main', kind: 'allow', why: 'claims did not match (ref)' },
    ]);
    assert.equal(ask({ ...ci, claims: { ...MAIN, ref_protected: false } }, 'datasets/train').allowed, false, 'booleans match as text');
    assert.equal(ask({ subject: 'user:ana' }, 'datasets/train').allowed, false, 'a person has no claims');
    assert.equal(ask(ci, 'datasets/pii/x.csv').explanation[0]?.deniedBy?.rule, 'no-ci-pii', 'ci:** denies every CI job');
    assert.equal(ask({ subject: 'user:ana' }, 'datasets/pii/x.csv').explanation[0]?.deniedBy, null, 'but no person');
  });

  it('a ci: subject glob matches CI subjects only, segment by segment', () => {
    const config = parseBrokerConfig(
      `${HEADER}policy:\n  rules:\n    - name: acme-ci\n      subjects: ["ci:github:acme/*@refs/heads/main"]\n      scopes: ["datasets/**"]\n      maxTtl: 1h\n`,
      FILE,
    );
    const allowed = (subject: string) => decide(config, { subject }, [parseScope('datasets/train')], undefined).allowed;
    assert.equal(allowed('ci:github:acme/models@refs/heads/main'), true);
    assert.equal(allowed('ci:github:acme/models@refs/heads/dev'), false);
    assert.equal(allowed('ci:github:evil/models@refs/heads/main'), false);
  });

  it('no grant outlives the CI session: a longer TTL is refused, the default is cut to what is left', () => {
    const config = parseBrokerConfig(
      `${HEADER}policy:\n  rules:\n    - name: ci\n      claims: { repository: "acme/*" }\n      scopes: ["datasets/**"]\n      defaultTtl: 2h\n      maxTtl: 8h\n`,
      FILE,
    );
    const principal = { subject: 'ci:x', claims: { repository: 'acme/a' }, sessionSecondsLeft: 1800.7 };
    const refused = decide(config, principal, [parseScope('datasets/train')], 3600);
    assert.equal(refused.refusal?.code, 'ttl_too_long');
    assert.match(refused.refusal?.message ?? '', /ttl 1h is longer than the 30m left of ci:x's CI session/);
    assert.equal(decide(config, principal, [parseScope('datasets/train')], undefined).ttlSeconds, 1800);
  });
});

describe('oidc.issuers in broker.yaml', () => {
  const issuer = (lines: string) =>
    `${HEADER}policy:\n  rules: []\noidc:\n  issuers:\n    - name: github\n      issuer: ${GITHUB}\n      audience: https://jit.example.com\n      claims: { repository_owner: acme }\n${lines}`;
  const refuses = (yaml: string, message: RegExp) =>
    assert.throws(
      () => parseBrokerConfig(yaml, FILE),
      (error: Error) => message.test(error.message),
    );

  it('parses an issuer with its defaults', () => {
    const [parsed] = parseBrokerConfig(issuer(''), FILE).oidcIssuers;
    assert.deepEqual(parsed, {
      name: 'github',
      issuer: GITHUB,
      audiences: ['https://jit.example.com'],
      jwksUri: undefined,
      jwks: undefined,
      algorithms: ['RS256'],
      clockSkewSeconds: 60,
      maxTokenAgeSeconds: 3600,
      sessionTtlSeconds: 3600,
      keyRefreshCooldownSeconds: 30,
      subject: 'ci:github:{sub}',
      claims: { repository_owner: 'acme' },
    });
  });

  it('refuses none and HMAC algorithms, plain http off loopback, a subject that is not ci:, both jwks and jwksUri, and a session over a day', async () => {
    const publicJwk = JSON.stringify(await exportJWK((await generateKeyPair('RS256', { extractable: true })).publicKey));
    refuses(
      issuer('      algorithms: [HS256]\n'),
      /oidc\.issuers\.0\.algorithms\.0: allowed algorithms are RS256, .* \(never none or HS\*\)/,
    );
    refuses(issuer('      algorithms: [none]\n'), /never none or HS\*/);
    refuses(issuer('      jwksUri: http://keys.example.com/jwks\n'), /https:\/\/ \(http:\/\/ only on a loopback host\)/);
    refuses(issuer('      subject: "user:{sub}"\n'), /a subject template is ci:TEXT with \{claim\} placeholders/);
    refuses(
      issuer(`      jwksUri: https://x.example/jwks\n      jwks: { keys: [${publicJwk}] }\n`),
      /give jwks \(inline keys\) or jwksUri, not both/,
    );
    refuses(issuer('      sessionTtl: 2d\n'), /a session lasts at most 1d/);
    refuses(`${issuer('')}    - name: github\n      issuer: https://gitlab.com\n      audience: x\n`, /duplicate name "github"/);
    refuses(
      `${HEADER}policy:\n  rules:\n    - name: ci\n      subjects: ["user:ana"]\n      scopes: ["datasets/**"]\n      maxTtl: 1h\n      approval: { approvers: ["ci:github:**"] }\n`,
      /policy\.rules\.0\.approval\.approvers\.0: an approver is user:NAME or group:NAME \(a CI identity has the requester role only\)/,
    );
  });

  it('makes subjects of real GitHub and GitLab claim values, and refuses a value that could forge one (bad_subject)', () => {
    const [github] = parseBrokerConfig(issuer('      subject: "ci:github:{repository}@{ref}"\n'), FILE).oidcIssuers;
    assert.ok(github);
    const subject = (ref: unknown, repository: unknown = 'acme/train-pipeline') => subjectFor(github, { repository, ref });
    for (const ref of ['refs/heads/main', 'refs/tags/v1.2.3', 'refs/pull/12/merge', 'refs/heads/feat_x-1.2+b=c~d', 4242]) {
      assert.equal(subject(ref), `ci:github:acme/train-pipeline@${ref}`);
    }
    assert.equal(subject('main', 'acme/sub-group/project.name'), 'ci:github:acme/sub-group/project.name@main');
    for (const ref of [
      'x@refs/heads/main',
      'pwn@main',
      'a:b',
      'refs/heads/*',
      'refs/heads/{x}',
      'a?b',
      'a[b]',
      'a b',
      'a\tb',
      'a\nb',
      '\u0000',
      'é',
      '',
    ]) {
      assert.throws(
        () => subject(ref),
        (error: unknown) =>
          error instanceof OidcRejection && error.reason === 'bad_subject' && /claim ref is empty or holds a character/.test(error.message),
        JSON.stringify(ref),
      );
    }
  });

  it('refuses GitHub Actions or GitLab.com trusted for everybody: their claims must keep them to one owner', () => {
    const shared = (url: string, claims: string) =>
      `${HEADER}policy:\n  rules: []\noidc:\n  issuers:\n    - name: ci\n      issuer: ${url}\n      audience: x\n${claims}`;
    refuses(
      shared(GITHUB, ''),
      /oidc\.issuers\.0\.claims: https:\/\/token\.actions\.githubusercontent\.com signs tokens for every GitHub repository: keep this issuer to yours with a condition on repository_owner, .* \(e\.g\. claims: \{ repository_owner: acme \}\)/,
    );
    refuses(shared(GITHUB, '      claims: { ref: refs/heads/main }\n'), /signs tokens for every GitHub repository/);
    refuses(shared(GITHUB, '      claims: { repository_owner: "*" }\n'), /signs tokens for every GitHub repository/);
    refuses(shared('https://gitlab.com', ''), /https:\/\/gitlab\.com signs tokens for every GitLab\.com project: .*namespace_path/);
    assert.equal(parseBrokerConfig(shared(GITHUB, '      claims: { repository: acme/train-pipeline }\n'), FILE).oidcIssuers.length, 1);
    assert.equal(parseBrokerConfig(shared('https://gitlab.com', '      claims: { namespace_path: acme }\n'), FILE).oidcIssuers.length, 1);
    assert.equal(parseBrokerConfig(shared('https://ci.internal.example', ''), FILE).oidcIssuers.length, 1, 'a private issuer needs none');
  });

  it('refuses inline keys that are private or not keys at all, at their file:line:key, before the broker starts', async () => {
    const { privateKey, publicKey } = await generateKeyPair('ES256', { extractable: true });
    const jwks = (key: object) => issuer(`      jwks: { keys: [${JSON.stringify(key)}] }\n`);
    refuses(jwks(await exportJWK(privateKey)), /oidc\.issuers\.0\.jwks\.keys\.0: this JWK is a private key: give only its public part/);
    refuses(jwks({ kty: 'EC', crv: 'P-256', x: 'AAAA' }), /oidc\.issuers\.0\.jwks\.keys\.0: not a usable public key/);
    refuses(jwks({ kid: 'x' }), /oidc\.issuers\.0\.jwks\.keys\.0: a JWK needs kty/);
    const [parsed] = parseBrokerConfig(jwks(await exportJWK(publicKey)), FILE).oidcIssuers;
    assert.equal(parsed?.jwks?.keys.length, 1, 'a public key is taken');
  });

  it('by default makes ci:NAME:{sub}, where sub may hold `:` (GitHub, GitLab) but still not `@`, globs or spaces', () => {
    const [github] = parseBrokerConfig(issuer(''), FILE).oidcIssuers;
    assert.ok(github);
    const subject = (sub: string) => subjectFor(github, { sub });
    for (const sub of [
      'repo:acme/train-pipeline:ref:refs/heads/main',
      'repo:acme/train-pipeline:environment:production',
      'repo:acme/train-pipeline:pull_request',
      'project_path:acme/train-pipeline:ref_type:branch:ref:main',
    ]) {
      assert.equal(subject(sub), `ci:github:${sub}`);
    }
    for (const sub of ['repo:acme/sandbox:ref:refs/heads/x@refs/heads/main', 'repo:acme/*:ref:refs/heads/main', 'repo:a b', '{x}', '']) {
      assert.throws(
        () => subject(sub),
        (error: unknown) =>
          error instanceof OidcRejection &&
          error.reason === 'bad_subject' &&
          /only letters, digits and \. _ - \/ \+ = ~ :\)/.test(error.message),
        JSON.stringify(sub),
      );
    }
  });

  it('allows `:` only in a sole placeholder that ends the template: with two, two claim sets could make one subject', () => {
    const template = (subject: string) => {
      const [parsed] = parseBrokerConfig(issuer(`      subject: "${subject}"\n`), FILE).oidcIssuers;
      assert.ok(parsed);
      return parsed;
    };
    // {a}:{b} with a=x:y, b=z and with a=x, b=y:z would both be ci:x:y:z.
    const two = template('ci:gh:{repository_owner}:{sub}');
    assert.throws(() => subjectFor(two, { repository_owner: 'x:y', sub: 'z' }), /claim repository_owner is empty or holds a character/);
    assert.throws(() => subjectFor(two, { repository_owner: 'x', sub: 'y:z' }), /claim sub is empty or holds a character/);
    assert.throws(() => subjectFor(template('ci:{sub}@gh'), { sub: 'a:b' }), /claim sub is empty or holds a character/);
    assert.equal(subjectFor(template('ci:gh:{sub}'), { sub: 'repo:a/b:ref:main' }), 'ci:gh:repo:a/b:ref:main');
  });

  it('with several issuers, refuses an allow rule on claims that does not name its issuer (claims.iss), at its file:line:key', () => {
    const issuers = `oidc:\n  issuers:\n    - name: github\n      issuer: ${GITHUB}\n      audience: x\n      claims: { repository_owner: acme }\n    - name: gitlab\n      issuer: https://gitlab.com\n      audience: x\n      claims: { namespace_path: acme }\n`;
    const rule = (claims: string) =>
      `${HEADER}policy:\n  rules:\n    - name: ci\n      claims: ${claims}\n      scopes: ["datasets/**"]\n      maxTtl: 1h\n  deny:\n    - name: no-unprotected\n      claims: { ref_protected: "false" }\n      scopes: ["datasets/**"]\n      reason: protected only\n${issuers}`;
    refuses(
      rule('{ repository: "acme/*" }'),
      new RegExp(
        `^${FILE}:9: policy\\.rules\\.0\\.claims: broker\\.yaml trusts 2 OIDC issuers, so a rule that matches claims names its issuer: add iss: "${GITHUB.replaceAll('.', '\\.')}" \\(or the URL of the issuer it is for\\) to its claims; trusted: ${GITHUB.replaceAll('.', '\\.')} \\(github\\), https://gitlab\\.com \\(gitlab\\)`,
      ),
    );
    refuses(
      rule('{ iss: "https://*", repository: "acme/*" }'),
      /policy\.rules\.0\.claims\.iss: "https:\/\/\*" matches 2 of the trusted OIDC issuers; a rule is for one/,
    );
    refuses(
      rule('{ iss: "https://gitlab.example", repository: "acme/*" }'),
      /policy\.rules\.0\.claims\.iss: "https:\/\/gitlab\.example" matches none of the trusted/,
    );
    const named = parseBrokerConfig(rule('{ iss: "https://gitlab.com", project_path: "acme/*" }'), FILE);
    assert.deepEqual(named.rules[0]?.claims, { iss: 'https://gitlab.com', project_path: 'acme/*' }, 'a deny rule needs no issuer');
    const one = `${HEADER}policy:\n  rules:\n    - name: ci\n      claims: { repository: "acme/*" }\n      scopes: ["datasets/**"]\n      maxTtl: 1h\n${issuers.split('    - name: gitlab')[0]}`;
    assert.equal(parseBrokerConfig(one, FILE).rules.length, 1, 'with one issuer, iss may be left out');
  });

  it('jit policy explain --issuer makes the subject from the claims and applies the session TTL', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'jit-explain-'));
    try {
      const yaml = `${HEADER}${await documentedRule()}oidc:\n  issuers:\n    - name: github\n      issuer: ${GITHUB}\n      audience: x\n      subject: "ci:github:{repository}@{ref}"\n      claims: { repository_owner: acme }\n      sessionTtl: 90m\n`;
      await writeFile(path.join(dir, 'broker.yaml'), yaml);
      const decision = await explainRequest(dir, {
        issuer: 'github',
        claims: { ...MAIN, repository_owner: 'acme' },
        scopes: ['datasets/train'],
      });
      assert.equal(decision.subject, 'ci:github:acme/train-pipeline@refs/heads/main');
      assert.equal(decision.allowed, true);
      const capped = await explainRequest(dir, {
        issuer: 'github',
        claims: { ...MAIN, repository_owner: 'acme' },
        scopes: ['datasets/train'],
        ttlSeconds: 7200,
      });
      assert.equal(capped.refusal?.code, 'ttl_too_long', 'the 2h rule max is past the 90m session');
      await assert.rejects(
        explainRequest(dir, { issuer: 'github', claims: { ...MAIN, repository_owner: 'evil' }, scopes: ['datasets/train'] }),
        /issuer github would refuse this token: claims repository_owner do not match/,
      );
      await assert.rejects(explainRequest(dir, { issuer: 'gitlab', scopes: ['datasets/train'] }), /no OIDC issuer "gitlab"/);

      // The claims given need no iss: the issuer's own is what a real token carries, so with two
      // issuers the rule for one is matched by it and not by the other.
      const { iss: _, ...withoutIss } = MAIN;
      const two = `${HEADER}${await documentedRule()}oidc:\n  issuers:\n    - name: github\n      issuer: ${GITHUB}\n      audience: x\n      subject: "ci:github:{repository}@{ref}"\n      claims: { repository_owner: acme }\n    - name: other\n      issuer: https://ci.example.com\n      audience: x\n      subject: "ci:other:{repository}@{ref}"\n`;
      await writeFile(path.join(dir, 'broker.yaml'), two);
      const fromGithub = await explainRequest(dir, {
        issuer: 'github',
        claims: { ...withoutIss, repository_owner: 'acme' },
        scopes: ['datasets/train'],
      });
      assert.equal(fromGithub.allowed, true);
      const fromOther = await explainRequest(dir, { issuer: 'other', claims: { ...MAIN, iss: GITHUB }, scopes: ['datasets/train'] });
      assert.equal(fromOther.allowed, false, "another issuer's token cannot claim GitHub's iss");
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

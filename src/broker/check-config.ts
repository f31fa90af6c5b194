import path from 'node:path';
import { UsageError } from '../core/errors.ts';
import { parseScope } from '../core/scope.ts';
import { CONFIG_FILE, checkResourceRoots } from './broker.ts';
import { type BrokerConfig, loadBrokerConfig } from './config.ts';
import { identityFor, OidcRejection } from './oidc/verify.ts';
import { type Decision, decide, type Principal } from './policy/evaluate.ts';
import { checkScope } from './resources.ts';

export type ConfigSummary = { file: string; resources: number; rules: number; denyRules: number; groups: number };

/** What `jit broker start` checks before it listens, without starting anything. */
export async function checkBrokerDir(dir: string): Promise<{ config: BrokerConfig; summary: ConfigSummary }> {
  const file = path.join(path.resolve(dir), CONFIG_FILE);
  const config = await loadBrokerConfig(file);
  await checkResourceRoots(config, file);
  const summary = {
    file,
    resources: Object.keys(config.resources).length,
    rules: config.rules.length,
    denyRules: config.deny.length,
    groups: Object.keys(config.groups).length,
  };
  return { config, summary };
}

export type ExplainRequest = {
  /** Who asks; with `issuer`, the subject that issuer's template makes of `claims` when left out. */
  subject?: string;
  claims?: Record<string, unknown>;
  /** An oidc.issuers name: the request comes from a fresh CI session of that issuer. */
  issuer?: string;
  scopes: string[];
  /** Applied to scopes that name no action of their own. */
  action?: string;
  ttlSeconds?: number;
};

const PRINCIPAL = /^[a-z][a-z0-9-]*:.+$/;

/**
 * The decision the broker in DIR would make for this request, with its explanation; nothing is
 * created. Scopes are checked against the catalog exactly as the broker checks them.
 */
export async function explainRequest(dir: string, request: ExplainRequest): Promise<Decision> {
  const file = path.join(path.resolve(dir), CONFIG_FILE);
  const config = await loadBrokerConfig(file);
  const issuer = request.issuer === undefined ? undefined : config.oidcIssuers.find((candidate) => candidate.name === request.issuer);
  if (request.issuer !== undefined && !issuer) {
    const known = config.oidcIssuers.map((candidate) => candidate.name);
    throw new UsageError(`no OIDC issuer "${request.issuer}" in ${file}`, {
      hint: known.length > 0 ? `known: ${known.join(', ')}` : 'declare it under oidc.issuers (docs/broker-config.md#oidc)',
    });
  }
  let subject = request.subject;
  // A token this issuer signs always carries its `iss` (the broker checks it), so rules on
  // claims.iss see the same value here as they would in a real exchange.
  const claims = issuer ? { ...request.claims, iss: issuer.issuer } : request.claims;
  if (issuer) {
    try {
      subject ??= identityFor(issuer, claims ?? {});
    } catch (error) {
      if (error instanceof OidcRejection) throw new UsageError(`issuer ${issuer.name} would refuse this token: ${error.message}`);
      throw error;
    }
  }
  if (subject === undefined || !PRINCIPAL.test(subject) || subject.startsWith('group:')) {
    throw new UsageError(`invalid subject "${subject ?? ''}"`, {
      hint: 'a principal is user:NAME, or a CI identity (--issuer NAME with its claims); groups are resolved from policy.groups',
    });
  }
  const scopes = request.scopes.map((text) =>
    checkScope(config.resources, parseScope(request.action !== undefined && !text.includes(':') ? `${text}:${request.action}` : text)),
  );
  const principal: Principal = {
    subject,
    ...(claims ? { claims } : {}),
    ...(issuer ? { sessionSecondsLeft: issuer.sessionTtlSeconds } : {}),
  };
  return decide(config, principal, scopes, request.ttlSeconds);
}

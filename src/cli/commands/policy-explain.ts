import { readFile } from 'node:fs/promises';
import path from 'node:path';
import type { Decision } from '../../broker/policy/evaluate.ts';
import { formatDuration, parseDuration } from '../../core/duration.ts';
import { ExitCode, UsageError } from '../../core/errors.ts';
import type { CommandDefinition } from '../command.ts';
import { renderTable } from '../table.ts';

const collect = (value: string, previous: string[] = []) => [...previous, value];

function parseClaims(pairs: string[]): Record<string, string> | undefined {
  if (pairs.length === 0) return undefined;
  const claims: Record<string, string> = {};
  for (const pair of pairs) {
    const equals = pair.indexOf('=');
    if (equals < 1) throw new UsageError(`invalid --claim "${pair}"`, { hint: 'write it as NAME=VALUE, e.g. --claim ref=refs/heads/main' });
    claims[pair.slice(0, equals)] = pair.slice(equals + 1);
  }
  return claims;
}

/** A JSON object of claims; a JWT by mistake is refused without being echoed. */
async function readClaimsFile(file: string): Promise<Record<string, unknown>> {
  const text = await readFile(file, 'utf8').catch((error: NodeJS.ErrnoException) => {
    throw new UsageError(`cannot read --claims-file ${file} (${error.code ?? error.message})`);
  });
  let claims: unknown;
  try {
    claims = JSON.parse(text);
  } catch {
    claims = undefined;
  }
  if (!claims || typeof claims !== 'object' || Array.isArray(claims)) {
    throw new UsageError(`--claims-file ${file} is not a JSON object of claims`, {
      hint: 'give the token\'s decoded payload, e.g. {"repository": "acme/x", "ref": "refs/heads/main"}, not the token',
    });
  }
  return claims as Record<string, unknown>;
}

function headline(decision: Decision): string {
  if (decision.refusal) return `refused: ${decision.refusal.message}`;
  const ttl = `for ${formatDuration(decision.ttlSeconds ?? 0)} (max ${formatDuration(decision.maxTtlSeconds ?? 0)})`;
  if (!decision.approval.required) return `allowed ${ttl}, no approval needed`;
  const { count, approvers } = decision.approval;
  return `allowed ${ttl} after approval by ${count} of ${approvers.join(', ')} (never the requester)`;
}

function render(decision: Decision): string {
  const blocks = decision.explanation.map((scope) => {
    const verdict = scope.deniedBy
      ? `refused by deny rule ${scope.deniedBy.rule}: ${scope.deniedBy.reason}`
      : scope.rule
        ? `allowed by ${scope.rule}${scope.approval ? ' (needs approval)' : ''}`
        : 'no rule allows it';
    const rows = [
      ...(scope.deniedBy ? [[scope.deniedBy.rule, 'deny', `refused: ${scope.deniedBy.reason}`]] : []),
      ...(scope.rule ? [[scope.rule, 'allow', scope.deniedBy ? 'would allow' : 'allowed']] : []),
      ...scope.notMatched.map((miss) => [miss.rule, miss.kind, miss.why]),
    ];
    return [
      `${scope.scope}: ${verdict}`,
      ...renderTable([['RULE', 'KIND', 'OUTCOME'], ...rows])
        .split('\n')
        .map((line) => `  ${line}`),
    ].join('\n');
  });
  return [`${decision.subject}: ${headline(decision)}`, '', blocks.join('\n\n')].join('\n');
}

export const policyExplain: CommandDefinition = {
  path: 'policy explain',
  summary: "show the decision a broker's policy makes for a request, and why, without creating anything",
  define: (command) =>
    command
      .requiredOption('--dir <dir>', 'the broker directory whose broker.yaml holds the policy')
      .option('--subject <subject>', 'who asks, e.g. user:ana (with --issuer: the subject its template makes of the claims)')
      .requiredOption('--scope <scope>', 'a scope to ask for (repeatable)', collect)
      .option('--ttl <duration>', 'the TTL to ask for (default: the policy default)')
      .option('--action <action>', 'the action for scopes that name none (default: read)')
      .option('--claim <name=value>', "a CI identity's claim, matched by claims rules (repeatable)", collect)
      .option('--claims-file <file>', "a CI identity's claims as a JSON object (a token's decoded payload, never the token)")
      .option(
        '--issuer <name>',
        'ask as a fresh CI session of this oidc.issuers entry: its claim conditions, subject and sessionTtl apply',
      ),
  async handler({ options }) {
    const { explainRequest } = await import('../../broker/check-config.ts');
    const fromFile = options.claimsFile === undefined ? undefined : await readClaimsFile(String(options.claimsFile));
    const pairs = parseClaims((options.claim as string[] | undefined) ?? []);
    const claims = fromFile || pairs ? { ...fromFile, ...pairs } : undefined;
    if (options.subject === undefined && options.issuer === undefined) {
      throw new UsageError("who asks? pass --subject, or --issuer NAME with the CI identity's claims", {
        hint: 'e.g. --subject user:ana, or --issuer github --claims-file claims.json',
      });
    }
    const decision = await explainRequest(path.resolve(String(options.dir)), {
      ...(options.subject === undefined ? {} : { subject: String(options.subject) }),
      ...(options.issuer === undefined ? {} : { issuer: String(options.issuer) }),
      scopes: options.scope as string[],
      ...(claims ? { claims } : {}),
      ...(options.action === undefined ? {} : { action: String(options.action) }),
      ...(options.ttl === undefined ? {} : { ttlSeconds: parseDuration(String(options.ttl), '--ttl') }),
    });
    const exitCode = !decision.refusal ? ExitCode.ok : decision.refusal.code === 'ttl_too_long' ? ExitCode.usage : ExitCode.denied;
    return { data: decision, human: render(decision), exitCode };
  },
};

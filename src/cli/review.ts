import type { BrokerClient } from '../client/broker-client.ts';
import { approvalProgress, describeApproval } from '../core/approval.ts';
import { UsageError } from '../core/errors.ts';
import { GRANT_ID, type GrantView } from '../core/grant.ts';
import type { Context } from './context.ts';
import { printable } from './printable.ts';
import { renderTable } from './table.ts';

/** "1 of 2" approvals given so far. */
export function approvalProgressText(grant: GrantView): string {
  const { given, needed } = approvalProgress(grant);
  return `${given} of ${needed}`;
}

/** The requests waiting for the caller, as `jit approvals` prints them. */
export function reviewTable(grants: readonly GrantView[]): string {
  return renderTable([
    ['ID', 'REQUESTER', 'SCOPES', 'TTL', 'APPROVALS', 'TIMES OUT', 'REASON'],
    ...grants.map((grant) => [
      grant.id,
      grant.subject,
      grant.scopes.join(','),
      `${grant.ttlSeconds}s`,
      approvalProgressText(grant),
      grant.approval?.deadline ?? '-',
      printable(grant.reason ?? ''),
    ]),
  ]);
}

/**
 * The grant id a review command acts on: the one named, or, with none named on a terminal, the
 * one picked from the requests waiting for the caller. undefined when nothing waits.
 */
export async function grantToReview(
  ctx: Context,
  client: BrokerClient,
  given: string | undefined,
  verb: string,
): Promise<string | undefined> {
  if (given !== undefined) {
    if (!GRANT_ID.test(given))
      throw new UsageError(`"${given}" is not a grant id`, { hint: 'see `jit approvals` for the requests waiting for you' });
    return given;
  }
  if (!ctx.interactive) {
    throw new UsageError(`name the grant to ${verb} (no terminal to pick one on, or CI is set)`, {
      hint: `list the requests waiting for you with \`jit approvals\`, then \`jit ${verb} ID\``,
    });
  }
  const { grants } = await client.reviewable();
  if (grants.length === 0) return undefined;
  const { select } = await import('@inquirer/prompts');
  return select(
    {
      message: `Which request do you ${verb}?`,
      choices: grants.map((grant) => ({
        value: grant.id,
        name: `${grant.subject} wants ${grant.scopes.join(', ')} for ${grant.ttlSeconds}s${grant.reason ? `: "${printable(grant.reason)}"` : ''}`,
        description: `${grant.id}, ${approvalProgressText(grant)} approvals, times out ${grant.approval?.deadline ?? '-'}; needs ${describeApproval(grant)}`,
      })),
    },
    { output: process.stderr },
  );
}

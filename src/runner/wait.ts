import type { Context } from '../cli/context.ts';
import { approvalProgress, describeApproval } from '../core/approval.ts';
import { ConflictError, DeniedError, PendingError } from '../core/errors.ts';
import type { GrantView } from '../core/grant.ts';

export type WaitOptions = {
  /** Asks the broker where the grant stands: a heartbeat for `jit run` (it holds the grant), a read for `jit request`. */
  poll: () => Promise<GrantView>;
  intervalMs: number;
  /** Give up after this long (`--wait-timeout`); the broker's own approval timeout applies regardless. */
  timeoutMs: number | undefined;
  /** Stops the wait (a signal while `jit run` waits). */
  signal?: AbortSignal;
  /** What the user can do when `timeoutMs` runs out: it depends on whether the request is kept (jit request) or cancelled (jit run). */
  timeoutHint: string;
};

/**
 * Waits for a pending grant to be approved, with a spinner naming who can approve it (one line
 * on stderr when there is no terminal, for CI logs). Resolves with the active grant; rejects with
 * DeniedError (exit 4) when an approver denies it, PendingError (exit 9) when the wait or the
 * broker's approval timeout runs out, ConflictError when it was cancelled, and the abort reason
 * when `signal` fires.
 */
export async function waitForApproval(ctx: Context, grant: GrantView, options: WaitOptions): Promise<GrantView> {
  const who = describeApproval(grant);
  const waiting = `grant ${grant.id} is waiting for approval by ${who}`;
  const spinner = ctx.out.spinner(`${waiting} (Ctrl-C to stop waiting)`);
  if (!ctx.out.interactive) ctx.out.notice(waiting);
  const deadline = options.timeoutMs === undefined ? Number.POSITIVE_INFINITY : Date.now() + options.timeoutMs;
  let current = grant;
  try {
    for (;;) {
      if (current.state === 'active') {
        spinner.succeed(`grant ${grant.id} approved`);
        return current;
      }
      if (current.state !== 'pending') throw endedError(current);
      spinner.text(`${waiting}: ${progress(current)} (Ctrl-C to stop waiting)`);
      if (Date.now() >= deadline) {
        throw new PendingError(`no approval for grant ${grant.id} within the wait timeout`, {
          code: 'approval_wait_timeout',
          hint: options.timeoutHint,
          grantId: grant.id,
        });
      }
      await sleep(Math.min(options.intervalMs, Math.max(0, deadline - Date.now())), options.signal);
      current = await options.poll();
    }
  } catch (error) {
    spinner.fail(error instanceof Error ? error.message : String(error));
    throw error;
  }
}

/** "1 of 2 approvals" for the spinner. */
function progress(grant: GrantView): string {
  const { given, needed } = approvalProgress(grant);
  return `${given} of ${needed} approval${needed === 1 ? '' : 's'}`;
}

/** The error for a request that ended without becoming active. */
export function endedError(grant: GrantView): Error {
  const denial = grant.approval?.deniedBy;
  if (grant.state === 'denied') {
    return new DeniedError(
      `grant ${grant.id} was denied by ${denial?.approver ?? 'an approver'}${denial?.reason ? `: ${denial.reason}` : ''}`,
      { code: 'request_denied', hint: 'talk to the approver, or request a narrower scope' },
    );
  }
  if (grant.state === 'timed-out') {
    return new PendingError(`grant ${grant.id} timed out waiting for approval`, {
      code: 'approval_timed_out',
      hint: 'request it again, and ask its approvers to review it sooner',
      grantId: grant.id,
    });
  }
  return new ConflictError(`grant ${grant.id} is ${grant.state}${grant.endReason ? ` (${grant.endReason})` : ''}`, {
    code: 'grant_ended',
    hint: 'request a new grant',
  });
}

function sleep(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const timer = setTimeout(done, ms);
    function done() {
      signal?.removeEventListener('abort', aborted);
      resolve();
    }
    function aborted() {
      clearTimeout(timer);
      reject(signal?.reason);
    }
    signal?.addEventListener('abort', aborted, { once: true });
  });
}

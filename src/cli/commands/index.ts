import type { CommandDefinition } from '../command.ts';
import { approvals } from './approvals.ts';
import { approve } from './approve.ts';
import { audit, auditVerify } from './audit.ts';
import { brokerCheckConfig } from './broker-check-config.ts';
import { brokerInit } from './broker-init.ts';
import { brokerOpenapi } from './broker-openapi.ts';
import { brokerStart } from './broker-start.ts';
import { brokerTokenCreate } from './broker-token-create.ts';
import { brokerTokenList } from './broker-token-list.ts';
import { brokerTokenRevoke } from './broker-token-revoke.ts';
import { completion } from './completion.ts';
import { configList, configPath, configSet, configUse } from './config.ts';
import { deny } from './deny.ts';
import { doctor } from './doctor.ts';
import { env } from './env.ts';
import { grants } from './grants.ts';
import { login } from './login.ts';
import { logout } from './logout.ts';
import { policyExplain } from './policy-explain.ts';
import { renew } from './renew.ts';
import { request } from './request.ts';
import { revoke } from './revoke.ts';
import { run } from './run.ts';
import { watch } from './watch.ts';
import { whoami } from './whoami.ts';

/** Every command jit has, in the order `jit --help` lists them. */
export const COMMANDS: readonly CommandDefinition[] = [
  login,
  logout,
  whoami,
  run,
  request,
  env,
  grants,
  renew,
  revoke,
  approvals,
  approve,
  deny,
  audit,
  auditVerify,
  watch,
  brokerInit,
  brokerStart,
  brokerOpenapi,
  brokerCheckConfig,
  brokerTokenCreate,
  brokerTokenList,
  brokerTokenRevoke,
  policyExplain,
  completion,
  doctor,
  configList,
  configSet,
  configUse,
  configPath,
];

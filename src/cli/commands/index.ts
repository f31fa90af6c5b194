import type { CommandDefinition } from '../command.ts';
import { brokerCheckConfig } from './broker-check-config.ts';
import { brokerInit } from './broker-init.ts';
import { brokerOpenapi } from './broker-openapi.ts';
import { brokerStart } from './broker-start.ts';
import { grants } from './grants.ts';
import { login } from './login.ts';
import { logout } from './logout.ts';
import { policyExplain } from './policy-explain.ts';
import { revoke } from './revoke.ts';
import { run } from './run.ts';

/** Every command jit has, in the order `jit --help` lists them. */
export const COMMANDS: readonly CommandDefinition[] = [
  login,
  logout,
  run,
  grants,
  revoke,
  brokerInit,
  brokerStart,
  brokerOpenapi,
  brokerCheckConfig,
  policyExplain,
];

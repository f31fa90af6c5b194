import { formatDuration, parseDuration } from '../../core/duration.ts';
import { UsageError } from '../../core/errors.ts';
import type { CommandDefinition } from '../command.ts';
import { renderTable } from '../table.ts';

export const configList: CommandDefinition = {
  path: 'config list',
  summary: 'list the local profiles: broker URL, default TTL, and which one is active',
  async handler(_input, ctx) {
    const active = ctx.options.profile;
    const profiles = ctx.config.profiles().map(([name, profile]) => ({
      name,
      brokerUrl: profile.brokerUrl,
      defaultTtl: profile.defaultTtl ?? null,
      active: name === active,
    }));
    const human =
      profiles.length === 0
        ? `No profiles in ${ctx.config.path}; run \`jit login --broker URL\` to create one.`
        : renderTable([
            ['', 'PROFILE', 'BROKER', 'DEFAULT TTL'],
            ...profiles.map((profile) => [profile.active ? '*' : '', profile.name, profile.brokerUrl, profile.defaultTtl ?? '-']),
          ]);
    return { data: { active, profiles }, human };
  },
};

export const configSet: CommandDefinition = {
  path: 'config set',
  summary: "change a profile's settings (--default-ttl, the TTL jit run, request and env ask for without --ttl)",
  define: (command) =>
    command.requiredOption('--default-ttl <duration>', 'the TTL jit run, jit request and jit env ask for when given no --ttl, e.g. 30m'),
  async handler({ options }, ctx) {
    const name = ctx.options.profile;
    const defaultTtl = formatDuration(parseDuration(String(options.defaultTtl), '--default-ttl'));
    const profile = ctx.config.profile(name);
    if (!profile) {
      throw new UsageError(`no profile "${name}"`, {
        hint: `create it with \`jit login --profile ${name} --broker URL\`; \`jit config list\` shows the profiles there are`,
      });
    }
    ctx.config.setProfile(name, { ...profile, defaultTtl });
    return { data: { name, brokerUrl: profile.brokerUrl, defaultTtl }, human: `Profile ${name}: default TTL ${defaultTtl}.` };
  },
};

export const configUse: CommandDefinition = {
  path: 'config use',
  summary: 'make a profile the active one: the profile commands use without --profile or JIT_PROFILE',
  define: (command) => command.argument('<name>', 'the profile, as `jit config list` shows it'),
  async handler({ args }, ctx) {
    const [name = ''] = args;
    const profile = ctx.config.profile(name);
    if (!profile) {
      const known = ctx.config.profiles().map(([each]) => each);
      throw new UsageError(`no profile "${name}"`, {
        hint: known.length > 0 ? `the profiles are: ${known.join(', ')}` : `create it with \`jit login --profile ${name} --broker URL\``,
      });
    }
    ctx.config.setActiveProfile(name);
    const shadowed =
      ctx.env.JIT_PROFILE && ctx.env.JIT_PROFILE !== name ? ` (JIT_PROFILE=${ctx.env.JIT_PROFILE} still wins in this shell)` : '';
    return {
      data: { active: name, brokerUrl: profile.brokerUrl },
      human: `Profile ${name} (${profile.brokerUrl}) is now the active one${shadowed}.`,
    };
  },
};

export const configPath: CommandDefinition = {
  path: 'config path',
  summary: 'print the path of the local config file (profiles and the grant index; never secrets)',
  async handler(_input, ctx) {
    return { data: { path: ctx.config.path }, human: ctx.config.path };
  },
};

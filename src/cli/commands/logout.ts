import { accounts } from '../../secrets/store.ts';
import type { CommandDefinition } from '../command.ts';

export const logout: CommandDefinition = {
  path: 'logout',
  summary: "forget this profile's broker and remove its token from the keychain",
  async handler(_input, ctx) {
    const profile = ctx.options.profile;
    const secrets = await ctx.secrets();
    const removedToken = await secrets.delete(accounts.token(profile));
    const removedProfile = ctx.config.removeProfile(profile);
    const data = { profile, removedToken, removedProfile };
    return { data, human: removedToken || removedProfile ? `Logged out of profile ${profile}.` : `Profile ${profile} was not logged in.` };
  },
};

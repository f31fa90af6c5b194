import { VERSION } from '../../core/version.ts';
import type { CommandDefinition } from '../command.ts';

export const brokerOpenapi: CommandDefinition = {
  path: 'broker openapi',
  summary: "print the broker API's OpenAPI document (JSON), as GET /v1/openapi.json serves it",
  async handler(_input, ctx) {
    const { openApiDocument } = await import('../../broker/api/openapi.ts');
    const document = openApiDocument(VERSION);
    // The document is the result either way: JSON is its only form.
    return { data: document, human: ctx.out.json ? undefined : JSON.stringify(document, null, 2) };
  },
};

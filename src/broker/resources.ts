import { UsageError } from '../core/errors.ts';
import { closestName, type Scope } from '../core/scope.ts';
import type { BrokerConfig } from './config.ts';
import { FILES_ACTIONS } from './providers/files.ts';

/** A requested scope must name a resource this broker serves and an action its kind has. */
export function checkScope(resources: BrokerConfig['resources'], scope: Scope): Scope {
  const resource = resources[scope.resource];
  if (!resource) {
    const known = Object.keys(resources);
    const nearest = closestName(scope.resource, known);
    throw new UsageError(`unknown resource "${scope.resource}"`, {
      code: 'unknown_resource',
      hint: nearest ? `did you mean "${nearest}"?` : `this broker serves: ${known.join(', ') || 'nothing yet'}`,
    });
  }
  if (!(FILES_ACTIONS as readonly string[]).includes(scope.action)) {
    throw new UsageError(`action "${scope.action}" does not apply to ${resource.kind} resource "${scope.resource}"`, {
      code: 'unknown_action',
      hint: `use one of: ${FILES_ACTIONS.join(', ')}`,
    });
  }
  return scope;
}

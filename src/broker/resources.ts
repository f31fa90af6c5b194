import { UsageError } from '../core/errors.ts';
import { closestName, type Scope } from '../core/scope.ts';
import { ACTIONS_BY_KIND, actionApplies, type BrokerConfig } from './config.ts';

const TABLE = /^[A-Za-z_][A-Za-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*$/;

/**
 * A requested scope must name a resource this broker serves and an action its kind has; a
 * postgres scope names one "schema.table" (columns only for select, insert and update). Whether
 * the table exists and is offered is the provider's check, against the database itself.
 */
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
  if (!actionApplies(resource.kind, scope.action)) {
    throw new UsageError(`action "${scope.action}" does not apply to ${resource.kind} resource "${scope.resource}"`, {
      code: 'unknown_action',
      hint:
        resource.kind === 'http'
          ? `an API scope's action is a method and a path, e.g. ${scope.resource}:POST /v1/embeddings`
          : `use one of: ${ACTIONS_BY_KIND[resource.kind].join(', ')}`,
    });
  }
  if (resource.kind === 'http' && (scope.path !== '' || scope.columns)) {
    throw new UsageError(`an API scope names the resource and a method and path: "${scope.resource}:${scope.action}"`, {
      code: 'invalid_scope',
      hint: `e.g. ${scope.resource}:POST /v1/embeddings`,
    });
  }
  if (resource.kind === 'files' && scope.columns) {
    throw new UsageError(`a column list applies to table scopes, not to files resource "${scope.resource}"`, {
      code: 'invalid_scope',
      hint: `drop the (${scope.columns.join(',')})`,
    });
  }
  if (resource.kind === 'postgres') {
    if (!TABLE.test(scope.path)) {
      throw new UsageError(`a scope on postgres resource "${scope.resource}" names one table as schema.table`, {
        code: 'invalid_scope',
        hint: `e.g. ${scope.resource}/public.customers:select, or ${scope.resource}/public.customers(id,email):select`,
      });
    }
    if (scope.columns && scope.action === 'delete') {
      throw new UsageError('delete applies to whole rows: a column list does not go with it', {
        code: 'invalid_scope',
        hint: `use ${scope.resource}/${scope.path}:delete`,
      });
    }
  }
  return scope;
}

/** `director delete-deployment`: stops every job, deletes every VM, forgets the deployment. */
import { DirectorError, userError } from '../errors.js';
import type { LoadedDeployment } from '../manifest/types.js';
import { plan as makePlan } from '../plan/plan.js';
import { ProviderSet } from '../providers/registry.js';
import { RolloutExecutor, taskErrorFromFailure } from '../rollout/executor.js';
import { instanceConnector } from '../instance/routing.js';
import { Ssh2Connector } from '../ssh/connection.js';
import { withDeploymentLock } from '../tasks/locks.js';
import { taskErrorOf, type EventRow } from '../tasks/tasks.js';
import type { DirectorContext } from './context.js';
import { observe } from './observe.js';

const DELETE_IN_FLIGHT = 10;

export async function deleteDeployment(ctx: DirectorContext, name: string, opts: { onEvent?: (e: EventRow) => void; onTask?: (id: number) => void } = {}): Promise<{ taskId: number; deleted: number }> {
  const dep = ctx.store.deployment(name);
  if (!dep) {
    const known = ctx.store.deployments().map((d) => d.name);
    throw userError('deployment_unknown', `no deployment named '${name}'`, { hint: known.length ? `deployments: ${known.join(', ')}` : 'there are no deployments' });
  }
  const taskId = ctx.tasks.create('delete-deployment', name, `delete deployment ${name}`);
  opts.onTask?.(taskId);
  const providers = new ProviderSet(dep.clouds, ctx.home);
  try {
    return await withDeploymentLock(ctx.locks, ctx.tasks, name, taskId, async () => {
      // The planner with no instance groups desired: every instance is deleted, strays too.
      const planned = makePlan({ deployment: name, groups: [] }, (await observe(ctx, providers, name)).observed);
      const plan = { ...planned, instances: planned.instances.map((i) => ({ ...i, reasons: [{ code: 'deployment_deleted' as const }] })) };
      const loaded = { manifest: { name, releases: [], instanceGroups: [] }, cloudConfig: { clouds: dep.clouds, azs: [], vmTypes: [] }, vars: [] } as unknown as LoadedDeployment;
      const executor = new RolloutExecutor({
        store: ctx.store, tasks: ctx.tasks, taskId, clock: ctx.clock, providers, connector: instanceConnector(providers, ctx.keys.privateKey, new Ssh2Connector({ connectAttempts: 3 })),
        keys: ctx.keys, directorId: ctx.directorId, loaded, releases: new Map(), desired: { deployment: name, groups: [] },
        healthChecks: new Map(), redact: (s) => s, onEvent: opts.onEvent, deleteInFlight: DELETE_IN_FLIGHT,
      });
      const result = await executor.run(plan);
      if (!result.ok) {
        const f = result.failed[0]!;
        ctx.tasks.finish(taskId, 'error', null, taskErrorFromFailure(f, `run delete-deployment again once the cause is fixed; director task ${taskId} --vm ${f.instance} shows the log`));
        throw new DirectorError(f.code, f.errorClass as 'infrastructure', `${f.instance}: ${f.message}`, { hint: `director task ${taskId} --vm ${f.instance}` });
      }
      ctx.store.deleteDeployment(name);
      ctx.tasks.finish(taskId, 'done', `deleted ${result.done.length} instance(s)`);
      opts.onEvent?.(ctx.tasks.addEvent(taskId, 'delete', null, 'finished', `deployment ${name} deleted`));
      return { taskId, deleted: result.done.length };
    });
  } catch (err) {
    const t = ctx.tasks.get(taskId);
    if (t?.state === 'processing') {
      const e = err instanceof DirectorError ? err : new DirectorError('internal', 'internal', String(err), { cause: err });
      ctx.tasks.finish(taskId, 'error', null, taskErrorOf(e));
    }
    throw err;
  } finally {
    await providers.closeAll();
  }
}

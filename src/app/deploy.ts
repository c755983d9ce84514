/**
 * The deploy service: load → resolve → observe → plan → (confirm) → lock → execute → record.
 * `plan`, `deploy --dry-run` and `deploy` all go through `prepare`, so they share one planner.
 */
import { dirname, join, resolve } from 'node:path';
import { DirectorError, userError } from '../errors.js';
import { loadDeployment, loadHealthChecks } from '../manifest/load.js';
import { makeRedactor } from '../manifest/vars.js';
import type { HealthCheckDef, LoadedDeployment } from '../manifest/types.js';
import { resolveDesired } from '../plan/desired.js';
import { plan as makePlan } from '../plan/plan.js';
import type { Desired, Plan } from '../plan/types.js';
import { ProviderSet } from '../providers/registry.js';
import { loadRelease, type Release } from '../release/release.js';
import { RolloutExecutor, taskErrorFromFailure, type RolloutResult } from '../rollout/executor.js';
import { instanceConnector } from '../instance/routing.js';
import type { SshConnector } from '../ssh/types.js';
import { withDeploymentLock } from '../tasks/locks.js';
import { taskErrorOf, type EventRow } from '../tasks/tasks.js';
import type { DirectorContext } from './context.js';
import { observe } from './observe.js';

export interface DeployInput {
  manifestPath: string;
  cloudConfigPath?: string;
  vars?: Record<string, string>;
  varsFiles?: string[];
}

export interface Prepared {
  loaded: LoadedDeployment;
  releases: Map<string, Release>;
  desired: Desired;
  plan: Plan;
  providers: ProviderSet;
  healthChecks: Map<string, HealthCheckDef[]>;
  redact: (s: string) => string;
  warnings: string[];
  /** the clouds the manifest's AZs map to */
  clouds: string[];
}

export async function prepare(ctx: DirectorContext, input: DeployInput): Promise<Prepared> {
  const loaded = loadDeployment(resolve(input.manifestPath), { cloudConfigPath: input.cloudConfigPath, vars: input.vars, varsFiles: input.varsFiles });
  const redact = makeRedactor(loaded.vars);
  const releases = new Map<string, Release>();
  for (const r of loaded.manifest.releases) {
    const release = loadRelease(r.path);
    if (release.name !== r.name) {
      throw userError('release_name_mismatch', `${loaded.manifestFile}: release '${r.name}' points at ${r.path}, whose release.yml names '${release.name}'`, { hint: 'make the names match' });
    }
    releases.set(r.name, release);
  }
  const desired = resolveDesired(loaded, releases, ctx.digest);
  const canaryDirs = [join(dirname(loaded.manifestFile), '..', 'canaries'), join(dirname(loaded.manifestFile), 'canaries'), resolve('canaries')];
  const healthChecks = new Map<string, HealthCheckDef[]>();
  for (const ig of loaded.manifest.instanceGroups) healthChecks.set(ig.name, loadHealthChecks(ig.health, canaryDirs));
  const providers = ProviderSet.forCloudConfig(loaded.cloudConfig, ctx.home);
  const clouds = [...new Set(desired.groups.flatMap((g) => g.azs.map((a) => a.cloud)))];
  const { observed } = await observe(ctx, providers, desired.deployment, clouds);
  const past = ctx.tasks.recentInstanceDurations(desired.deployment).sort((a, b) => a - b);
  const plan = makePlan(desired, observed, past.length >= 3 ? { instanceMs: past[Math.floor(past.length / 2)] } : {});
  return { loaded, releases, desired, plan, providers, healthChecks, redact, warnings: loaded.warnings ?? [], clouds };
}

/**
 * Every real deploy is a task from its first step, so a manifest error or a refused prompt is
 * recorded like any other outcome: `director tasks` tells the whole story.
 */
export async function prepareInTask(ctx: DirectorContext, taskId: number, input: DeployInput): Promise<Prepared> {
  try {
    return await prepare(ctx, input);
  } catch (err) {
    const e = err instanceof DirectorError ? err : new DirectorError('internal', 'internal', err instanceof Error ? err.message : String(err), { cause: err });
    const where = e.location?.file ? `${e.location.file}${e.location.line ? `:${e.location.line}` : ''}: ` : '';
    const message = where && !e.message.startsWith(where.slice(0, -2)) ? where + e.message : e.message;
    ctx.tasks.addEvent(taskId, 'prepare', null, 'failed', message);
    ctx.tasks.finish(taskId, 'error', null, { ...taskErrorOf(e), message });
    throw err;
  }
}

export interface DeployOutcome {
  taskId: number | null;
  plan: Plan;
  result: RolloutResult | null;
}

export async function deploy(
  ctx: DirectorContext,
  prepared: Prepared,
  opts: { taskId?: number; onEvent?: (e: EventRow) => void; onTask?: (id: number) => void; ssh?: SshConnector; signal?: AbortSignal } = {},
): Promise<DeployOutcome> {
  const { desired, plan } = prepared;
  const taskId = opts.taskId ?? ctx.tasks.create('deploy', desired.deployment, `deploy ${desired.deployment}`);
  ctx.tasks.setDeployment(taskId, desired.deployment);
  opts.onTask?.(taskId);
  const emit = (stage: string, state: string, message: string | null = null, data: Record<string, unknown> | null = null) => {
    opts.onEvent?.(ctx.tasks.addEvent(taskId, stage, null, state, message, data));
  };
  try {
    return await withDeploymentLock(ctx.locks, ctx.tasks, desired.deployment, taskId, async () => {
      // The plan shown may be minutes old (a person read it): refuse it if what runs has changed.
      const fresh = makePlan(desired, (await observe(ctx, prepared.providers, desired.deployment, prepared.clouds)).observed);
      if (fresh.observedFingerprint !== plan.observedFingerprint) {
        throw userError('plan_stale', `the deployment changed since this plan was made (observed ${plan.observedFingerprint}, now ${fresh.observedFingerprint})`, { hint: 'run the command again to see the new plan' });
      }
      ctx.store.upsertDeployment(desired.deployment, prepared.loaded.manifestFile, prepared.loaded.cloudConfigFile, prepared.loaded.cloudConfig.clouds);
      emit('plan', 'finished', `${summaryLine(plan)}`, { summary: plan.summary, etaMs: plan.etaMs });
      if (plan.noop) {
        emit('deploy', 'finished', 'no changes');
        ctx.tasks.finish(taskId, 'done', 'no changes');
        return { taskId, plan, result: { ok: true, done: [], failed: [], skipped: [], cancelled: false, rolledBack: [], rollbackFailed: [], notRolledBack: [] } };
      }
      const executor = new RolloutExecutor({
        store: ctx.store,
        tasks: ctx.tasks,
        taskId,
        clock: ctx.clock,
        providers: prepared.providers,
        connector: instanceConnector(prepared.providers, ctx.keys.privateKey, opts.ssh),
        keys: ctx.keys,
        directorId: ctx.directorId,
        loaded: prepared.loaded,
        releases: prepared.releases,
        desired,
        healthChecks: prepared.healthChecks,
        redact: prepared.redact,
        onEvent: opts.onEvent,
        cancelRequested: () => ctx.tasks.isCancelRequested(taskId),
      });
      const onAbort = () => executor.cancel();
      opts.signal?.addEventListener('abort', onAbort, { once: true });
      if (opts.signal?.aborted) executor.cancel();
      const result = await executor.run(plan).finally(() => opts.signal?.removeEventListener('abort', onAbort));
      finishDeployTask(ctx, taskId, result, emit);
      return { taskId, plan, result };
    });
  } catch (err) {
    const e = err instanceof DirectorError ? err : new DirectorError('internal', 'internal', err instanceof Error ? err.message : String(err), { cause: err });
    emit('deploy', 'failed', prepared.redact(e.message));
    ctx.tasks.finish(taskId, 'error', null, taskErrorOf(e));
    throw e;
  } finally {
    await prepared.providers.closeAll();
  }
}

function finishDeployTask(ctx: DirectorContext, taskId: number, result: RolloutResult, emit: (stage: string, state: string, message?: string | null) => void): void {
  if (result.ok) {
    emit('deploy', 'finished', `${result.done.length} instance(s) updated`);
    ctx.tasks.finish(taskId, 'done', `${result.done.length} instance(s) updated`);
    return;
  }
  const first = result.failed[0];
  if (!first) {
    const msg = `cancelled: ${result.done.length} instance(s) updated, ${result.skipped.length} not started`;
    emit('deploy', 'cancelled', msg);
    ctx.tasks.finish(taskId, 'cancelled', msg);
    return;
  }
  const ranRollback = result.rolledBack.length + result.rollbackFailed.length + result.notRolledBack.length > 0;
  const rollback = ranRollback
    ? `; rolled back ${result.rolledBack.length} instance(s)${result.rollbackFailed.length ? `, ${result.rollbackFailed.length} rollback(s) failed (${result.rollbackFailed.map((f) => f.instance).join(', ')})` : ''}${result.notRolledBack.length ? `, ${result.notRolledBack.length} not restorable (${result.notRolledBack.map((n) => n.instance).join(', ')})` : ''}`
    : '';
  emit('deploy', 'failed', `${first.instance} failed at ${first.step}; ${result.skipped.length} instance(s) not started${rollback}`);
  const error = taskErrorFromFailure(first, `director task ${taskId} --vm ${first.instance} shows that instance's full log; fix the cause and deploy again (unchanged instances are skipped)`);
  error.message += rollback;
  if (ranRollback) {
    error.rollback = { rolledBack: result.rolledBack, failed: result.rollbackFailed.map((f) => f.instance), notRestorable: result.notRolledBack };
  }
  ctx.tasks.finish(taskId, 'error', null, error);
}

export function summaryLine(plan: Plan): string {
  const s = plan.summary;
  const parts = (['create', 'update', 'recreate', 'restart', 'delete'] as const).filter((k) => s[k] > 0).map((k) => `${s[k]} to ${k}`);
  return parts.length ? parts.join(', ') + (s.none ? `, ${s.none} unchanged` : '') : 'no changes';
}

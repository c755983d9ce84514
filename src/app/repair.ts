/**
 * `director repair`: compares the deployed manifest, the director's records and what each cloud
 * lists; probes every instance (SSH, job state, health, file checksums); reports the problems;
 * and, unless it is a dry run or a meltdown, fixes what is safe through the rollout executor
 * (same window, locks, task log). The manifest is the one the deployment was last deployed from,
 * so repair converges to what was deployed, never to an edited file nobody deployed yet.
 */
import pLimit from 'p-limit';
import { DirectorError, userError } from '../errors.js';
import { instanceConnector } from '../instance/routing.js';
import { resolveCount } from '../plan/plan.js';
import type { Desired, Plan } from '../plan/types.js';
import { TAG_DEPLOYMENT, TAG_DIRECTOR } from '../providers/provider.js';
import { generationOf, renderInstance } from '../release/generation.js';
import { effectiveProperties } from '../release/render.js';
import { classify, downInstances, isMeltdown, repairPlan, type InstanceProbe, type OrphanVm, type Problem } from '../repair/classify.js';
import { RolloutExecutor, type RolloutResult } from '../rollout/executor.js';
import { Ssh2Connector } from '../ssh/connection.js';
import { withDeploymentLock } from '../tasks/locks.js';
import { taskErrorOf, type EventRow } from '../tasks/tasks.js';
import type { DirectorContext } from './context.js';
import { prepare, type Prepared } from './deploy.js';

export interface RepairOptions {
  dryRun: boolean;
  deleteOrphans: boolean;
  vars?: Record<string, string>;
  varsFiles?: string[];
  onEvent?: (e: EventRow) => void;
  onTask?: (id: number) => void;
}

export interface RepairOutcome {
  taskId: number;
  problems: Problem[];
  meltdown: boolean;
  /** the deployment was locked (a deploy is running): nothing was checked */
  skipped: string | null;
  /** instances whose fix failed */
  unrepaired: string[];
  /** 0 clean or all repaired; 2 drift found (dry run); 1 something not repaired; 3 skipped */
  exitCode: number;
}

export async function repair(ctx: DirectorContext, name: string, opts: RepairOptions): Promise<RepairOutcome> {
  const dep = ctx.store.deployment(name);
  if (!dep) {
    const known = ctx.store.deployments().map((d) => d.name);
    throw userError('deployment_unknown', `no deployment named '${name}'`, { hint: known.length ? `deployments: ${known.join(', ')}` : 'deploy it first' });
  }
  const taskId = ctx.tasks.create('repair', name, `${opts.dryRun ? 'check' : 'repair'} ${name}`);
  opts.onTask?.(taskId);
  const emit = (stage: string, instance: string | null, state: string, message: string | null = null, data: Record<string, unknown> | null = null) =>
    opts.onEvent?.(ctx.tasks.addEvent(taskId, stage, instance, state, message, data));
  let prepared: Prepared | null = null;
  try {
    prepared = await prepare(ctx, { manifestPath: dep.manifestFile, cloudConfigPath: dep.cloudConfigFile, vars: opts.vars, varsFiles: opts.varsFiles });
    const p = prepared;
    return await withDeploymentLock(ctx.locks, ctx.tasks, name, taskId, async () => {
      const { problems, probes } = await detect(ctx, p, opts.deleteOrphans, (pr) => emit('detect', pr.instance, 'found', `${pr.type}: ${pr.detail}`, { ...pr }));
      const down = downInstances(problems);
      const total = p.desired.groups.reduce((n, g) => n + g.instances, 0);
      const meltdown = isMeltdown(down.length, total, p.loaded.manifest.repair);
      emit('detect', null, 'finished', problems.length ? `${problems.length} problem(s): ${summarize(problems)}` : 'no drift', { problems: problems.length, down: down.length, total });
      if (opts.dryRun || problems.length === 0) {
        ctx.tasks.finish(taskId, 'done', problems.length ? `${problems.length} problem(s) found${meltdown ? ' (meltdown: a repair would not act)' : ''}` : 'no drift');
        return { taskId, problems, meltdown, skipped: null, unrepaired: [], exitCode: problems.length ? 2 : 0 };
      }
      if (meltdown) {
        const t = p.loaded.manifest.repair;
        const message = `meltdown: ${down.length} of ${total} instances are down at once (threshold: at least ${t.meltdownMinInstances} and ${t.meltdownMinPercent}%); repairing nothing automatically`;
        emit('repair', null, 'failed', message, { down });
        ctx.tasks.finish(taskId, 'error', null, { code: 'meltdown', class: 'infrastructure', message, hint: 'mass failure usually means the network or the cloud is broken; fix that, then run repair again (or raise repair.meltdown_min_* in the manifest)' });
        return { taskId, problems, meltdown, skipped: null, unrepaired: down, exitCode: 1 };
      }
      const unrepaired = await fix(ctx, p, taskId, problems, probes, opts, emit);
      const notFixable = problems.filter((pr) => pr.fix === 'none');
      const left = [...unrepaired, ...notFixable.map((pr) => pr.instance ?? pr.cid ?? pr.type)];
      const result = `${problems.length - notFixable.length - unrepaired.length} repaired, ${unrepaired.length} failed, ${notFixable.length} left for an operator`;
      if (left.length === 0) ctx.tasks.finish(taskId, 'done', result);
      else ctx.tasks.finish(taskId, 'error', null, { code: 'repair_incomplete', class: unrepaired.length ? 'infrastructure' : 'user', message: `${result}: ${left.join(', ')}`, hint: notFixable.length ? 'missing or extra instances are fixed by director deploy; orphan VMs by repair --delete-orphans' : `director task ${taskId} shows why` });
      emit('repair', null, left.length ? 'failed' : 'finished', result);
      return { taskId, problems, meltdown, skipped: null, unrepaired, exitCode: left.length ? 1 : 0 };
    });
  } catch (err) {
    if (err instanceof DirectorError && err.code === 'deployment_locked') {
      const message = `skipped: ${err.message}`;
      emit('repair', null, 'skipped', message);
      ctx.tasks.finish(taskId, 'cancelled', message);
      return { taskId, problems: [], meltdown: false, skipped: err.message, unrepaired: [], exitCode: 3 };
    }
    const e = err instanceof DirectorError ? err : new DirectorError('internal', 'internal', err instanceof Error ? err.message : String(err), { cause: err });
    if (ctx.tasks.get(taskId)?.state === 'processing') ctx.tasks.finish(taskId, 'error', null, taskErrorOf(e));
    throw err;
  } finally {
    await prepared?.providers.closeAll();
  }
}

export type InstanceHealth = 'healthy' | 'failing' | 'drifted' | 'unresponsive' | 'missing';

/**
 * Live health per instance, read-only (no task, no lock): the same probes repair makes (SSH,
 * job state, health checks, file checksums), against the manifest last deployed.
 */
export async function instanceHealth(ctx: DirectorContext, name: string, opts: { vars?: Record<string, string>; varsFiles?: string[] } = {}): Promise<Map<string, { health: InstanceHealth; detail: string }>> {
  const dep = ctx.store.deployment(name);
  if (!dep) throw userError('deployment_unknown', `no deployment named '${name}'`);
  const p = await prepare(ctx, { manifestPath: dep.manifestFile, cloudConfigPath: dep.cloudConfigFile, vars: opts.vars, varsFiles: opts.varsFiles });
  try {
    const { problems, probes } = await detect(ctx, p, false, () => {});
    const rank: Record<string, InstanceHealth> = { missing_vm: 'missing', unresponsive_vm: 'unresponsive', job_down: 'failing', config_drift: 'drifted' };
    const out = new Map<string, { health: InstanceHealth; detail: string }>(probes.map((pr) => [pr.instance, { health: 'healthy', detail: '' }]));
    for (const pr of problems) {
      const health = pr.instance ? rank[pr.type] : undefined;
      if (pr.instance && health && out.get(pr.instance)?.health === 'healthy') out.set(pr.instance, { health, detail: pr.detail });
    }
    return out;
  } finally {
    await p.providers.closeAll();
  }
}

const summarize = (problems: Problem[]) => {
  const counts = new Map<string, number>();
  for (const p of problems) counts.set(p.type, (counts.get(p.type) ?? 0) + 1);
  return [...counts].map(([t, n]) => `${n} ${t}`).join(', ');
};

async function detect(ctx: DirectorContext, p: Prepared, deleteOrphans: boolean, onProblem: (p: Problem) => void): Promise<{ problems: Problem[]; probes: InstanceProbe[] }> {
  const name = p.desired.deployment;
  const clouds = new Set([...ctx.store.instances(name).map((r) => r.cloud), ...p.clouds]);
  const listed = new Map<string, { cloud: string; cid: string; tags: Record<string, string> }>();
  for (const cloud of clouds) {
    for (const vm of await p.providers.get(cloud).list({ [TAG_DIRECTOR]: ctx.directorId, [TAG_DEPLOYMENT]: name })) listed.set(`${cloud}/${vm.cid}`, { cloud, cid: vm.cid, tags: vm.tags });
  }
  const recorded = new Set(ctx.store.vms(name).map((v) => `${v.cloud}/${v.cid}`));
  const orphans: OrphanVm[] = [...listed.entries()].filter(([key]) => !recorded.has(key)).map(([, v]) => v);
  // Short SSH patience: an unresponsive VM is a finding, not something to wait minutes for.
  const connector = instanceConnector(p.providers, ctx.keys.privateKey, new Ssh2Connector({ connectAttempts: 2, readyTimeoutMs: 5000 }));
  const planByInstance = new Map(p.plan.instances.map((i) => [i.instance, i]));
  const limit = pLimit(16);
  const probes = await Promise.all(
    ctx.store.instances(name).map((row) =>
      limit(async (): Promise<InstanceProbe> => {
        const instance = `${row.group}/${row.index}`;
        const planned = planByInstance.get(instance);
        // Reasons that only say the VM is gone or unfinished do not mean the manifest moved on.
        const manifestAhead = planned !== undefined && planned.reasons.some((r) => !['missing_vm', 'failed', 'unfinished'].includes(r.code));
        const probe: InstanceProbe = { id: row.id, instance, group: row.group, index: row.index, az: row.az, cloud: row.cloud, cid: row.vmCid, vmListed: false, reachable: null, jobsDown: [], healthFailures: [], driftedFiles: null, manifestAhead };
        const vm = row.vmCid ? ctx.store.vm(row.cloud, row.vmCid) : null;
        if (!vm || !listed.has(`${row.cloud}/${vm.cid}`)) return probe;
        probe.vmListed = true;
        let handle;
        try {
          handle = await connector.open(vm, { label: instance, baseDir: vm.baseDir ?? p.providers.baseDir(row.cloud), log: () => {} });
        } catch (err) {
          return { ...probe, reachable: false, unreachableDetail: err instanceof Error ? err.message : String(err) };
        }
        try {
          probe.reachable = true;
          const status = await handle.status();
          probe.jobsDown = status.filter((s) => s.state !== 'running').map((s) => s.job);
          if (status.length === 0) probe.jobsDown = ['(no jobs installed)'];
          const ig = p.loaded.manifest.instanceGroups.find((g) => g.name === row.group);
          if (probe.jobsDown.length === 0 && ig) {
            const properties: Record<string, unknown> = {};
            for (const ref of ig.jobs) Object.assign(properties, effectiveProperties(p.releases.get(ref.release)!.jobs.get(ref.name)!, ref.properties, ig.name));
            const results = await Promise.all((p.healthChecks.get(row.group) ?? []).map((c) => handle.check(c, { address: vm.ips[0] ?? vm.sshHost, properties })));
            probe.healthFailures = results.filter((r) => !r.ok).map((r) => r.detail);
          }
          // Files can only be compared when the manifest still renders what was deployed.
          if (ig && handle.fileChecksums && planned?.action === 'none') {
            const expected = generationOf(renderInstance(ig.jobs, p.releases, { deployment: name, name: row.group, index: row.index, id: row.id, az: row.az, address: vm.ips[0] ?? vm.sshHost })).checksums;
            const actual = await handle.fileChecksums();
            const paths = new Set([...Object.keys(expected), ...Object.keys(actual)]);
            probe.driftedFiles = [...paths].filter((f) => expected[f] !== actual[f]).sort();
          }
        } catch (err) {
          probe.healthFailures.push(`probe failed: ${err instanceof Error ? err.message : String(err)}`);
        } finally {
          handle.close();
        }
        return probe;
      }),
    ),
  );
  const problems = classify(probes, p.desired, orphans, deleteOrphans);
  problems.forEach(onProblem);
  return { problems, probes };
}

async function fix(ctx: DirectorContext, p: Prepared, taskId: number, problems: Problem[], probes: InstanceProbe[], opts: RepairOptions, emit: (stage: string, instance: string | null, state: string, message?: string | null) => void): Promise<string[]> {
  const unrepaired: string[] = [];
  for (const orphan of problems.filter((pr) => pr.type === 'orphan_vm' && pr.fix === 'delete')) {
    try {
      await p.providers.get(orphan.cloud!).delete(orphan.cid!);
      emit('repair', null, 'finished', `deleted orphan VM ${orphan.cid}`);
    } catch (err) {
      unrepaired.push(orphan.cid!);
      emit('repair', null, 'failed', `deleting orphan VM ${orphan.cid} failed: ${err instanceof Error ? err.message : String(err)}`);
    }
  }
  // Repair never halts on one instance and never rolls back: each instance is fixed on its own.
  const desired: Desired = { ...p.desired, groups: p.desired.groups.map((g) => ({ ...g, update: { ...g.update, autoRollback: false, maxFailures: Number.MAX_SAFE_INTEGER } })) };
  const mif = (group: string) => {
    const g = desired.groups.find((d) => d.name === group)!;
    return resolveCount(g.update.maxInFlight, g.instances, 1);
  };
  const run = (plan: Plan): Promise<RolloutResult> =>
    new RolloutExecutor({
      store: ctx.store, tasks: ctx.tasks, taskId, clock: ctx.clock, providers: p.providers,
      connector: instanceConnector(p.providers, ctx.keys.privateKey, new Ssh2Connector({ connectAttempts: 3 })),
      keys: ctx.keys, directorId: ctx.directorId, loaded: p.loaded, releases: p.releases, desired, healthChecks: p.healthChecks,
      redact: p.redact, onEvent: opts.onEvent,
    }).run(plan);
  const first = repairPlan(problems, probes, desired, mif, p.plan.observedFingerprint);
  if (first.noop) return unrepaired;
  const result = await run(first);
  // A restart that did not heal the job: the VM itself is suspect, so recreate it.
  const restartsFailed = result.failed.filter((f) => first.instances.find((i) => i.instance === f.instance)?.action === 'restart').map((f) => f.instance);
  let failed = result.failed.map((f) => f.instance).filter((i) => !restartsFailed.includes(i));
  if (restartsFailed.length) {
    emit('repair', null, 'started', `restart did not heal ${restartsFailed.join(', ')}: recreating`);
    const again = repairPlan(
      restartsFailed.map((i) => ({ type: 'unresponsive_vm', instance: i, cloud: null, cid: null, detail: 'restart did not heal the job', fix: 'recreate' })),
      probes.filter((pr) => restartsFailed.includes(pr.instance)),
      desired,
      mif,
      p.plan.observedFingerprint,
    );
    const second = await run(again);
    failed = [...failed, ...second.failed.map((f) => f.instance)];
  }
  return [...unrepaired, ...failed];
}

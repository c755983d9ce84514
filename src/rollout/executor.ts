/**
 * Runs a Plan. It never re-decides what should change: it walks the plan's deletes, then each
 * group's canaries, then the rest through a sliding window of max_in_flight (the next instance
 * starts the moment one finishes). Every step is recorded before the next begins, so a killed
 * director leaves a state the next run can re-check.
 *
 * On a failure beyond max_failures no new instance starts and the ones in flight finish. Then,
 * with auto_rollback, the touched instances are restored to what they ran before: a second
 * plan, in reverse order, without canaries, through the same window. A cancel stops starting
 * new work the same way but keeps what finished.
 */
import { randomUUID } from 'node:crypto';
import pLimit from 'p-limit';
import { DirectorError, infraError } from '../errors.js';
import { watchHealth } from '../health/checks.js';
import { StepError, type InstanceConnector, type InstanceHandle, type InstanceStep } from '../instance/driver.js';
import type { HealthCheckDef, LoadedDeployment, WatchTime } from '../manifest/types.js';
import { describeInstance } from '../plan/describe.js';
import { resolveCount } from '../plan/plan.js';
import type { AppliedSpec, Desired, DesiredGroup, GroupPlan, InstancePlan, Plan } from '../plan/types.js';
import {
  TAG_CREATED_AT,
  TAG_DEPLOYMENT,
  TAG_DIRECTOR,
  TAG_GROUP,
  TAG_INDEX,
  TAG_INSTANCE_ID,
} from '../providers/provider.js';
import type { ProviderSet } from '../providers/registry.js';
import { generationOf, renderInstance } from '../release/generation.js';
import { effectiveProperties } from '../release/render.js';
import type { Release } from '../release/release.js';
import type { InstanceRow, Store, VmRow } from '../state/store.js';
import type { EventRow, TaskError, Tasks } from '../tasks/tasks.js';
import type { Clock } from '../util/clock.js';
import { instanceLog, type InstanceLog } from './instance-log.js';

export interface RolloutDeps {
  store: Store;
  tasks: Tasks;
  taskId: number;
  clock: Clock;
  providers: ProviderSet;
  connector: InstanceConnector;
  keys: { publicKey: string };
  directorId: string;
  loaded: LoadedDeployment;
  releases: Map<string, Release>;
  desired: Desired;
  healthChecks: Map<string, HealthCheckDef[]>;
  redact: (s: string) => string;
  onEvent?: (e: EventRow) => void;
  newId?: () => string;
  /** deletes run this many at a time (default: the first group's max_in_flight) */
  deleteInFlight?: number;
  /** polled before each instance starts: `director cancel N` from another process */
  cancelRequested?: () => boolean;
}

export interface InstanceFailure {
  instance: string;
  step: InstanceStep;
  errorClass: string;
  code: string;
  message: string;
  logTail: string[];
}

export interface RolloutResult {
  ok: boolean;
  done: string[];
  failed: InstanceFailure[];
  /** instances the plan wanted to touch but the halt or cancel kept untouched */
  skipped: string[];
  cancelled: boolean;
  /** restored to what they ran before the rollout (or deleted, if the rollout created them) */
  rolledBack: string[];
  rollbackFailed: InstanceFailure[];
  /** touched instances a rollback cannot restore, with why */
  notRolledBack: { instance: string; reason: string }[];
}

/** What an instance was before this rollout touched it: the rollback target. */
interface Touched {
  plan: InstancePlan;
  rowId: string | null;
  before: AppliedSpec | null;
  window: WatchTime;
  group: DesiredGroup;
  /** a create-swap-delete that failed before the swap: the old VM never stopped serving */
  swapIntact?: boolean;
}

export class RolloutExecutor {
  private halted = false;
  private cancelled = false;
  private readonly touched: Touched[] = [];
  /** max_failures is each group's own budget */
  private readonly failuresByGroup = new Map<string, number>();
  /** instances being worked on, with their current step, for progress_deadline reports */
  private readonly inFlight = new Map<string, InstanceStep>();
  /** instances still stuck when the progress deadline passed: not waited for, not rolled back */
  private readonly abandoned = new Set<string>();
  private lastProgress = 0;
  private readonly result: RolloutResult = { ok: true, done: [], failed: [], skipped: [], cancelled: false, rolledBack: [], rollbackFailed: [], notRolledBack: [] };

  constructor(private readonly d: RolloutDeps) {}

  /** Ctrl-C: start nothing new, let in-flight instances finish, keep what is done. */
  cancel(): void {
    if (this.cancelled) return;
    this.cancelled = true;
    this.emit('cancel', null, 'started', 'cancelling: no new instances will start; in-flight ones finish');
  }

  private emit(stage: string, instance: string | null, state: string, message: string | null = null, data: Record<string, unknown> | null = null) {
    const e = this.d.tasks.addEvent(this.d.taskId, stage, instance, state, message === null ? null : this.d.redact(message), data);
    this.d.onEvent?.(e);
  }

  private stopping(): boolean {
    if (!this.cancelled && this.d.cancelRequested?.()) this.cancel();
    return this.halted || this.cancelled;
  }

  async run(plan: Plan): Promise<RolloutResult> {
    const byName = new Map(plan.instances.map((p) => [p.instance, p]));
    const deletes = plan.instances.filter((p) => p.action === 'delete');
    let failingGroup: DesiredGroup | null = null;
    if (plan.strayVms.length) {
      this.emit('cleanup', null, 'started', `deleting ${plan.strayVms.length} stray VM(s) left by an interrupted run`);
      await Promise.all(plan.strayVms.map(async (stray) => {
        const vm = this.d.store.vm(stray.cloud, stray.cid);
        const log = instanceLog(this.d.tasks, this.d.taskId, stray.instance ?? stray.cid, this.d.redact);
        try {
          if (vm) await this.destroyVm(vm, stray.instance ?? stray.cid, log);
        } finally {
          log.flush();
        }
      }));
    }
    if (deletes.length) {
      const limit = this.d.deleteInFlight ?? resolveCount(this.d.desired.groups[0]?.update.maxInFlight ?? { kind: 'abs', value: 1 }, deletes.length, 1);
      this.emit('delete', null, 'started', `deleting ${deletes.length} instance(s)`);
      await this.window(deletes, limit, (p) => this.deleteInstance(p), { group: '(deletes)', maxFailures: 0 });
    }
    // BOSH's `serial` (BatchMultiInstanceGroupUpdater): consecutive groups with the same value form
    // a partition; partitions run in order; a serial: false partition rolls its groups together.
    const serial = (gp: GroupPlan) => this.d.desired.groups.find((g) => g.name === gp.name)!.update.serial;
    const partitions: GroupPlan[][] = [];
    for (const gp of plan.groups) {
      const last = partitions[partitions.length - 1];
      if (last && serial(last[0]!) === serial(gp)) last.push(gp);
      else partitions.push([gp]);
    }
    for (const partition of partitions) {
      if (serial(partition[0]!)) {
        for (const gp of partition) {
          const failed = await this.runGroup(gp, byName);
          failingGroup ??= failed;
        }
      } else {
        const failed = await Promise.all(partition.map((gp) => this.runGroup(gp, byName)));
        failingGroup ??= failed.find((g) => g !== null) ?? null;
      }
    }
    this.result.cancelled = this.cancelled;
    this.result.ok = this.result.failed.length === 0 && !this.cancelled;
    if (this.halted && failingGroup) {
      if (failingGroup.update.autoRollback) await this.rollback(failingGroup);
      else this.emit('rollback', null, 'skipped', 'auto_rollback is false: touched instances keep what they have; deploy the previous manifest to restore them');
    }
    return this.result;
  }

  /** Canaries, then the sliding window; returns the group if it is the one that halted the rollout. */
  private async runGroup(gp: GroupPlan, byName: Map<string, InstancePlan>): Promise<DesiredGroup | null> {
    const group = this.d.desired.groups.find((g) => g.name === gp.name)!;
    const order = gp.order.map((n) => byName.get(n)!);
    if (order.length === 0) return null;
    if (this.stopping()) {
      this.result.skipped.push(...gp.order);
      return null;
    }
    const canaries = order.slice(0, gp.canaries);
    const rest = order.slice(gp.canaries);
    const failedBefore = this.result.failed.length;
    if (canaries.length) {
      this.emit('canaries', null, 'started', `${gp.name}: ${canaries.length} canar${canaries.length === 1 ? 'y' : 'ies'} (${canaries.map((c) => `${c.instance} ${c.cloud}/${c.az}`).join(', ')})`, { group: gp.name, instances: canaries.map((c) => c.instance) });
      await this.window(canaries, gp.maxInFlight, (p) => this.updateInstance(p, group, gp.canaryWatch), { group: gp.name, maxFailures: group.update.maxFailures, progressDeadlineMs: group.update.progressDeadlineMs });
    }
    if (rest.length && !this.stopping()) {
      this.emit('rollout', null, 'started', `${gp.name}: ${rest.length} instance(s), max_in_flight ${gp.maxInFlight}`, { group: gp.name });
    }
    await this.window(rest, gp.maxInFlight, (p) => this.updateInstance(p, group, gp.updateWatch), { group: gp.name, maxFailures: group.update.maxFailures, progressDeadlineMs: group.update.progressDeadlineMs });
    return this.halted && this.result.failed.slice(failedBefore).some((f) => order.some((o) => o.instance === f.instance)) ? group : null;
  }

  /** Sliding window: at most `size` in flight; after a halt or cancel, queued instances are skipped. */
  private async window(list: InstancePlan[], size: number, work: (p: InstancePlan) => Promise<InstanceFailure | null>, budget: { group: string; maxFailures: number; progressDeadlineMs?: number }) {
    const limit = pLimit(Math.max(1, size));
    this.lastProgress = this.d.clock.now();
    const all = Promise.all(
      list.map((p) =>
        limit(async () => {
          if (this.stopping()) {
            this.result.skipped.push(p.instance);
            return;
          }
          this.inFlight.set(p.instance, 'connect');
          const failure = await work(p);
          this.inFlight.delete(p.instance);
          this.lastProgress = this.d.clock.now();
          if (this.abandoned.has(p.instance)) return;
          if (failure) {
            this.result.failed.push(failure);
            const failures = (this.failuresByGroup.get(budget.group) ?? 0) + 1;
            this.failuresByGroup.set(budget.group, failures);
            if (failures > budget.maxFailures && !this.halted) {
              this.halted = true;
              this.emit('halt', p.instance, 'failed', `halting: ${p.instance} failed at ${failure.step}; no new instances will start`, { failure });
            }
          } else {
            this.result.done.push(p.instance);
          }
        }),
      ),
    );
    if (budget.progressDeadlineMs === undefined) {
      await all;
      return;
    }
    let finished = false;
    await Promise.race([all.then(() => { finished = true; }), this.watchProgress(budget.progressDeadlineMs, () => finished)]);
  }

  /**
   * progress_deadline: when no instance finishes for that long, the rollout fails instead of
   * stalling silently. The stuck instances are reported with the step they are in and left to
   * their own timeouts; nothing new starts, and the rollback does not touch them.
   */
  private async watchProgress(deadlineMs: number, done: () => boolean): Promise<void> {
    while (!done()) {
      const idle = this.d.clock.now() - this.lastProgress;
      if (idle >= deadlineMs && this.inFlight.size > 0) {
        this.halted = true;
        for (const [instance, step] of this.inFlight) {
          this.abandoned.add(instance);
          this.result.failed.push({ instance, step, errorClass: 'infrastructure', code: 'progress_deadline_exceeded', message: `no instance finished for ${deadlineMs} ms (progress_deadline); ${instance} is still at ${step}`, logTail: [] });
        }
        this.emit('halt', null, 'failed', `progress_deadline of ${deadlineMs} ms passed with no instance finishing; stuck: ${[...this.inFlight].map(([i, st]) => `${i} at ${st}`).join(', ')}`);
        return;
      }
      await this.d.clock.sleep(Math.max(1, Math.min(1000, deadlineMs - idle)));
    }
  }

  private failure(p: { instance: string }, step: InstanceStep, err: unknown, log: InstanceLog): InstanceFailure {
    const e = err instanceof DirectorError ? err : infraError('internal', err instanceof Error ? err.message : String(err), { cause: err });
    const logTail = err instanceof StepError && err.logTail.length ? err.logTail : log.tail(10);
    return {
      instance: p.instance,
      step: err instanceof StepError ? err.step : step,
      errorClass: e.errorClass,
      code: e.code,
      message: this.d.redact(e.message),
      logTail: logTail.map(this.d.redact),
    };
  }

  private async updateInstance(p: InstancePlan, group: DesiredGroup, watch: WatchTime): Promise<InstanceFailure | null> {
    const log = instanceLog(this.d.tasks, this.d.taskId, p.instance, this.d.redact);
    const started = this.d.clock.now();
    this.emit('update', p.instance, 'started', `${p.action}${p.canary ? ' (canary)' : ''}: ${describeInstance(p)}`, { action: p.action, canary: p.canary, wave: p.wave, az: p.az, cloud: p.cloud });
    log('director', `${p.action} ${p.instance} (${p.cloud}/${p.az}): ${describeInstance(p)}`);
    let step: InstanceStep = 'connect';
    let handle: InstanceHandle | null = null;
    let row: InstanceRow | null = p.id ? this.d.store.instance(p.id) : null;
    const touched: Touched = { plan: p, rowId: row?.id ?? null, before: row?.applied ?? null, window: watch, group };
    this.touched.push(touched);
    const stepEvent = (s: InstanceStep) => {
      step = s;
      if (this.inFlight.has(p.instance)) this.inFlight.set(p.instance, s);
      this.emit('update', p.instance, 'step', s);
    };
    try {
      if (p.action === 'recreate' && row && row.vmCid && group.update.vmStrategy === 'create-swap-delete') {
        return await this.swapInstance(p, group, watch, row, touched, log, started, stepEvent);
      }
      if (p.action === 'recreate' && row) {
        await this.teardownVm(row, log);
        row = this.d.store.instance(row.id);
      }
      let vm: VmRow;
      if (p.action === 'create' || p.action === 'recreate') {
        if (!row) {
          const id = (this.d.newId ?? randomUUID)();
          this.d.store.insertInstance({ id, deployment: this.d.desired.deployment, group: p.group, index: p.index, az: p.az, cloud: p.cloud, vmCid: null, state: 'creating', applied: null, previous: null, error: null });
          row = this.d.store.instance(id)!;
          touched.rowId = id;
        } else {
          if (row.vmCid) {
            // The cloud lost this VM (missing_vm): forget it, and make sure it is really gone.
            await this.deleteFromCloud(row.cloud, row.vmCid, log).catch(() => undefined);
            this.d.store.deleteVm(row.cloud, row.vmCid);
          }
          this.d.store.updateInstance(row.id, { state: 'creating', az: p.az, cloud: p.cloud, vmCid: null });
        }
        stepEvent('create_vm');
        vm = await this.createVm(row, p, group, log);
      } else {
        this.d.store.updateInstance(row!.id, { state: 'updating' });
        const found = row!.vmCid ? this.d.store.vm(row!.cloud, row!.vmCid) : null;
        if (!found) throw new StepError('connect', 'infrastructure', 'vm_not_recorded', `no VM is recorded for ${p.instance}`);
        vm = found;
      }
      const instanceRow = row!;

      stepEvent('connect');
      handle = await this.open(vm, p.instance, log);
      const generation = await this.bringUp(handle, p, group, vm, instanceRow.id, watch, log, stepEvent);
      if (p.action === 'restart') {
        // The VM still runs what was applied before: only its state changes.
        this.d.store.updateInstance(instanceRow.id, { state: 'running', error: null });
      } else {
        const applied: AppliedSpec = { az: p.az, cloud: p.cloud, vmType: group.vmType, vmTypeDigest: group.vmTypeDigest, jobs: group.jobs, generation };
        const previous = instanceRow.applied ?? instanceRow.previous;
        this.d.store.updateInstance(instanceRow.id, { state: 'running', applied, previous, error: null });
      }
      this.emit('update', p.instance, 'finished', `${p.action} done in ${this.d.clock.now() - started} ms`, { durationMs: this.d.clock.now() - started });
      return null;
    } catch (err) {
      const f = this.failure(p, step, err, log);
      log('director', `FAILED at ${f.step}: ${f.message}`);
      if (row) this.d.store.updateInstance(row.id, { state: 'failed', error: `${f.step}: ${f.message}` });
      this.emit('update', p.instance, 'failed', `${f.step}: ${f.message}`, { ...f, durationMs: this.d.clock.now() - started });
      return f;
    } finally {
      handle?.close();
      log.flush();
    }
  }

  /** install → (drain → stop, in place) → apply → start → health; returns the generation applied. */
  private async bringUp(handle: InstanceHandle, p: InstancePlan, group: DesiredGroup, vm: VmRow, instanceId: string, watch: WatchTime, log: InstanceLog, stepEvent: (s: InstanceStep) => void): Promise<string> {
    if (p.action === 'restart') {
      // A restart starts what the VM already runs: nothing is rendered or uploaded.
      const current = this.d.store.instance(instanceId)?.applied?.generation;
      stepEvent('start');
      await handle.start();
      stepEvent('health');
      await this.watch(handle, p.group, vm.ips[0] ?? vm.sshHost, watch, log);
      if (!current) throw new StepError('start', 'infrastructure', 'generation_unknown', `no applied generation is recorded for ${p.instance}`);
      return current;
    }
    stepEvent('install');
    await handle.prepare({ bootHook: this.d.providers.def(p.cloud).type === 'local' });
    if (p.action === 'update') {
      stepEvent('drain');
      await handle.drain();
      stepEvent('stop');
      await handle.stop();
    }
    stepEvent('apply');
    const igManifest = this.d.loaded.manifest.instanceGroups.find((g) => g.name === p.group)!;
    const spec = { deployment: this.d.desired.deployment, name: p.group, index: p.index, id: instanceId, az: p.az, address: vm.ips[0] ?? vm.sshHost };
    const gen = generationOf(renderInstance(igManifest.jobs, this.d.releases, spec));
    await handle.apply({ ...gen, force: p.reasons.some((r) => r.code === 'config_drift') });
    stepEvent('start');
    await handle.start();
    stepEvent('health');
    await this.watch(handle, p.group, spec.address, watch, log);
    return gen.id;
  }

  /**
   * create-swap-delete: the new VM is created and proven healthy while the old one keeps serving;
   * only then does the instance point at the new VM and the old one get drained and deleted. A
   * failure before the swap deletes the new VM and leaves the old one as it was. The new VM is
   * recorded before it is used, so a crash mid-swap leaves a stray the next run deletes.
   */
  private async swapInstance(p: InstancePlan, group: DesiredGroup, watch: WatchTime, row: InstanceRow, touched: Touched, log: InstanceLog, started: number, stepEvent: (s: InstanceStep) => void): Promise<null> {
    const oldVm = this.d.store.vm(row.cloud, row.vmCid!);
    stepEvent('create_vm');
    const newVm = await this.createVm(row, p, group, log, { attach: false });
    let handle: InstanceHandle | null = null;
    let generation: string;
    try {
      stepEvent('connect');
      handle = await this.open(newVm, p.instance, log);
      generation = await this.bringUp(handle, p, group, newVm, row.id, watch, log, stepEvent);
    } catch (err) {
      touched.swapIntact = true;
      log('director', `the new VM failed; deleting it, the old VM ${row.vmCid} keeps serving`);
      await this.destroyVm(newVm, p.instance, log).catch((e: unknown) => log('director', `could not delete the new VM ${newVm.cid}: ${e instanceof Error ? e.message : String(e)}`));
      throw err;
    } finally {
      handle?.close();
    }
    const applied: AppliedSpec = { az: p.az, cloud: p.cloud, vmType: group.vmType, vmTypeDigest: group.vmTypeDigest, jobs: group.jobs, generation };
    this.d.store.updateInstance(row.id, { vmCid: newVm.cid, az: p.az, cloud: p.cloud, state: 'running', applied, previous: row.applied ?? row.previous, error: null });
    stepEvent('delete_vm');
    if (oldVm) await this.destroyVm(oldVm, p.instance, log);
    this.emit('update', p.instance, 'finished', `${p.action} (create-swap-delete) done in ${this.d.clock.now() - started} ms`, { durationMs: this.d.clock.now() - started });
    return null;
  }

  /** Health watch over the window; a job process that died fails at once with its own stderr. */
  private async watch(handle: InstanceHandle, group: string, address: string, window: WatchTime, log: InstanceLog): Promise<void> {
    const checks = this.d.healthChecks.get(group) ?? [];
    const properties = this.checkProperties(group);
    const outcome = await watchHealth(() => Promise.all(checks.map((c) => handle.check(c, { address, properties }))), window, this.d.clock, {
      pollMs: handle.healthPollMs,
      processAlive: async () => {
        const down = (await handle.status()).filter((s) => s.state !== 'running');
        if (down.length === 0) return null;
        const tail = await handle.jobLogTail(down[0]!.job, 10);
        return `job ${down.map((s) => s.job).join(', ')} is not running${tail.length ? `: ${tail[tail.length - 1]}` : ''}`;
      },
    });
    log('director', `health: ${outcome.healthy ? 'healthy' : 'unhealthy'} after ${outcome.elapsedMs} ms: ${outcome.detail}`);
    if (!outcome.healthy) {
      // The job's own stderr says more about why than the director's polling does.
      const firstJob = (await handle.status().catch(() => []))[0]?.job;
      const tail = firstJob ? await handle.jobLogTail(firstJob, 10).catch(() => []) : [];
      throw new StepError('health', 'application', outcome.crashed ? 'job_crashed' : 'health_failed', outcome.crashed ?? `unhealthy after ${outcome.elapsedMs} ms (window ${window.minMs}-${window.maxMs}): ${outcome.detail}`, tail);
    }
  }

  private checkProperties(group: string): Record<string, unknown> {
    const ig = this.d.loaded.manifest.instanceGroups.find((g) => g.name === group);
    const out: Record<string, unknown> = {};
    for (const ref of [...(ig?.jobs ?? [])].reverse()) {
      const job = this.d.releases.get(ref.release)!.jobs.get(ref.name)!;
      for (const [k, v] of Object.entries(effectiveProperties(job, ref.properties, group))) {
        out[k] = v;
        out[`${ref.name}.${k}`] = v;
      }
    }
    return out;
  }

  private async createVm(row: InstanceRow, p: InstancePlan, group: DesiredGroup, log: InstanceLog, opts: { attach: boolean } = { attach: true }): Promise<VmRow> {
    const provider = this.d.providers.get(p.cloud);
    const az = this.d.loaded.cloudConfig.azs.find((a) => a.name === p.az)!;
    const vmType = this.d.loaded.cloudConfig.vmTypes.find((v) => v.name === group.vmType)!;
    const tags = {
      [TAG_DIRECTOR]: this.d.directorId,
      [TAG_DEPLOYMENT]: this.d.desired.deployment,
      [TAG_GROUP]: p.group,
      [TAG_INDEX]: String(p.index),
      [TAG_INSTANCE_ID]: row.id,
      [TAG_CREATED_AT]: new Date(this.d.clock.now()).toISOString(),
    };
    log('director', `creating VM on ${p.cloud}/${p.az} (vm_type ${group.vmType})`);
    let vm;
    try {
      vm = await provider.create({ tags, az: p.az, azCloudProperties: az.cloudProperties, vmType: group.vmType, vmTypeCloudProperties: vmType.cloudProperties, authorizedKey: this.d.keys.publicKey });
    } catch (err) {
      const e = err instanceof DirectorError ? err : infraError('vm_create_failed', String(err), { cause: err });
      throw new StepError('create_vm', 'infrastructure', e.code, `creating a VM on ${p.cloud}/${p.az} failed: ${e.message}`, [], { hint: e.hint, cause: err });
    }
    const vmRow: VmRow = {
      cloud: p.cloud,
      cid: vm.cid,
      deployment: this.d.desired.deployment,
      instanceId: row.id,
      az: p.az,
      ips: vm.ips,
      sshHost: vm.sshHost,
      sshPort: vm.sshPort,
      sshUser: vm.sshUser,
      hostKey: vm.hostKeyFingerprint ?? null,
      baseDir: vm.baseDir ?? null,
      createdAt: vm.createdAt,
    };
    // Recorded before anything else happens to it: a crash from here on leaves a known VM.
    this.d.store.db.transaction(() => {
      this.d.store.recordVm(vmRow);
      if (opts.attach) this.d.store.updateInstance(row.id, { vmCid: vm.cid, az: p.az, cloud: p.cloud });
    })();
    log('director', `VM ${vm.cid} created, ip ${vm.ips.join(', ')}`);
    return vmRow;
  }

  private async open(vm: VmRow, label: string, log: InstanceLog): Promise<InstanceHandle> {
    const handle = await this.d.connector.open(vm, { label, baseDir: vm.baseDir ?? this.d.providers.baseDir(vm.cloud), log });
    if (!vm.hostKey && handle.hostKeyFingerprint) {
      this.d.store.pinHostKey(vm.cloud, vm.cid, handle.hostKeyFingerprint);
      log('director', `pinned host key ${handle.hostKeyFingerprint}`);
    }
    return handle;
  }

  /** Stops the jobs of an instance's VM (best effort: the VM may be broken), deletes it, detaches it. */
  private async teardownVm(row: InstanceRow, log: InstanceLog): Promise<void> {
    if (!row.vmCid) return;
    const vm = this.d.store.vm(row.cloud, row.vmCid);
    if (vm) await this.destroyVm(vm, `${row.group}/${row.index}`, log);
    else await this.deleteFromCloud(row.cloud, row.vmCid, log);
    this.d.store.updateInstance(row.id, { vmCid: null });
  }

  /** Drains and stops what runs on a recorded VM (best effort), deletes it in its cloud, forgets it. */
  private async destroyVm(vm: VmRow, name: string, log: InstanceLog): Promise<void> {
    let handle: InstanceHandle | null = null;
    try {
      handle = await this.open(vm, name, log);
      this.emit('update', name, 'step', 'drain');
      await handle.drain();
      this.emit('update', name, 'step', 'stop');
      await handle.stop();
    } catch (err) {
      log('director', `could not stop jobs on ${vm.cid} before deleting it (${err instanceof Error ? err.message : String(err)}); deleting it anyway`);
    } finally {
      handle?.close();
    }
    this.emit('update', name, 'step', 'delete_vm');
    await this.deleteFromCloud(vm.cloud, vm.cid, log);
    this.d.store.deleteVm(vm.cloud, vm.cid);
  }

  private async deleteFromCloud(cloud: string, cid: string, log: InstanceLog): Promise<void> {
    try {
      await this.d.providers.get(cloud).delete(cid);
    } catch (err) {
      const e = err instanceof DirectorError ? err : infraError('vm_delete_failed', String(err), { cause: err });
      throw new StepError('delete_vm', 'infrastructure', e.code, `deleting VM ${cid} failed: ${e.message}`, [], { hint: e.hint, cause: err });
    }
    log('director', `VM ${cid} deleted`);
  }

  private async deleteInstance(p: InstancePlan): Promise<InstanceFailure | null> {
    const log = instanceLog(this.d.tasks, this.d.taskId, p.instance, this.d.redact);
    this.emit('delete', p.instance, 'started', describeInstance(p));
    try {
      const row = p.id ? this.d.store.instance(p.id) : null;
      if (row) {
        this.d.store.updateInstance(row.id, { state: 'deleting' });
        await this.teardownVm(row, log);
        this.d.store.deleteInstance(row.id);
      }
      this.emit('delete', p.instance, 'finished');
      return null;
    } catch (err) {
      const f = this.failure(p, 'delete_vm', err, log);
      this.emit('delete', p.instance, 'failed', `${f.step}: ${f.message}`, { ...f });
      return f;
    } finally {
      log.flush();
    }
  }

  /**
   * Restores every touched instance, last touched first, through the failing group's window and
   * without canaries (the old version was proven already): an in-place update switches back to
   * the generation still on the VM and restarts; an instance this rollout created is deleted.
   * A VM this rollout replaced (recreate) is gone, so that instance is reported, not guessed at.
   */
  private async rollback(group: DesiredGroup): Promise<void> {
    const targets = [...this.touched].reverse().filter((t) => {
      if (!this.abandoned.has(t.plan.instance)) return true;
      this.result.notRolledBack.push({ instance: t.plan.instance, reason: `still at ${this.inFlight.get(t.plan.instance) ?? 'work'} when the progress deadline passed` });
      return false;
    });
    const maxInFlight = resolveCount(group.update.maxInFlight, group.instances, 1);
    this.emit('rollback', null, 'started', `rolling back ${targets.length} touched instance(s), max_in_flight ${maxInFlight}, no canaries`, { instances: targets.map((t) => t.plan.instance) });
    const limit = pLimit(maxInFlight);
    await Promise.all(targets.map((t) => limit(() => this.rollbackOne(t))));
    this.emit('rollback', null, 'finished', `${this.result.rolledBack.length} rolled back, ${this.result.rollbackFailed.length} failed, ${this.result.notRolledBack.length} not restorable`);
  }

  private async rollbackOne(t: Touched): Promise<void> {
    const name = t.plan.instance;
    const log = instanceLog(this.d.tasks, this.d.taskId, name, this.d.redact);
    const row = t.rowId ? this.d.store.instance(t.rowId) : null;
    let handle: InstanceHandle | null = null;
    let step: InstanceStep = 'rollback';
    try {
      if (!row) {
        // Failed before anything was recorded: nothing exists to undo.
        this.result.rolledBack.push(name);
        return;
      }
      if (!t.before) {
        this.emit('rollback', name, 'started', 'created by this rollout: deleting it');
        this.d.store.updateInstance(row.id, { state: 'deleting' });
        await this.teardownVm(row, log);
        this.d.store.deleteInstance(row.id);
        this.result.rolledBack.push(name);
        this.emit('rollback', name, 'finished', 'deleted');
        return;
      }
      if (t.swapIntact) {
        // The swap never happened: the old VM still runs what it ran before.
        this.d.store.updateInstance(row.id, { state: 'running', error: null });
        this.result.rolledBack.push(name);
        this.emit('rollback', name, 'finished', 'old VM kept serving; nothing to restore');
        return;
      }
      const before = t.before;
      const sameVm = t.plan.action === 'update' || (before.vmType === t.group.vmType && before.az === row.az && row.vmCid !== null && t.plan.action !== 'recreate');
      if (!sameVm || !before.generation || !row.vmCid) {
        const reason = !before.generation ? 'the generation it ran before is unknown' : 'its VM was replaced (recreate); deploy the previous manifest to restore it';
        this.result.notRolledBack.push({ instance: name, reason });
        this.emit('rollback', name, 'skipped', reason);
        return;
      }
      this.emit('rollback', name, 'started', `back to generation ${before.generation}`);
      const vm = this.d.store.vm(row.cloud, row.vmCid);
      if (!vm) throw new StepError('rollback', 'infrastructure', 'vm_not_recorded', `no VM is recorded for ${name}`);
      this.d.store.updateInstance(row.id, { state: 'updating' });
      step = 'connect';
      handle = await this.open(vm, name, log);
      step = 'stop';
      await handle.stop();
      step = 'rollback';
      if (!(await handle.activate(before.generation))) {
        throw new StepError('rollback', 'infrastructure', 'generation_missing', `generation ${before.generation} is no longer on the VM`);
      }
      step = 'start';
      await handle.start();
      step = 'health';
      await this.watch(handle, t.plan.group, vm.ips[0] ?? vm.sshHost, t.group.update.updateWatch, log);
      this.d.store.updateInstance(row.id, { state: 'running', applied: before, previous: null, error: null });
      this.result.rolledBack.push(name);
      this.emit('rollback', name, 'finished', 'restored');
    } catch (err) {
      const f = this.failure({ instance: name }, step, err, log);
      if (row) this.d.store.updateInstance(row.id, { state: 'failed', error: `rollback ${f.step}: ${f.message}` });
      this.result.rollbackFailed.push(f);
      this.emit('rollback', name, 'failed', `${f.step}: ${f.message}`, { ...f });
    } finally {
      handle?.close();
      log.flush();
    }
  }
}

export function taskErrorFromFailure(f: InstanceFailure, hint?: string): TaskError {
  return { code: f.code, class: f.errorClass, message: `${f.instance} failed at ${f.step}: ${f.message}`, instance: f.instance, step: f.step, logTail: f.logTail, hint };
}

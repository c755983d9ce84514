/**
 * Runs a Plan. It never re-decides what should change: it walks the plan's deletes, then each
 * group's canaries, then the rest through a sliding window of max_in_flight (the next instance
 * starts the moment one finishes). Every step is recorded before the next begins, so a killed
 * director leaves a state the next run can re-check. On a failure beyond max_failures no new
 * instance starts; the ones in flight finish.
 */
import { randomUUID } from 'node:crypto';
import pLimit from 'p-limit';
import { DirectorError, infraError } from '../errors.js';
import { watchHealth } from '../health/checks.js';
import { InstanceAgent, StepError, type InstanceStep } from '../instance/agent.js';
import type { HealthCheckDef, LoadedDeployment, WatchTime } from '../manifest/types.js';
import { describeInstance } from '../plan/describe.js';
import { resolveCount } from '../plan/plan.js';
import type { AppliedSpec, Desired, DesiredGroup, InstancePlan, Plan } from '../plan/types.js';
import {
  TAG_CREATED_AT,
  TAG_DEPLOYMENT,
  TAG_DIRECTOR,
  TAG_GROUP,
  TAG_INDEX,
  TAG_INSTANCE_ID,
} from '../providers/provider.js';
import type { ProviderSet } from '../providers/registry.js';
import { packGeneration, renderInstance } from '../release/generation.js';
import { effectiveProperties } from '../release/render.js';
import type { Release } from '../release/release.js';
import type { SshConnection, SshConnector } from '../ssh/types.js';
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
  ssh: SshConnector;
  keys: { privateKey: string; publicKey: string };
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
  /** instances the plan wanted to touch but the halt kept untouched */
  skipped: string[];
}

export class RolloutExecutor {
  private halted = false;
  private readonly result: RolloutResult = { ok: true, done: [], failed: [], skipped: [] };

  constructor(private readonly d: RolloutDeps) {}

  private emit(stage: string, instance: string | null, state: string, message: string | null = null, data: Record<string, unknown> | null = null) {
    const e = this.d.tasks.addEvent(this.d.taskId, stage, instance, state, message === null ? null : this.d.redact(message), data);
    this.d.onEvent?.(e);
  }

  async run(plan: Plan): Promise<RolloutResult> {
    const byName = new Map(plan.instances.map((p) => [p.instance, p]));
    const deletes = plan.instances.filter((p) => p.action === 'delete');
    if (deletes.length) {
      const limit = this.d.deleteInFlight ?? resolveCount(this.d.desired.groups[0]?.update.maxInFlight ?? { kind: 'abs', value: 1 }, deletes.length, 1);
      this.emit('delete', null, 'started', `deleting ${deletes.length} instance(s)`);
      await this.window(deletes, limit, (p) => this.deleteInstance(p), 0);
    }
    for (const gp of plan.groups) {
      const group = this.d.desired.groups.find((g) => g.name === gp.name)!;
      const order = gp.order.map((n) => byName.get(n)!);
      if (order.length === 0) continue;
      if (this.halted) {
        this.result.skipped.push(...gp.order);
        continue;
      }
      const canaries = order.slice(0, gp.canaries);
      const rest = order.slice(gp.canaries);
      if (canaries.length) {
        this.emit('canaries', null, 'started', `${gp.name}: ${canaries.length} canar${canaries.length === 1 ? 'y' : 'ies'} (${canaries.map((c) => `${c.instance} ${c.cloud}/${c.az}`).join(', ')})`, { group: gp.name });
        await this.window(canaries, gp.maxInFlight, (p) => this.updateInstance(p, group, gp.canaryWatch), group.update.maxFailures);
      }
      if (rest.length && !this.halted) {
        this.emit('rollout', null, 'started', `${gp.name}: ${rest.length} instance(s), max_in_flight ${gp.maxInFlight}`, { group: gp.name });
      }
      await this.window(rest, gp.maxInFlight, (p) => this.updateInstance(p, group, gp.updateWatch), group.update.maxFailures);
    }
    this.result.ok = this.result.failed.length === 0;
    return this.result;
  }

  /** Sliding window: at most `size` in flight; after a halt, queued instances are skipped. */
  private async window(list: InstancePlan[], size: number, work: (p: InstancePlan) => Promise<InstanceFailure | null>, maxFailures: number) {
    const limit = pLimit(Math.max(1, size));
    await Promise.all(
      list.map((p) =>
        limit(async () => {
          if (this.halted) {
            this.result.skipped.push(p.instance);
            return;
          }
          const failure = await work(p);
          if (failure) {
            this.result.failed.push(failure);
            if (this.result.failed.length > maxFailures && !this.halted) {
              this.halted = true;
              this.emit('halt', p.instance, 'failed', `halting: ${p.instance} failed at ${failure.step}; no new instances will start`, { failure });
            }
          } else {
            this.result.done.push(p.instance);
          }
        }),
      ),
    );
  }

  private failure(p: InstancePlan, step: InstanceStep, err: unknown, log: InstanceLog): InstanceFailure {
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
    let conn: SshConnection | null = null;
    let row: InstanceRow | null = p.id ? this.d.store.instance(p.id) : null;
    const stepEvent = (s: InstanceStep) => {
      step = s;
      this.emit('update', p.instance, 'step', s);
    };
    try {
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
        } else {
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
      conn = await this.connect(vm, p.instance, log);
      const agent = new InstanceAgent(conn, this.d.providers.baseDir(p.cloud), log);
      stepEvent('install');
      await agent.installCtl(this.d.providers.def(p.cloud).type === 'local');
      if (p.action === 'update') {
        stepEvent('drain');
        await agent.drain();
        stepEvent('stop');
        await agent.stop();
      }
      stepEvent('apply');
      const igManifest = this.d.loaded.manifest.instanceGroups.find((g) => g.name === p.group)!;
      const spec = { deployment: this.d.desired.deployment, name: p.group, index: p.index, id: instanceRow.id, az: p.az, address: vm.ips[0] ?? vm.sshHost };
      const gen = await packGeneration(renderInstance(igManifest.jobs, this.d.releases, spec));
      await agent.apply(gen.id, gen.archive);
      stepEvent('start');
      await agent.start();
      stepEvent('health');
      const outcome = await watchHealth(this.d.healthChecks.get(p.group) ?? [], watch, {
        address: spec.address,
        properties: this.checkProperties(p.group),
        exec: (cmd, timeoutMs) => agent.run('health', cmd, { timeoutMs }),
      }, this.d.clock, {
        processAlive: async () => {
          const status = await agent.status();
          const down = status.filter((s) => s.state !== 'running');
          if (down.length === 0) return null;
          const logTail = await agent.jobLogTail(down[0]!.job, 10);
          return `job ${down.map((s) => s.job).join(', ')} is not running${logTail.length ? `: ${logTail[logTail.length - 1]}` : ''}`;
        },
      });
      log('director', `health: ${outcome.healthy ? 'healthy' : 'unhealthy'} after ${outcome.elapsedMs} ms: ${outcome.detail}`);
      if (!outcome.healthy) {
        const tail = outcome.crashed ? await agent.jobLogTail(group.jobs[0]!.name, 10).catch(() => []) : [];
        throw new StepError('health', 'application', outcome.crashed ? 'job_crashed' : 'health_failed', outcome.crashed ?? `unhealthy after ${outcome.elapsedMs} ms (window ${watch.minMs}-${watch.maxMs}): ${outcome.detail}`, tail);
      }
      const applied: AppliedSpec = { az: p.az, cloud: p.cloud, vmType: group.vmType, vmTypeDigest: group.vmTypeDigest, jobs: group.jobs };
      const previous = instanceRow.applied ?? instanceRow.previous;
      this.d.store.updateInstance(instanceRow.id, { state: 'running', applied, previous, error: null });
      this.emit('update', p.instance, 'finished', `${p.action} done in ${this.d.clock.now() - started} ms`, { durationMs: this.d.clock.now() - started });
      return null;
    } catch (err) {
      const f = this.failure(p, step, err, log);
      log('director', `FAILED at ${f.step}: ${f.message}`);
      if (row) this.d.store.updateInstance(row.id, { state: 'failed', error: `${f.step}: ${f.message}` });
      this.emit('update', p.instance, 'failed', `${f.step}: ${f.message}`, { ...f, durationMs: this.d.clock.now() - started });
      return f;
    } finally {
      conn?.close();
      log.flush();
    }
  }

  private checkProperties(group: string): Record<string, unknown> {
    const ig = this.d.loaded.manifest.instanceGroups.find((g) => g.name === group)!;
    const out: Record<string, unknown> = {};
    for (const ref of [...ig.jobs].reverse()) {
      const job = this.d.releases.get(ref.release)!.jobs.get(ref.name)!;
      for (const [k, v] of Object.entries(effectiveProperties(job, ref.properties, group))) {
        out[k] = v;
        out[`${ref.name}.${k}`] = v;
      }
    }
    return out;
  }

  private async createVm(row: InstanceRow, p: InstancePlan, group: DesiredGroup, log: InstanceLog): Promise<VmRow> {
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
      createdAt: vm.createdAt,
    };
    // Recorded before anything else happens to it: a crash from here on leaves a known VM.
    this.d.store.db.transaction(() => {
      this.d.store.recordVm(vmRow);
      this.d.store.updateInstance(row.id, { vmCid: vm.cid, az: p.az, cloud: p.cloud });
    })();
    log('director', `VM ${vm.cid} created, ip ${vm.ips.join(', ')}`);
    return vmRow;
  }

  private async connect(vm: VmRow, label: string, log: InstanceLog): Promise<SshConnection> {
    try {
      const conn = await this.d.ssh.connect({
        host: vm.sshHost,
        port: vm.sshPort,
        username: vm.sshUser,
        privateKey: this.d.keys.privateKey,
        hostKeyFingerprint: vm.hostKey ?? undefined,
        label: `${label} (${vm.sshHost})`,
      });
      if (!vm.hostKey) {
        this.d.store.pinHostKey(vm.cloud, vm.cid, conn.hostKeyFingerprint);
        log('director', `pinned host key ${conn.hostKeyFingerprint}`);
      }
      return conn;
    } catch (err) {
      const e = err instanceof DirectorError ? err : infraError('ssh_unreachable', String(err), { cause: err });
      throw new StepError('connect', 'infrastructure', e.code, e.message, [], { hint: e.hint, cause: err });
    }
  }

  /** Stops the jobs of an instance's VM (best effort: the VM may be broken) and deletes the VM. */
  private async teardownVm(row: InstanceRow, log: InstanceLog): Promise<void> {
    if (!row.vmCid) return;
    const vm = this.d.store.vm(row.cloud, row.vmCid);
    if (vm) {
      let conn: SshConnection | null = null;
      try {
        conn = await this.connect(vm, `${row.group}/${row.index}`, log);
        const agent = new InstanceAgent(conn, this.d.providers.baseDir(row.cloud), log);
        this.emit('update', `${row.group}/${row.index}`, 'step', 'drain');
        await agent.drain();
        this.emit('update', `${row.group}/${row.index}`, 'step', 'stop');
        await agent.stop();
      } catch (err) {
        log('director', `could not stop jobs before deleting the VM (${err instanceof Error ? err.message : String(err)}); deleting it anyway`);
      } finally {
        conn?.close();
      }
    }
    this.emit('update', `${row.group}/${row.index}`, 'step', 'delete_vm');
    try {
      await this.d.providers.get(row.cloud).delete(row.vmCid);
    } catch (err) {
      const e = err instanceof DirectorError ? err : infraError('vm_delete_failed', String(err), { cause: err });
      throw new StepError('delete_vm', 'infrastructure', e.code, `deleting VM ${row.vmCid} failed: ${e.message}`, [], { hint: e.hint, cause: err });
    }
    log('director', `VM ${row.vmCid} deleted`);
    this.d.store.db.transaction(() => {
      this.d.store.deleteVm(row.cloud, row.vmCid!);
      this.d.store.updateInstance(row.id, { vmCid: null });
    })();
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
}

export function taskErrorFromFailure(f: InstanceFailure, hint?: string): TaskError {
  return { code: f.code, class: f.errorClass, message: `${f.instance} failed at ${f.step}: ${f.message}`, instance: f.instance, step: f.step, logTail: f.logTail, hint };
}

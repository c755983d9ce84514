/**
 * The instance port for sim VMs: each lifecycle step is a clock wait and a change to the VM's
 * record, so the rollout engine runs unchanged on 1000+ instances with no sockets.
 */
import { createHash } from 'node:crypto';
import { StepError, type CheckResult, type GenerationRef, type InstanceConnector, type InstanceHandle, type InstanceStep, type JobStatus, type LogFn } from '../../instance/driver.js';
import type { HealthCheckDef } from '../../manifest/types.js';
import type { VmRow } from '../../state/store.js';
import type { Clock } from '../../util/clock.js';
import { instanceName, type SimCloud, type SimFaults, type SimVm } from './cloud.js';
import type { SimConfig } from './config.js';

/**
 * Whether fail_health_rate picks (instance, generation): a hash, not a random draw, so every poll,
 * every run and every process agrees, and a different generation on the same instance is an
 * independent pick.
 */
export function healthRateHit(instance: string, generation: string, rate: number): boolean {
  if (rate <= 0) return false;
  if (rate >= 1) return true;
  const h = createHash('sha256').update(`${instance}\n${generation}`).digest();
  return h.readUInt32BE(0) / 0x1_0000_0000 < rate;
}

/** Why `instance` running `generation` fails its health check, or null when nothing says it does. */
export function healthFault(config: SimConfig, faults: SimFaults, vm: SimVm, instance: string, generation: string): string | null {
  if (config.failHealth.has(instance)) return 'fail_health lists it';
  if (faults.healthFails?.(instance, generation)) return 'the healthFails fault hook says so';
  if (!vm.proven.includes(generation) && healthRateHit(instance, generation, config.failHealthRate)) {
    return `fail_health_rate ${config.failHealthRate} picked this generation on this instance`;
  }
  return null;
}

export class SimInstanceConnector implements InstanceConnector {
  constructor(private readonly sim: SimCloud, private readonly config: SimConfig, private readonly clock: Clock) {}

  async open(row: VmRow, opts: { label: string; baseDir: string; log: LogFn }): Promise<InstanceHandle> {
    const vm = this.sim.get(row.cid);
    if (!vm) throw unreachable('connect', this.sim, row.cid);
    const name = instanceName(vm.tags);
    if (this.config.bootNever.has(name)) {
      opts.log('director', `sim: ${name} (${vm.cid}) never boots (boot_never); waiting ${this.config.bootTimeoutMs} ms`);
      await this.clock.sleep(this.config.bootTimeoutMs);
      throw new StepError('connect', 'infrastructure', 'vm_unreachable', `${opts.label}: VM ${vm.cid} (${vm.ip}) did not come up within ${this.config.bootTimeoutMs} ms`, [], {
        hint: `sim cloud '${this.sim.name}' lists ${name} in boot_never`,
      });
    }
    return new SimInstanceHandle(this.sim, this.config, this.clock, row.cid, opts.log);
  }
}

function unreachable(step: InstanceStep, sim: SimCloud, cid: string): StepError {
  return new StepError(step, 'infrastructure', 'vm_unreachable', `VM ${cid} does not exist on sim cloud '${sim.name}'`, [], {
    hint: 'the VM was deleted after the director recorded it; a repair or recreate gives the instance a new VM',
  });
}

export class SimInstanceHandle implements InstanceHandle {
  readonly hostKeyFingerprint = 'SHA256:sim';
  readonly healthPollMs = 5;

  constructor(
    private readonly sim: SimCloud,
    private readonly config: SimConfig,
    private readonly clock: Clock,
    private readonly cid: string,
    private readonly log: LogFn,
  ) {}

  /** Looked up per step: the VM may be deleted while the handle is open, as on a real cloud. */
  private vm(step: InstanceStep): SimVm {
    const vm = this.sim.get(this.cid);
    if (!vm) throw unreachable(step, this.sim, this.cid);
    return vm;
  }

  /**
   * Every operation takes at least one turn of the event loop when the cloud persists, as real
   * I/O would: the write a previous operation queued (SimCloud.changed) lands first, so the
   * director never records a step whose effect a kill -9 could still lose.
   */
  private async wait(ms: number): Promise<void> {
    if (this.sim.file !== null) await new Promise((resolve) => setImmediate(resolve));
    if (ms > 0) await this.clock.sleep(ms);
  }

  async prepare(): Promise<void> {
    this.vm('install');
  }

  async drain(): Promise<void> {
    this.vm('drain');
  }

  async stop(): Promise<void> {
    await this.wait(this.config.stopMs);
    const vm = this.vm('stop');
    vm.job = 'stopped';
    this.sim.changed();
    this.log('director', 'sim: job stopped');
  }

  /** Never builds the archive: a sim VM has nothing to unpack, and building it is the costly part. */
  async apply(gen: GenerationRef): Promise<void> {
    await this.wait(this.config.applyMs);
    const vm = this.vm('apply');
    if (vm.current !== gen.id) {
      vm.previous = vm.current;
      vm.current = gen.id;
      vm.proven = vm.proven.filter((g) => g === vm.current || g === vm.previous);
      this.sim.changed();
    }
    this.log('director', `sim: generation ${gen.id} is current${vm.previous ? ` (previous ${vm.previous})` : ''}`);
  }

  async activate(generationId: string): Promise<boolean> {
    const vm = this.vm('rollback');
    if (vm.current === generationId) return true;
    if (vm.previous !== generationId) return false;
    vm.previous = vm.current;
    vm.current = generationId;
    this.sim.changed();
    this.log('director', `sim: generation ${generationId} is current again`);
    return true;
  }

  async start(): Promise<void> {
    await this.wait(this.config.startMs);
    const vm = this.vm('start');
    vm.job = 'running';
    vm.startedAt = this.clock.now();
    this.sim.changed();
    this.log('director', 'sim: job running');
  }

  async status(): Promise<JobStatus[]> {
    await this.wait(0);
    return [{ job: 'sim', state: this.vm('health').job, pid: null }];
  }

  async jobLogTail(): Promise<string[]> {
    return [];
  }

  async check(def: HealthCheckDef): Promise<CheckResult> {
    await this.wait(0);
    const vm = this.vm('health');
    const name = instanceName(vm.tags);
    const result = (ok: boolean, why: string): CheckResult => ({ ok, detail: `${def.name}: ${name || vm.cid} ${why}` });
    if (vm.job !== 'running' || vm.startedAt === null) return result(false, 'job is stopped');
    if (vm.current === null) return result(false, 'runs no generation');
    const up = this.clock.now() - vm.startedAt;
    if (up < this.config.healthyAfterMs) return result(false, `is starting (up ${up} ms, healthy after ${this.config.healthyAfterMs} ms)`);
    const fault = healthFault(this.config, this.sim.faults, vm, name, vm.current);
    if (fault !== null) return result(false, `is unhealthy running ${vm.current}: ${fault}`);
    if (!vm.proven.includes(vm.current)) {
      vm.proven.push(vm.current);
      this.sim.changed();
    }
    return result(true, `is healthy running ${vm.current}`);
  }

  close(): void {}
}

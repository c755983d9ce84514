/**
 * Provider adapter for the sim cloud: VMs that exist only as records (see cloud.ts), with
 * latencies taken on an injectable clock and faults injected from the cloud properties
 * (config.ts), for rehearsals and benchmarks of 1000+ instances on one small machine.
 */
import { infraError } from '../../errors.js';
import type { InstanceConnector } from '../../instance/driver.js';
import { systemClock, type Clock } from '../../util/clock.js';
import type { Provider, Vm, VmRequest } from '../provider.js';
import { throttledError } from '../throttle.js';
import { instanceName, SimCloud, type SimVm } from './cloud.js';
import { parseSimProperties, type SimConfig } from './config.js';
import { SimInstanceConnector } from './instances.js';

export { instanceName, SimCloud, type SimFaults, type SimVm } from './cloud.js';
export { parseSimProperties, SIM_PROPERTIES, type SimConfig } from './config.js';
export { healthRateHit, SimInstanceConnector, SimInstanceHandle } from './instances.js';
export { VirtualClock } from './virtual-clock.js';

export interface SimProviderOptions {
  /** name of the cloud in the cloud-config */
  cloud: string;
  /** the director home; VMs persist in `<home>/sim/<cloud>.json` unless `persist: false` */
  home?: string;
  /** the cloud-config entry's properties (validated here) */
  properties: Record<string, unknown>;
  clock?: Clock;
  /** in [0, 1): draws for throttle_rate and a fractional fail_create */
  random?: () => number;
}

export class SimProvider implements Provider {
  readonly cloud: string;
  readonly type = 'sim';
  readonly config: SimConfig;
  /** the VMs, shared with every SimProvider of the same (home, cloud) in this process */
  readonly sim: SimCloud;
  private readonly clock: Clock;
  private readonly random: () => number;
  private readonly connector: SimInstanceConnector;

  constructor(opts: SimProviderOptions) {
    this.cloud = opts.cloud;
    this.config = parseSimProperties(opts.cloud, opts.properties);
    this.clock = opts.clock ?? systemClock;
    this.random = opts.random ?? Math.random;
    this.sim = SimCloud.for({ cloud: opts.cloud, home: opts.home, persist: this.config.persist });
    this.connector = new SimInstanceConnector(this.sim, this.config, this.clock);
  }

  async create(req: VmRequest): Promise<Vm> {
    this.maybeThrottle('create');
    await this.wait(this.config.createMs);
    const name = instanceName(req.tags);
    const { names, rate } = this.config.failCreate;
    if (names.has(name) || (rate > 0 && this.random() < rate)) {
      throw infraError('vm_create_failed', `cloud '${this.cloud}': creating the VM for ${name || 'an instance'} failed`, {
        hint: `injected by fail_create of sim cloud '${this.cloud}'`,
      });
    }
    const vm = this.sim.create({ az: req.az, tags: req.tags, createdAt: new Date(this.clock.now()).toISOString() });
    return this.toVm(vm);
  }

  async list(tags: Record<string, string>): Promise<Vm[]> {
    this.maybeThrottle('list');
    return this.sim.list(tags).map((vm) => this.toVm(vm));
  }

  async delete(cid: string): Promise<void> {
    this.maybeThrottle('delete');
    await this.wait(this.config.deleteMs);
    this.sim.delete(cid);
  }

  async exists(cid: string): Promise<boolean> {
    this.maybeThrottle('exists');
    return this.sim.get(cid) !== undefined;
  }

  async setMetadata(cid: string, tags: Record<string, string>): Promise<void> {
    this.maybeThrottle('setMetadata');
    const vm = this.sim.get(cid);
    if (!vm) throw infraError('vm_not_found', `cloud '${this.cloud}': VM ${cid} does not exist`, { hint: 'it was deleted after the director recorded it' });
    Object.assign(vm.tags, tags);
    this.sim.changed();
  }

  /** Writes the VMs to disk now; the SimCloud stays usable, for this and later providers. */
  async close(): Promise<void> {
    this.sim.close();
  }

  instances(): InstanceConnector {
    return this.connector;
  }

  /** Before any effect, so a throttled call can be retried without creating a VM twice. */
  private maybeThrottle(call: string): void {
    if (this.config.throttleRate > 0 && this.random() < this.config.throttleRate) {
      throw throttledError(`cloud '${this.cloud}': ${call} throttled (throttle_rate ${this.config.throttleRate})`);
    }
  }

  private async wait(ms: number): Promise<void> {
    if (ms > 0) await this.clock.sleep(ms);
  }

  private toVm(vm: SimVm): Vm {
    return {
      cid: vm.cid,
      cloud: this.cloud,
      az: vm.az,
      ips: [vm.ip],
      sshHost: vm.ip,
      sshPort: 0,
      sshUser: 'sim',
      hostKeyFingerprint: 'SHA256:sim',
      tags: { ...vm.tags },
      state: 'running',
      createdAt: vm.createdAt,
    };
  }
}

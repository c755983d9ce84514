/**
 * The sim cloud's inventory: VMs that exist only as records, for rehearsing and benchmarking
 * rollouts of 1000+ instances without sockets or processes.
 *
 * Every `director` CLI run is a new process that must see the VMs the previous run created, so
 * with a home the state is kept in `<home>/sim/<cloud>.json`. Within one process there is one
 * SimCloud per (home, cloud), so the provider and the instance connector of a ProviderSet, and of
 * any later ProviderSet in the same process, act on the same VMs.
 */
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, renameSync, statSync, unlinkSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { infraError } from '../../errors.js';
import { TAG_GROUP, TAG_INDEX } from '../provider.js';

export interface SimVm {
  /** `sim-<8 hex>` */
  cid: string;
  /** `127.255.x.y`: loopback, so that nothing that tries to reach it can leave this machine */
  ip: string;
  az: string;
  tags: Record<string, string>;
  createdAt: string;
  /** generation id the VM runs, null before the first apply */
  current: string | null;
  /** the generation `current` replaced, kept for rollback */
  previous: string | null;
  job: 'running' | 'stopped';
  /** clock time of the last start, null if never started */
  startedAt: number | null;
  /**
   * Generations that passed a health check on this VM. fail_health_rate spares them: a generation
   * that was healthy here keeps being healthy, so rolling back to it works as on a real fleet.
   */
  proven: string[];
}

/** Programmatic faults for in-process benchmarks and tests, on top of the cloud properties. */
export interface SimFaults {
  /** true: the health check of `instance` running `generation` fails */
  healthFails?: (instance: string, generation: string) => boolean;
}

/** `web/3` from the instance_group and index tags; '' when the VM has neither. */
export function instanceName(tags: Record<string, string>): string {
  const group = tags[TAG_GROUP];
  const index = tags[TAG_INDEX];
  return group === undefined && index === undefined ? '' : `${group ?? ''}/${index ?? ''}`;
}

/** 127.255.0.1 … 127.255.255.254, skipping .0 and .255 so no address looks like a network or broadcast */
const IP_CAPACITY = 256 * 254;
const ipAt = (n: number) => `127.255.${Math.floor(n / 254)}.${(n % 254) + 1}`;

interface StateFile {
  version: 1;
  cloud: string;
  nextIp: number;
  vms: SimVm[];
}

const registry = new Map<string, SimCloud>();
let exitHookInstalled = false;

/** A process that exits without close() (an uncaught error, process.exit) still keeps its VMs. */
function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const cloud of registry.values()) {
      try {
        cloud.flush();
      } catch {
        // Nothing can be reported from an exit handler; the previous write stays in place.
      }
    }
  });
}

export class SimCloud {
  readonly name: string;
  /** the state file, or null when the VMs live only in this process */
  readonly file: string | null;
  faults: SimFaults = {};
  /** VMs created since this process loaded the cloud */
  creates = 0;
  /** VMs deleted (deleting an unknown cid does not count) */
  deletes = 0;
  listCalls = 0;

  private readonly vms = new Map<string, SimVm>();
  private readonly usedIps = new Set<string>();
  private nextIp = 0;
  private dirty = false;
  private timer: NodeJS.Immediate | null = null;
  private writeError: unknown = null;
  /** mtime and size of the file as we last read or wrote it, to notice another process's writes */
  private synced: { mtimeMs: number; size: number } | null = null;

  /**
   * The process's SimCloud for (home, cloud), created on first use. Without a home, a private,
   * in-memory cloud: nothing else could look it up anyway. `persist` is read only on first use.
   */
  static for(opts: { cloud: string; home?: string; persist?: boolean }): SimCloud {
    if (opts.home === undefined) return new SimCloud(opts.cloud, null);
    const key = `${resolve(opts.home)}\0${opts.cloud}`;
    let cloud = registry.get(key);
    if (!cloud) {
      const file = opts.persist === false ? null : join(resolve(opts.home), 'sim', `${encodeURIComponent(opts.cloud)}.json`);
      cloud = new SimCloud(opts.cloud, file);
      registry.set(key, cloud);
      installExitHook();
    } else {
      cloud.reloadIfChangedElsewhere();
    }
    return cloud;
  }

  constructor(name: string, file: string | null) {
    this.name = name;
    this.file = file;
    this.load();
  }

  get size(): number {
    return this.vms.size;
  }

  get(cid: string): SimVm | undefined {
    return this.vms.get(cid);
  }

  all(): SimVm[] {
    return [...this.vms.values()];
  }

  /** the VMs carrying all of `tags`, in creation order */
  list(tags: Record<string, string>): SimVm[] {
    this.listCalls++;
    const want = Object.entries(tags);
    return this.all().filter((vm) => want.every(([k, v]) => vm.tags[k] === v));
  }

  create(opts: { az: string; tags: Record<string, string>; createdAt: string }): SimVm {
    let cid: string;
    do cid = `sim-${randomBytes(4).toString('hex')}`;
    while (this.vms.has(cid));
    const vm: SimVm = {
      cid,
      ip: this.allocateIp(),
      az: opts.az,
      tags: { ...opts.tags },
      createdAt: opts.createdAt,
      current: null,
      previous: null,
      job: 'stopped',
      startedAt: null,
      proven: [],
    };
    this.vms.set(cid, vm);
    this.usedIps.add(vm.ip);
    this.creates++;
    this.changed();
    return vm;
  }

  /** false when there was no such VM */
  delete(cid: string): boolean {
    const vm = this.vms.get(cid);
    if (!vm) return false;
    this.vms.delete(cid);
    this.usedIps.delete(vm.ip);
    this.deletes++;
    this.changed();
    return true;
  }

  /** Call after mutating a SimVm in place, so the change is persisted. */
  changed(): void {
    if (this.file === null) return;
    this.dirty = true;
    if (this.timer) return;
    // Written on the next turn of the event loop: every change of one turn in one write, and
    // always before the director can record the step that caused it (it awaits in between), so
    // a kill -9 never leaves the director believing a VM is in a state the sim file does not
    // show — as a real VM keeps its own state. A persisted 1000-VM cloud pays a write per turn;
    // in-process benchmarks set persist: false.
    this.timer = setImmediate(() => {
      this.timer = null;
      try {
        this.flush();
      } catch (err) {
        this.writeError = err;
      }
    });
  }

  flush(): void {
    if (this.timer) {
      clearImmediate(this.timer);
      this.timer = null;
    }
    if (this.file === null || !this.dirty) return;
    const state: StateFile = { version: 1, cloud: this.name, nextIp: this.nextIp, vms: this.all() };
    const tmp = `${this.file}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`;
    try {
      mkdirSync(dirname(this.file), { recursive: true });
      writeFileSync(tmp, JSON.stringify(state), { mode: 0o600 });
      renameSync(tmp, this.file);
    } catch (err) {
      try {
        unlinkSync(tmp);
      } catch {
        // the temp file was never created
      }
      throw infraError('sim_state_write_failed', `sim cloud '${this.name}': cannot write ${this.file}: ${(err as Error).message}`, {
        hint: 'check that the director home is writable and the disk is not full',
        cause: err,
      });
    }
    this.dirty = false;
    this.writeError = null;
    this.synced = this.stat();
  }

  /** Flushes, and reports a background write that failed and could not be redone. */
  close(): void {
    this.flush();
    if (this.writeError) throw this.writeError;
  }

  private allocateIp(): string {
    for (let i = 0; i < IP_CAPACITY; i++) {
      const n = (this.nextIp + i) % IP_CAPACITY;
      const ip = ipAt(n);
      if (!this.usedIps.has(ip)) {
        this.nextIp = (n + 1) % IP_CAPACITY;
        return ip;
      }
    }
    throw infraError('sim_cloud_full', `sim cloud '${this.name}' has no free address left (${IP_CAPACITY} VMs)`, {
      hint: 'delete deployments on this cloud, or spread instances over several sim clouds',
    });
  }

  private stat(): { mtimeMs: number; size: number } | null {
    if (this.file === null) return null;
    try {
      const s = statSync(this.file);
      return { mtimeMs: s.mtimeMs, size: s.size };
    } catch {
      return null;
    }
  }

  /**
   * A CLI run in another process may have changed the file since we loaded it (tests mix in-process
   * and CLI runs on one home). Our own unsaved changes win: they are newer than anything we read.
   */
  private reloadIfChangedElsewhere(): void {
    if (this.file === null || this.dirty) return;
    const now = this.stat();
    if (now?.mtimeMs === this.synced?.mtimeMs && now?.size === this.synced?.size) return;
    this.vms.clear();
    this.usedIps.clear();
    this.nextIp = 0;
    this.load();
  }

  private load(): void {
    if (this.file === null || !existsSync(this.file)) return;
    const hint = `if the file is damaged, delete ${this.file}: the sim cloud starts empty and the director sees the VMs as missing`;
    let state: StateFile;
    try {
      state = JSON.parse(readFileSync(this.file, 'utf8')) as StateFile;
    } catch (err) {
      throw infraError('sim_state_corrupt', `sim cloud '${this.name}': cannot read ${this.file}: ${(err as Error).message}`, { hint, cause: err });
    }
    if (state?.version !== 1 || !Array.isArray(state.vms)) {
      throw infraError('sim_state_corrupt', `sim cloud '${this.name}': ${this.file} is not a sim state file of version 1`, { hint });
    }
    for (const vm of state.vms) {
      vm.proven ??= [];
      this.vms.set(vm.cid, vm);
      this.usedIps.add(vm.ip);
    }
    this.nextIp = Number.isInteger(state.nextIp) ? state.nextIp % IP_CAPACITY : 0;
    this.synced = this.stat();
  }
}

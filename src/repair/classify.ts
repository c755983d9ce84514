/**
 * Drift repair's decisions, pure: what was probed on each instance → the problems found, the
 * meltdown verdict, and the Plan that fixes what is safe. The probing (cloud listings, SSH) and
 * the fixing (the rollout executor) happen around it, in src/app/repair.ts.
 */
import type { Desired, GroupPlan, InstancePlan, Plan, Reason } from '../plan/types.js';

export type ProblemType = 'missing_vm' | 'unresponsive_vm' | 'job_down' | 'config_drift' | 'orphan_vm' | 'extra_vm' | 'missing_instance';

export interface Problem {
  type: ProblemType;
  /** `web/3`; null for an orphan VM no instance owns */
  instance: string | null;
  cloud: string | null;
  cid: string | null;
  detail: string;
  /** what a repair run does about it */
  fix: 'recreate' | 'restart' | 'reapply' | 'delete' | 'none';
}

/** What repair learned about one recorded instance. */
export interface InstanceProbe {
  id: string;
  instance: string;
  group: string;
  index: number;
  az: string;
  cloud: string;
  cid: string | null;
  /** the cloud lists the VM */
  vmListed: boolean;
  /** SSH (or the driver) answered; null when not tried (no VM) */
  reachable: boolean | null;
  unreachableDetail?: string;
  jobsDown: string[];
  healthFailures: string[];
  /** files whose checksum differs from what the director applied; null when not checked */
  driftedFiles: string[] | null;
  /**
   * The manifest and releases on disk no longer render what this instance runs (edited, or a
   * failed deploy left them ahead): repair must not rebuild the instance from them.
   */
  manifestAhead?: boolean;
}

export interface OrphanVm {
  cloud: string;
  cid: string;
  tags: Record<string, string>;
}

export function classify(probes: InstanceProbe[], desired: Desired, orphans: OrphanVm[], deleteOrphans: boolean): Problem[] {
  const problems: Problem[] = [];
  const wanted = new Map(desired.groups.map((g) => [g.name, g.instances]));
  for (const p of probes) {
    const base = { instance: p.instance, cloud: p.cloud, cid: p.cid };
    const count = wanted.get(p.group);
    if (count === undefined || p.index >= count) {
      problems.push({ ...base, type: 'extra_vm', detail: `${p.instance} is not in the manifest (${count === undefined ? 'no such instance group' : `${p.group} has ${count} instances`})`, fix: 'none' });
      continue;
    }
    // Rebuilding a VM renders the manifest on disk; when that is not what was deployed, doing so
    // would deploy changes nobody reviewed: leave it to `director deploy`.
    const recreate = p.manifestAhead ? 'none' : 'recreate';
    const ahead = p.manifestAhead ? ' (not rebuilt: the manifest on disk differs from what was deployed; run director deploy)' : '';
    if (!p.cid || !p.vmListed) {
      problems.push({ ...base, type: 'missing_vm', detail: (p.cid ? `VM ${p.cid} no longer exists in ${p.cloud}` : 'no VM is recorded') + ahead, fix: recreate });
    } else if (p.reachable === false) {
      problems.push({ ...base, type: 'unresponsive_vm', detail: (p.unreachableDetail ?? 'SSH does not answer') + ahead, fix: recreate });
    } else {
      if (p.jobsDown.length || p.healthFailures.length) {
        const what = [...p.jobsDown.map((j) => `job ${j} is not running`), ...p.healthFailures];
        problems.push({ ...base, type: 'job_down', detail: what.join('; '), fix: 'restart' });
      }
      if (p.driftedFiles?.length) {
        problems.push({ ...base, type: 'config_drift', detail: `changed on the VM: ${p.driftedFiles.join(', ')}`, fix: 'reapply' });
      }
    }
  }
  const present = new Set(probes.map((p) => p.instance));
  for (const g of desired.groups) {
    for (let i = 0; i < g.instances; i++) {
      const name = `${g.name}/${i}`;
      if (!present.has(name)) problems.push({ type: 'missing_instance', instance: name, cloud: null, cid: null, detail: `${name} is in the manifest but was never deployed`, fix: 'none' });
    }
  }
  for (const o of orphans) {
    const owner = o.tags.instance_group !== undefined ? `${o.tags.instance_group}/${o.tags.index ?? '?'}` : null;
    problems.push({ type: 'orphan_vm', instance: null, cloud: o.cloud, cid: o.cid, detail: `VM ${o.cid} carries this deployment's tags${owner ? ` (${owner})` : ''} but the director does not know it`, fix: deleteOrphans ? 'delete' : 'none' });
  }
  return problems;
}

/** VMs down at once: missing, unresponsive or with a job down. */
export function downInstances(problems: Problem[]): string[] {
  return [...new Set(problems.filter((p) => p.type === 'missing_vm' || p.type === 'unresponsive_vm' || p.type === 'job_down').map((p) => p.instance!))];
}

/**
 * BOSH's resurrector guard: many instances down at once usually means the network or the cloud
 * is broken, not the VMs, and recreating them all would make it worse. A meltdown is at least
 * `minInstances` down AND at least `minPercent` of the deployment.
 * Example, defaults 5 and 20%: 40 instances with 6 down is not a meltdown (6 ≥ 5, but 15% < 20%);
 * with 8 down it is (8 ≥ 5 and 20% ≥ 20%); 10 instances with 4 down is not (4 < 5).
 */
export function isMeltdown(down: number, total: number, t: { meltdownMinInstances: number; meltdownMinPercent: number }): boolean {
  return total > 0 && down >= t.meltdownMinInstances && (down * 100) / total >= t.meltdownMinPercent;
}

/**
 * The Plan a repair run executes: recreate missing and unresponsive VMs, restart down jobs,
 * re-apply drifted files; no canaries (nothing about the release changed), each group's
 * max_in_flight.
 */
export function repairPlan(problems: Problem[], probes: InstanceProbe[], desired: Desired, maxInFlight: (group: string) => number, fingerprint: string): Plan {
  const byInstance = new Map<string, Problem[]>();
  for (const p of problems) if (p.instance && p.fix !== 'none' && p.fix !== 'delete') byInstance.set(p.instance, [...(byInstance.get(p.instance) ?? []), p]);
  const instances: InstancePlan[] = [];
  for (const probe of probes) {
    const found = byInstance.get(probe.instance);
    if (!found) continue;
    const recreate = found.find((f) => f.fix === 'recreate');
    const action = recreate ? (probe.cid && probe.vmListed ? 'recreate' : 'create') : found.some((f) => f.fix === 'reapply') ? 'update' : 'restart';
    const reasons: Reason[] = found.map((f) =>
      f.type === 'config_drift' ? { code: 'config_drift', keys: f.detail.replace('changed on the VM: ', '').split(', ') } : { code: f.type as Reason['code'] },
    );
    instances.push({ instance: probe.instance, group: probe.group, index: probe.index, id: probe.id, az: probe.az, cloud: probe.cloud, action, reasons, canary: false, wave: 1, vmCid: probe.cid });
  }
  const groups: GroupPlan[] = desired.groups
    .map((g) => {
      const order = instances.filter((i) => i.group === g.name).map((i) => i.instance);
      const mif = maxInFlight(g.name);
      const waves: string[][] = [];
      for (let i = 0; i < order.length; i += mif) waves.push(order.slice(i, i + mif));
      return { name: g.name, canaries: 0, maxInFlight: mif, order, waves, canaryWatch: g.update.canaryWatch, updateWatch: g.update.updateWatch };
    })
    .filter((g) => g.order.length > 0);
  const summary = { none: 0, create: 0, update: 0, restart: 0, recreate: 0, delete: 0 };
  for (const i of instances) summary[i.action]++;
  return { version: 1, deployment: desired.deployment, noop: instances.length === 0, instances, strayVms: [], groups, summary, observedFingerprint: fingerprint, etaMs: 0, etaBasis: 'watch_times' };
}

/**
 * plan(desired, observed) → Plan. Pure and synchronous: no I/O, no clock, no randomness, so the
 * dry run, the confirm prompt and the real run see the same Plan, and tests compare values.
 */
import { createHash } from 'node:crypto';
import { canonicalJson } from '../util/canonical-json.js';
import type {
  Action,
  AppliedSpec,
  Desired,
  DesiredGroup,
  GroupPlan,
  InstancePlan,
  Observed,
  ObservedInstance,
  Plan,
  Reason,
} from './types.js';

/** Per-instance allowance on top of watch times for the ETA (SSH, upload, start). */
const INSTANCE_OVERHEAD_MS = 1500;

/** What past tasks say, for the ETA: the median wall time of one instance update. */
export interface PlanHistory {
  instanceMs?: number;
}

export function plan(desired: Desired, observed: Observed, history: PlanHistory = {}): Plan {
  const instances: InstancePlan[] = [];
  const groups: GroupPlan[] = [];
  const byGroup = new Map<string, ObservedInstance[]>();
  for (const inst of observed.instances) {
    const list = byGroup.get(inst.group) ?? [];
    list.push(inst);
    byGroup.set(inst.group, list);
  }

  for (const group of desired.groups) {
    const existing = (byGroup.get(group.name) ?? []).sort((a, b) => a.index - b.index);
    const placed = placeInstances(group, existing);
    const planned: InstancePlan[] = [];
    for (let index = 0; index < group.instances; index++) {
      const az = placed.get(index)!;
      const obs = existing.find((e) => e.index === index);
      planned.push(planInstance(group, index, az, obs));
    }
    for (const obs of existing.filter((e) => e.index >= group.instances)) {
      instances.push(deletion(obs, 'scale_down'));
    }
    const groupPlan = scheduleWaves(group, planned);
    instances.push(...planned);
    groups.push(groupPlan);
  }

  const wanted = new Set(desired.groups.map((g) => g.name));
  for (const [name, list] of byGroup) {
    if (!wanted.has(name)) for (const obs of list) instances.push(deletion(obs, 'removed_group'));
  }

  const summary: Record<Action, number> = { none: 0, create: 0, update: 0, restart: 0, recreate: 0, delete: 0 };
  for (const i of instances) summary[i.action]++;
  const strayVms = observed.strayVms ?? [];
  const noop = instances.every((i) => i.action === 'none') && strayVms.length === 0;

  return {
    version: 1,
    deployment: desired.deployment,
    noop,
    instances,
    strayVms,
    groups,
    summary,
    observedFingerprint: observedFingerprint(observed),
    etaMs: noop ? 0 : estimate(groups, summary.delete, history.instanceMs),
    etaBasis: history.instanceMs === undefined ? 'watch_times' : 'history',
  };
}

export function observedFingerprint(observed: Observed): string {
  const stable = [...observed.instances].sort((a, b) => a.id.localeCompare(b.id));
  return createHash('sha256').update(canonicalJson({ deployment: observed.deployment, instances: stable })).digest('hex').slice(0, 16);
}

/**
 * AZ placement, sticky like BOSH's: an instance whose AZ is still listed stays there (moving it
 * would recreate a healthy VM); new instances, and ones whose AZ left the list, go to the AZ with
 * the fewest instances, ties broken by manifest order.
 * Example: azs [z1, z2], 4 instances, none yet → z1, z2, z1, z2. Then azs [z1, z3]: web/0 and
 * web/2 stay in z1, web/1 and web/3 move to z3.
 */
function placeInstances(group: DesiredGroup, existing: ObservedInstance[]): Map<number, { name: string; cloud: string }> {
  const counts = new Map(group.azs.map((az) => [az.name, 0]));
  const placed = new Map<number, { name: string; cloud: string }>();
  for (const obs of existing) {
    if (obs.index >= group.instances) continue;
    const az = group.azs.find((a) => a.name === obs.az);
    if (az) {
      placed.set(obs.index, az);
      counts.set(az.name, counts.get(az.name)! + 1);
    }
  }
  for (let index = 0; index < group.instances; index++) {
    if (placed.has(index)) continue;
    let best = group.azs[0]!;
    for (const az of group.azs) if (counts.get(az.name)! < counts.get(best.name)!) best = az;
    placed.set(index, best);
    counts.set(best.name, counts.get(best.name)! + 1);
  }
  return placed;
}

function planInstance(group: DesiredGroup, index: number, az: { name: string; cloud: string }, obs: ObservedInstance | undefined): InstancePlan {
  const base = {
    instance: `${group.name}/${index}`,
    group: group.name,
    index,
    az: az.name,
    cloud: az.cloud,
    canary: false,
    wave: null,
  };
  if (!obs) return { ...base, id: null, vmCid: null, action: 'create', reasons: [{ code: 'new_instance' }] };

  const withObs = { ...base, id: obs.id, vmCid: obs.vmCid };
  if (!obs.vmCid || !obs.vmExists) return { ...withObs, vmCid: null, action: 'create', reasons: [{ code: 'missing_vm' }] };

  const recreate: Reason[] = [];
  if (obs.az !== az.name || obs.cloud !== az.cloud) recreate.push({ code: 'az', from: `${obs.cloud}/${obs.az}`, to: `${az.cloud}/${az.name}` });
  if (obs.applied && (obs.applied.vmType !== group.vmType || obs.applied.vmTypeDigest !== group.vmTypeDigest)) {
    recreate.push({ code: 'vm_type', from: obs.applied.vmType, to: group.vmType });
  }
  if (recreate.length > 0) return { ...withObs, action: 'recreate', reasons: [...recreate, ...jobReasons(group, obs.applied)] };

  if (!obs.applied) return { ...withObs, action: 'update', reasons: [{ code: 'unfinished' }] };
  const reasons = jobReasons(group, obs.applied);
  if (obs.state === 'failed' || obs.state === 'updating' || obs.state === 'creating') reasons.unshift({ code: 'failed' });
  return { ...withObs, action: reasons.length > 0 ? 'update' : 'none', reasons };
}

function jobReasons(group: DesiredGroup, applied: AppliedSpec | null): Reason[] {
  if (!applied) return [];
  const reasons: Reason[] = [];
  const before = new Map(applied.jobs.map((j) => [j.name, j]));
  const after = new Map(group.jobs.map((j) => [j.name, j]));
  const added = [...after.keys()].filter((k) => !before.has(k));
  const removed = [...before.keys()].filter((k) => !after.has(k));
  if (added.length || removed.length) reasons.push({ code: 'jobs', keys: [...added.map((k) => `+${k}`), ...removed.map((k) => `-${k}`)] });

  const releaseChanged = group.jobs.filter((j) => before.has(j.name) && (before.get(j.name)!.version !== j.version || before.get(j.name)!.release !== j.release));
  if (releaseChanged.length) {
    const first = releaseChanged[0]!;
    const old = before.get(first.name)!;
    reasons.push({ code: 'release', keys: releaseChanged.map((j) => j.name), from: `${old.release}/${old.version.slice(0, 12)}`, to: `${first.release}/${first.version.slice(0, 12)}` });
  }

  const keys: string[] = [];
  for (const job of group.jobs) {
    const old = before.get(job.name);
    if (!old) continue;
    const names = new Set([...Object.keys(old.propertyDigests), ...Object.keys(job.propertyDigests)]);
    for (const name of [...names].sort()) {
      if (old.propertyDigests[name] !== job.propertyDigests[name]) keys.push(group.jobs.length > 1 ? `${job.name}.${name}` : name);
    }
  }
  if (keys.length) reasons.push({ code: 'properties', keys });
  return reasons;
}

function deletion(obs: ObservedInstance, code: 'scale_down' | 'removed_group'): InstancePlan {
  return {
    instance: `${obs.group}/${obs.index}`,
    group: obs.group,
    index: obs.index,
    id: obs.id,
    az: obs.az,
    cloud: obs.cloud,
    action: 'delete',
    reasons: [{ code }],
    canary: false,
    wave: null,
    vmCid: obs.vmCid,
  };
}

/**
 * Canaries are spread over distinct (cloud, AZ) pairs before any pair gets a second one, so each
 * cloud is proven before the waves go on (BOSH takes them all from the first AZ).
 * Example: 6 changing instances over [aws/a, gcp/b, local/z1], canaries 2 → web/0 (aws/a),
 * web/1 (gcp/b); with canaries 4 → web/0, web/1, web/2 (local/z1), then web/3.
 */
function scheduleWaves(group: DesiredGroup, planned: InstancePlan[]): GroupPlan {
  const changing = planned.filter((p) => p.action !== 'none');
  const canaryCount = Math.min(resolveCount(group.update.canaries, group.instances, 0), changing.length);
  const maxInFlight = resolveCount(group.update.maxInFlight, group.instances, 1);

  const canaries: InstancePlan[] = [];
  const seen = new Set<string>();
  for (const p of changing) {
    if (canaries.length >= canaryCount) break;
    const key = `${p.cloud}/${p.az}`;
    if (!seen.has(key)) {
      seen.add(key);
      canaries.push(p);
    }
  }
  for (const p of changing) {
    if (canaries.length >= canaryCount) break;
    if (!canaries.includes(p)) canaries.push(p);
  }
  canaries.sort((a, b) => a.index - b.index);
  const rest = changing.filter((p) => !canaries.includes(p));

  const waves: InstancePlan[][] = [];
  if (canaries.length) waves.push(canaries);
  for (let i = 0; i < rest.length; i += maxInFlight) waves.push(rest.slice(i, i + maxInFlight));
  waves.forEach((wave, w) => wave.forEach((p) => { p.wave = w; p.canary = w === 0 && canaries.length > 0; }));

  return {
    name: group.name,
    canaries: canaries.length,
    maxInFlight,
    order: [...canaries, ...rest].map((p) => p.instance),
    waves: waves.map((w) => w.map((p) => p.instance)),
    canaryWatch: group.update.canaryWatch,
    updateWatch: group.update.updateWatch,
  };
}

/**
 * `canaries`/`max_in_flight` as an absolute number or a percentage of the group, rounded down
 * (as Kubernetes rounds maxUnavailable), never below `min`.
 * Example: 10 instances, 25% → 2; 3 instances, 25% → 0 → at least 1 for max_in_flight.
 */
export function resolveCount(count: { kind: 'abs' | 'pct'; value: number }, size: number, min: number): number {
  const n = count.kind === 'abs' ? count.value : Math.floor((size * count.value) / 100);
  return Math.max(min, n);
}

/**
 * A wave takes as long as its slowest instance: from history, the median past instance time
 * (never less than the watch window's minimum, which every instance waits out); without it,
 * the minimum plus an allowance for SSH, upload and start.
 */
function estimate(groups: GroupPlan[], deletes: number, instanceMs: number | undefined): number {
  let ms = deletes > 0 ? (instanceMs ?? INSTANCE_OVERHEAD_MS) : 0;
  for (const g of groups) {
    g.waves.forEach((_, w) => {
      const watch = w === 0 && g.canaries > 0 ? g.canaryWatch : g.updateWatch;
      ms += instanceMs === undefined ? watch.minMs + INSTANCE_OVERHEAD_MS : Math.max(instanceMs, watch.minMs);
    });
  }
  return ms;
}

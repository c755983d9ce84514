import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { plan, resolveCount } from '../../src/plan/plan.js';
import type { AppliedSpec, Desired, DesiredGroup, Observed, ObservedInstance } from '../../src/plan/types.js';

const job = (version = 'v1'.padEnd(64, '0'), props: Record<string, string> = { port: 'd-8080', greeting: 'd-hello' }) => ({
  name: 'web',
  release: 'hello',
  version,
  propertyDigests: props,
});

function group(over: Partial<DesiredGroup> = {}): DesiredGroup {
  return {
    name: 'web',
    instances: 4,
    azs: [{ name: 'z1', cloud: 'local' }, { name: 'z2', cloud: 'local' }],
    vmType: 'small',
    vmTypeDigest: 'vt-small',
    jobs: [job()],
    health: [],
    update: {
      canaries: { kind: 'abs', value: 1 },
      maxInFlight: { kind: 'abs', value: 2 },
      canaryWatch: { minMs: 1000, maxMs: 30000 },
      updateWatch: { minMs: 500, maxMs: 30000 },
      serial: true,
      vmStrategy: 'delete-create',
      autoRollback: true,
      maxFailures: 0,
    },
    ...over,
  };
}

const desired = (...groups: DesiredGroup[]): Desired => ({ deployment: 'hello', groups });

/** What a successful deploy of `g` leaves behind. */
function deployed(g: DesiredGroup, over: (i: number) => Partial<ObservedInstance> = () => ({})): Observed {
  const applied = (az: string, cloud: string): AppliedSpec => ({ az, cloud, vmType: g.vmType, vmTypeDigest: g.vmTypeDigest, jobs: g.jobs });
  return {
    deployment: 'hello',
    instances: Array.from({ length: g.instances }, (_, i) => {
      const az = g.azs[i % g.azs.length]!;
      return { id: `id-${i}`, group: g.name, index: i, az: az.name, cloud: az.cloud, vmCid: `vm-${i}`, vmExists: true, state: 'running' as const, applied: applied(az.name, az.cloud), ...over(i) };
    }),
  };
}

const empty: Observed = { deployment: 'hello', instances: [] };

describe('plan', () => {
  it('creates a new deployment canary first, then waves of max_in_flight, spread over the AZs', () => {
    const p = plan(desired(group()), empty);
    expect(p.noop).toBe(false);
    expect(p.summary.create).toBe(4);
    expect(p.instances.map((i) => [i.instance, i.action, i.az])).toEqual([
      ['web/0', 'create', 'z1'],
      ['web/1', 'create', 'z2'],
      ['web/2', 'create', 'z1'],
      ['web/3', 'create', 'z2'],
    ]);
    expect(p.groups[0]!.waves).toEqual([['web/0'], ['web/1', 'web/2'], ['web/3']]);
    expect(p.instances.find((i) => i.instance === 'web/0')!.canary).toBe(true);
    expect(p.instances[0]!.reasons).toEqual([{ code: 'new_instance' }]);
  });

  it('is a no-op when what runs matches the manifest', () => {
    const g = group();
    const p = plan(desired(g), deployed(g));
    expect(p.noop).toBe(true);
    expect(p.summary.none).toBe(4);
    expect(p.groups[0]!.waves).toEqual([]);
    expect(p.etaMs).toBe(0);
  });

  it('updates in place when a property changes and names the key, never the value', () => {
    const g = group();
    const changed = group({ jobs: [job(undefined, { port: 'd-8080', greeting: 'd-SECRETDIGEST' })] });
    const p = plan(desired(changed), deployed(g));
    expect(p.summary.update).toBe(4);
    expect(p.instances[0]!.reasons).toEqual([{ code: 'properties', keys: ['greeting'] }]);
    expect(JSON.stringify(p)).not.toContain('SECRETDIGEST');
  });

  it('updates in place when the release changes', () => {
    const g = group();
    const p = plan(desired(group({ jobs: [job('v2'.padEnd(64, '0'))] })), deployed(g));
    expect(p.summary.update).toBe(4);
    expect(p.instances[0]!.reasons[0]).toMatchObject({ code: 'release', from: `hello/${'v1'.padEnd(12, '0')}`, to: `hello/${'v2'.padEnd(12, '0')}` });
  });

  it('creates only the difference when the group grows', () => {
    const g = group();
    const p = plan(desired(group({ instances: 6 })), deployed(g));
    expect(p.instances.filter((i) => i.action !== 'none').map((i) => `${i.instance}:${i.action}:${i.az}`)).toEqual(['web/4:create:z1', 'web/5:create:z2']);
  });

  it('deletes the highest indexes when the group shrinks', () => {
    const g = group();
    const p = plan(desired(group({ instances: 2 })), deployed(g));
    expect(p.instances.filter((i) => i.action !== 'none').map((i) => `${i.instance}:${i.action}:${i.reasons[0]!.code}`)).toEqual(['web/2:delete:scale_down', 'web/3:delete:scale_down']);
    expect(p.groups[0]!.waves).toEqual([]);
  });

  it('recreates every instance when the VM type changes', () => {
    const g = group();
    const p = plan(desired(group({ vmType: 'large', vmTypeDigest: 'vt-large' })), deployed(g));
    expect(p.summary.recreate).toBe(4);
    expect(p.instances[0]!.reasons).toEqual([{ code: 'vm_type', from: 'small', to: 'large' }]);
  });

  it("recreates only the instances whose AZ left the list, keeping the others where they are", () => {
    const g = group();
    const moved = group({ azs: [{ name: 'z1', cloud: 'local' }, { name: 'z3', cloud: 'local' }] });
    const p = plan(desired(moved), deployed(g));
    expect(p.instances.map((i) => `${i.instance}:${i.action}:${i.az}`)).toEqual(['web/0:none:z1', 'web/1:recreate:z3', 'web/2:none:z1', 'web/3:recreate:z3']);
    expect(p.instances[1]!.reasons[0]).toEqual({ code: 'az', from: 'local/z2', to: 'local/z3' });
  });

  it('recreates a VM the cloud no longer lists and re-applies a failed instance', () => {
    const g = group();
    const p = plan(desired(g), deployed(g, (i) => (i === 1 ? { vmExists: false } : i === 2 ? { state: 'failed' } : {})));
    expect(p.instances.map((i) => `${i.instance}:${i.action}:${i.reasons.map((r) => r.code).join(',')}`)).toEqual([
      'web/0:none:', 'web/1:create:missing_vm', 'web/2:update:failed', 'web/3:none:',
    ]);
  });

  it('deletes every instance of a group that left the manifest', () => {
    const g = group();
    const other = group({ name: 'worker', instances: 1 });
    const p = plan(desired(other), deployed(g));
    expect(p.instances.filter((i) => i.action === 'delete').map((i) => i.reasons[0]!.code)).toEqual(['removed_group', 'removed_group', 'removed_group', 'removed_group']);
  });

  it('spreads canaries over distinct (cloud, AZ) pairs before doubling up', () => {
    const g = group({
      instances: 6,
      azs: [{ name: 'us-east-1a', cloud: 'aws' }, { name: 'europe-west1-b', cloud: 'gcp' }, { name: 'z1', cloud: 'local' }],
      update: { ...group().update, canaries: { kind: 'abs', value: 3 }, maxInFlight: { kind: 'abs', value: 2 } },
    });
    const p = plan(desired(g), empty);
    const canaries = p.instances.filter((i) => i.canary);
    expect(new Set(canaries.map((c) => c.cloud))).toEqual(new Set(['aws', 'gcp', 'local']));
    expect(p.groups[0]!.waves[0]).toHaveLength(3);
  });

  it('resolves percentages against the group size, rounding down, never below the minimum', () => {
    expect(resolveCount({ kind: 'pct', value: 25 }, 10, 1)).toBe(2);
    expect(resolveCount({ kind: 'pct', value: 25 }, 3, 1)).toBe(1);
    expect(resolveCount({ kind: 'pct', value: 10 }, 5, 0)).toBe(0);
    expect(resolveCount({ kind: 'abs', value: 7 }, 3, 1)).toBe(7);
  });

  it('keeps its invariants for any group: canaries first, windows bounded, each instance once', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: 60 }), // instances
        fc.integer({ min: 0, max: 60 }), // already deployed
        fc.integer({ min: 1, max: 4 }), // azs
        fc.integer({ min: 0, max: 5 }), // canaries
        fc.integer({ min: 1, max: 20 }), // max_in_flight
        fc.boolean(), // release changed
        (n, existing, nAz, canaries, mif, changed) => {
          const azs = Array.from({ length: nAz }, (_, i) => ({ name: `z${i}`, cloud: i % 2 ? 'aws' : 'local' }));
          const before = group({ instances: existing, azs });
          const after = group({
            instances: n,
            azs,
            jobs: changed ? [job('v9'.padEnd(64, '0'))] : before.jobs,
            update: { ...before.update, canaries: { kind: 'abs', value: canaries }, maxInFlight: { kind: 'abs', value: mif } },
          });
          const p = plan(desired(after), deployed(before));
          const gp = p.groups[0]!;
          const flat = gp.waves.flat();
          expect(new Set(flat).size).toBe(flat.length);
          const changing = p.instances.filter((i) => i.action !== 'none' && i.action !== 'delete').map((i) => i.instance).sort();
          expect([...flat].sort()).toEqual(changing);
          expect(gp.canaries).toBe(Math.min(canaries, changing.length));
          gp.waves.forEach((w, idx) => {
            if (idx === 0 && gp.canaries > 0) expect(w).toHaveLength(gp.canaries);
            else expect(w.length).toBeLessThanOrEqual(mif);
          });
          expect(p.instances.filter((i) => i.action === 'delete')).toHaveLength(Math.max(0, existing - n));
          expect(p.noop).toBe(changing.length === 0 && existing <= n);
        },
      ),
      { numRuns: 300 },
    );
  });
});

describe('plan ETA', () => {
  it('uses watch times without history, and the median past instance time with it', () => {
    const g = group({ instances: 5, update: { ...group().update, canaries: { kind: 'abs', value: 1 }, maxInFlight: { kind: 'abs', value: 2 } } });
    // waves: [canary], [2], [2] → 3 waves
    const fresh = plan(desired(g), empty);
    expect(fresh.etaBasis).toBe('watch_times');
    expect(fresh.etaMs).toBe(1000 + 1500 + 2 * (500 + 1500));
    const learned = plan(desired(g), empty, { instanceMs: 4000 });
    expect(learned.etaBasis).toBe('history');
    expect(learned.etaMs).toBe(3 * 4000);
    // Never below what every instance must wait out.
    expect(plan(desired(g), empty, { instanceMs: 10 }).etaMs).toBe(1000 + 500 + 500);
  });
});

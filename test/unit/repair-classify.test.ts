import { describe, expect, it } from 'vitest';
import type { Desired, DesiredGroup } from '../../src/plan/types.js';
import { classify, downInstances, isMeltdown, repairPlan, type InstanceProbe } from '../../src/repair/classify.js';

const group = (instances: number): DesiredGroup => ({
  name: 'web', instances, azs: [{ name: 'z1', cloud: 'local' }], vmType: 'small', vmTypeDigest: 'd', jobs: [], health: [],
  update: { canaries: { kind: 'abs', value: 1 }, maxInFlight: { kind: 'abs', value: 2 }, canaryWatch: { minMs: 0, maxMs: 1 }, updateWatch: { minMs: 0, maxMs: 1 }, serial: true, vmStrategy: 'delete-create', autoRollback: true, maxFailures: 0 },
});
const desired = (n: number): Desired => ({ deployment: 'hello', groups: [group(n)] });
const healthy = (index: number): InstanceProbe => ({ id: `id-${index}`, instance: `web/${index}`, group: 'web', index, az: 'z1', cloud: 'local', cid: `vm-${index}`, vmListed: true, reachable: true, jobsDown: [], healthFailures: [], driftedFiles: [] });

describe('repair decisions', () => {
  it('classifies each probe into the problem an operator would name, with its fix', () => {
    const probes = [
      { ...healthy(0), vmListed: false },
      { ...healthy(1), reachable: false, unreachableDetail: 'ssh_unreachable' },
      { ...healthy(2), jobsDown: ['web'] },
      { ...healthy(3), healthFailures: ['http-health: 503'] },
      { ...healthy(4), driftedFiles: ['jobs/web/config/config.json'] },
      healthy(5),
      { ...healthy(9) },
    ];
    const problems = classify(probes, desired(7), [{ cloud: 'local', cid: 'vm-x', tags: {} }], false);
    expect(problems.map((p) => [p.type, p.instance, p.fix])).toEqual([
      ['missing_vm', 'web/0', 'recreate'],
      ['unresponsive_vm', 'web/1', 'recreate'],
      ['job_down', 'web/2', 'restart'],
      ['job_down', 'web/3', 'restart'],
      ['config_drift', 'web/4', 'reapply'],
      ['extra_vm', 'web/9', 'none'],
      ['missing_instance', 'web/6', 'none'],
      ['orphan_vm', null, 'none'],
    ]);
    expect(classify([], desired(0), [{ cloud: 'local', cid: 'vm-x', tags: {} }], true)[0]!.fix).toBe('delete');
    expect(downInstances(problems)).toEqual(['web/0', 'web/1', 'web/2', 'web/3']);
  });

  it('calls a meltdown only when both thresholds are reached', () => {
    const t = { meltdownMinInstances: 5, meltdownMinPercent: 20 };
    expect(isMeltdown(6, 40, t)).toBe(false); // 15%
    expect(isMeltdown(8, 40, t)).toBe(true); // 20%
    expect(isMeltdown(4, 10, t)).toBe(false); // fewer than 5
    expect(isMeltdown(5, 10, t)).toBe(true);
    expect(isMeltdown(0, 0, t)).toBe(false);
  });

  it('plans recreate, restart and re-apply without canaries, within max_in_flight', () => {
    const probes = [{ ...healthy(0), reachable: false }, { ...healthy(1), jobsDown: ['web'] }, { ...healthy(2), driftedFiles: ['jobs/web/bin/start'] }, { ...healthy(3), vmListed: false }];
    const problems = classify(probes, desired(4), [], false);
    const plan = repairPlan(problems, probes, desired(4), () => 2, 'fp');
    expect(plan.instances.map((i) => [i.instance, i.action, i.reasons[0]!.code])).toEqual([
      ['web/0', 'recreate', 'unresponsive_vm'],
      ['web/1', 'restart', 'job_down'],
      ['web/2', 'update', 'config_drift'],
      ['web/3', 'create', 'missing_vm'],
    ]);
    expect(plan.instances[2]!.reasons[0]!.keys).toEqual(['jobs/web/bin/start']);
    expect(plan.groups[0]).toMatchObject({ canaries: 0, maxInFlight: 2, waves: [['web/0', 'web/1'], ['web/2', 'web/3']] });
  });

  it('never rebuilds a VM from a manifest that moved on since the last deploy; still restarts jobs', () => {
    const probes = [{ ...healthy(0), vmListed: false, manifestAhead: true }, { ...healthy(1), reachable: false, manifestAhead: true }, { ...healthy(2), jobsDown: ['web'], manifestAhead: true }];
    const problems = classify(probes, desired(3), [], false);
    expect(problems.map((p) => [p.type, p.fix])).toEqual([['missing_vm', 'none'], ['unresponsive_vm', 'none'], ['job_down', 'restart']]);
    expect(problems[0]!.detail).toContain('run director deploy');
  });
});

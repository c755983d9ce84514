/**
 * Drift repair on the local cloud, as an operator meets it: break a deployment behind the
 * director's back in every way repair knows, check the dry run reports each problem with its
 * type and instance (exit 2), repair it (exit 0), and see every instance serve again; a meltdown
 * is reported and nothing is recreated; a scheduled run repairs a VM deleted between runs.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { helloManifest, httpGet, startCli, workspace } from '../helpers/cli.js';

interface VmJson { instance: string; cid: string | null; ips: string[]; state: string }
interface RepairJson { exit_code: number; problems: { type: string; instance: string | null; fix: string }[]; meltdown: boolean }

describe('director repair on the local cloud', () => {
  const ws = workspace('repair');
  const vms = async () => JSON.parse((await ws.cli(['vms', '--json'])).stdout) as VmJson[];
  const repairJson = async (...args: string[]) => {
    const r = await ws.cli(['repair', 'hello', '--json', ...args]);
    const out = JSON.parse(r.stdout.trim().split('\n').pop()!) as RepairJson;
    expect(out.exit_code).toBe(r.code);
    return out;
  };
  const allServe = async () => {
    for (const vm of await vms()) expect((await httpGet(`http://${vm.ips[0]}:8080/`))?.body, vm.instance).toContain(`from ${vm.instance}`);
  };

  beforeAll(async () => {
    ws.writeManifest(helloManifest({ maxInFlight: 4 }));
    const r = await ws.cli(['deploy', ws.manifest, '--yes']);
    expect(r.code, r.stderr).toBe(0);
  });
  afterAll(async () => {
    await ws.cli(['delete-deployment', 'hello', '--yes']);
    await ws.cleanup();
  });

  it('a clean deployment: dry run exits 0', async () => {
    const out = await repairJson('--dry-run');
    expect(out.problems).toEqual([]);
  });

  it('reports every kind of drift with its type and instance, exit 2, and repairs it all, exit 0', async () => {
    const faults = [
      ['delete-vm', 'web/0'],
      ['stop-ssh', 'web/1'],
      ['kill-job', 'web/2', 'web'],
      ['edit-file', 'web/3', 'director/current/jobs/web/config/config.json'],
      ['create-vm', '-d', 'hello'],
    ];
    for (const f of faults) {
      const r = await ws.cli(['local-cloud', ...f]);
      expect(r.code, r.stderr).toBe(0);
    }
    const found = await repairJson('--dry-run');
    expect(found.exit_code).toBe(2);
    expect(found.problems.map((p) => `${p.type} ${p.instance ?? '-'}`).sort()).toEqual([
      'config_drift web/3',
      'job_down web/2',
      'missing_vm web/0',
      'orphan_vm -',
      'unresponsive_vm web/1',
    ]);
    expect(found.problems.find((p) => p.type === 'orphan_vm')!.fix).toBe('none');

    const fixed = await repairJson('--yes', '--delete-orphans');
    expect(fixed.exit_code).toBe(0);
    const again = await repairJson('--dry-run');
    expect(again.problems).toEqual([]);
    expect((await vms()).map((v) => v.state)).toEqual(['running', 'running', 'running', 'running']);
    await allServe();
    const local = JSON.parse((await ws.cli(['local-cloud', 'vms', '--json'])).stdout) as unknown[];
    expect(local).toHaveLength(4);
  });

  it('a meltdown is reported and nothing is recreated', async () => {
    ws.writeManifest(helloManifest({ maxInFlight: 4 }) + 'repair: { meltdown_min_instances: 2, meltdown_min_percent: 50 }\n');
    expect((await ws.cli(['deploy', ws.manifest, '--yes'])).code).toBe(0);
    for (const i of ['web/0', 'web/1', 'web/2']) expect((await ws.cli(['local-cloud', 'delete-vm', i])).code).toBe(0);
    const r = await ws.cli(['repair', 'hello', '--yes']);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('meltdown');
    expect((await vms()).filter((v) => v.state === 'missing').map((v) => v.instance)).toEqual(['web/0', 'web/1', 'web/2']);
    expect((JSON.parse((await ws.cli(['local-cloud', 'vms', '--json'])).stdout) as unknown[]).length).toBe(1);
    // The dry run still reports what is down, and says a repair would not act.
    const report = await repairJson('--dry-run');
    expect(report.meltdown).toBe(true);
    expect(report.problems.map((p) => `${p.type} ${p.instance}`)).toEqual(['missing_vm web/0', 'missing_vm web/1', 'missing_vm web/2']);
    // A deploy (an operator's deliberate act) still converges: it recreates the missing VMs.
    ws.writeManifest(helloManifest({ maxInFlight: 4 }));
    expect((await ws.cli(['deploy', ws.manifest, '--yes'])).code).toBe(0);
    expect((await vms()).map((v) => v.state)).toEqual(['running', 'running', 'running', 'running']);
  });

  it('a scheduled run repairs a VM deleted between runs', async () => {
    const loop = startCli(['repair', 'hello', '--yes', '--every', '1s', '--json'], { home: ws.home, cwd: ws.dir });
    try {
      // The first run repairs what the previous test left; then break web/1 and wait for a run to fix it.
      await loop.waitForEvent((e) => e.exit_code === 0, 60_000);
      const before = (await vms()).find((v) => v.instance === 'web/1')!;
      expect((await ws.cli(['local-cloud', 'delete-vm', 'web/1'])).code).toBe(0);
      await loop.waitForEvent((e) => (e.problems as { type: string }[] | undefined)?.some((p) => p.type === 'missing_vm') === true && e.exit_code === 0, 60_000);
      const after = (await vms()).find((v) => v.instance === 'web/1')!;
      expect(after.state).toBe('running');
      expect(after.cid).not.toBe(before.cid);
      await allServe();
    } finally {
      loop.child.kill('SIGINT');
      expect(await loop.exited).toBe(0);
    }
  });
});

/**
 * The first-deploy path end to end, as a user drives it: the real CLI, real local VMs reached over
 * SSH, real job processes answering HTTP on their own loopback addresses.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { helloManifest, httpGet, workspace } from '../helpers/cli.js';

interface VmJson {
  instance: string;
  id: string;
  cid: string;
  az: string;
  ips: string[];
  state: string;
  version: string;
}

describe('deploy hello on the local cloud', () => {
  const ws = workspace('e2e');
  const vms = async (): Promise<VmJson[]> => {
    const r = await ws.cli(['vms', '--json']);
    expect(r.code, r.stderr).toBe(0);
    return JSON.parse(r.stdout) as VmJson[];
  };
  const lastTask = async () => {
    const r = await ws.cli(['tasks', '--json']);
    return (JSON.parse(r.stdout) as { id: number; state: string }[])[0]!;
  };
  const events = async (id: number) => {
    const r = await ws.cli(['task', String(id), '--json']);
    return (JSON.parse(r.stdout) as { events: { stage: string; instance: string | null; state: string; message: string | null }[] }).events;
  };

  beforeAll(() => {
    ws.writeManifest(helloManifest());
  });
  afterAll(async () => {
    await ws.cleanup();
  });

  it('refuses to deploy without a terminal or --yes, and changes nothing', async () => {
    const r = await ws.cli(['deploy', ws.manifest]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('--yes');
    expect(r.stdout).toContain('4 to create');
    expect(await vms()).toEqual([]);
  });

  it('creates 4 VMs over two AZs and every instance answers with its name and the release version', async () => {
    const r = await ws.cli(['deploy', ws.manifest, '--yes']);
    expect(r.code, r.stdout + r.stderr).toBe(0);
    expect(r.stdout).toMatch(/Task \d+ done/);
    const list = await vms();
    expect(list.map((v) => v.instance)).toEqual(['web/0', 'web/1', 'web/2', 'web/3']);
    expect(list.map((v) => v.az)).toEqual(['z1', 'z2', 'z1', 'z2']);
    expect(new Set(list.map((v) => v.ips[0])).size).toBe(4);
    for (const vm of list) {
      expect(vm.state).toBe('running');
      expect(vm.version).toMatch(/^hello\/[0-9a-f]{12}$/);
      const res = await httpGet(`http://${vm.ips[0]}:8080/`);
      expect(res?.body).toContain(`Hello from ${vm.instance} (hello ${vm.version.split('/')[1]}`);
    }
  });

  it('a second deploy reports no changes and touches nothing', async () => {
    const before = await vms();
    const r = await ws.cli(['deploy', ws.manifest, '--yes']);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain('no changes');
    const task = await lastTask();
    expect((await events(task.id)).filter((e) => e.stage === 'update')).toEqual([]);
    expect((await vms()).map((v) => v.cid)).toEqual(before.map((v) => v.cid));
  });

  it('a property change updates in place: canary first, then at most max_in_flight at a time', async () => {
    const before = await vms();
    ws.writeManifest(helloManifest({ greeting: 'Howdy' }));
    const plan = await ws.cli(['plan', ws.manifest, '--detailed-exitcode']);
    expect(plan.code).toBe(2);
    expect(plan.stdout).toContain('properties changed: greeting');

    const r = await ws.cli(['deploy', ws.manifest, '--yes']);
    expect(r.code, r.stdout + r.stderr).toBe(0);
    const after = await vms();
    expect(after.map((v) => v.cid)).toEqual(before.map((v) => v.cid));
    for (const vm of after) expect((await httpGet(`http://${vm.ips[0]}:8080/`))?.body).toMatch(/^Howdy from /);

    const ev = (await events((await lastTask()).id)).filter((e) => e.stage === 'update' && e.state !== 'step');
    const firstOther = ev.findIndex((e) => e.instance !== 'web/0');
    const canaryDone = ev.findIndex((e) => e.instance === 'web/0' && e.state === 'finished');
    expect(canaryDone).toBeGreaterThanOrEqual(0);
    expect(canaryDone).toBeLessThan(firstOther);
    let inFlight = 0;
    let peak = 0;
    for (const e of ev) {
      if (e.state === 'started') peak = Math.max(peak, ++inFlight);
      if (e.state === 'finished' || e.state === 'failed') inFlight--;
    }
    expect(peak).toBe(2);
    const steps = (await events((await lastTask()).id)).filter((e) => e.instance === 'web/3' && e.state === 'step').map((e) => e.message);
    expect(steps).toEqual(['connect', 'install', 'drain', 'stop', 'apply', 'start', 'health']);
  });

  it('changing the instance count creates or deletes only the difference', async () => {
    const before = await vms();
    ws.writeManifest(helloManifest({ greeting: 'Howdy', instances: 5 }));
    expect((await ws.cli(['deploy', ws.manifest, '--yes'])).code).toBe(0);
    const grown = await vms();
    expect(grown).toHaveLength(5);
    expect(grown.slice(0, 4).map((v) => v.cid)).toEqual(before.map((v) => v.cid));
    const extra = grown[4]!;
    expect((await httpGet(`http://${extra.ips[0]}:8080/`))?.body).toContain('from web/4');

    ws.writeManifest(helloManifest({ greeting: 'Howdy', instances: 4 }));
    expect((await ws.cli(['deploy', ws.manifest, '--yes'])).code).toBe(0);
    const shrunk = await vms();
    expect(shrunk.map((v) => v.cid)).toEqual(before.map((v) => v.cid));
    expect(await httpGet(`http://${extra.ips[0]}:8080/`, 500)).toBeNull();
  });

  it('changing the VM type recreates every instance on a new VM', async () => {
    const before = await vms();
    ws.writeManifest(helloManifest({ greeting: 'Howdy', vmType: 'large' }));
    const r = await ws.cli(['deploy', ws.manifest, '--yes']);
    expect(r.code, r.stdout + r.stderr).toBe(0);
    const after = await vms();
    expect(after.map((v) => v.id)).toEqual(before.map((v) => v.id));
    for (let i = 0; i < 4; i++) expect(after[i]!.cid).not.toBe(before[i]!.cid);
    for (const vm of after) expect((await httpGet(`http://${vm.ips[0]}:8080/`))?.body).toContain(`from ${vm.instance}`);
    for (const vm of before) if (!after.some((a) => a.ips[0] === vm.ips[0])) expect(await httpGet(`http://${vm.ips[0]}:8080/`, 500)).toBeNull();
  });

  it('halts at a failing canary and rolls it back: the task names instance, step and class; every instance serves the old version', async () => {
    const before = await vms();
    ws.writeManifest(helloManifest({ greeting: 'Broken', vmType: 'large', props: { healthy: false }, canaryWatch: '100-1500' }));
    const r = await ws.cli(['deploy', ws.manifest, '--yes']);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('web/0 failed at health');
    expect(r.stderr).toContain('rolled back 1 instance(s)');
    const task = await lastTask();
    expect(task.state).toBe('error');
    const detail = JSON.parse((await ws.cli(['task', String(task.id), '--json'])).stdout) as { error: { instance: string; step: string; class: string; rollback: { rolledBack: string[] } } };
    expect(detail.error).toMatchObject({ instance: 'web/0', step: 'health', class: 'application' });
    expect(detail.error.rollback.rolledBack).toEqual(['web/0']);
    const ev = await events(task.id);
    expect(ev.filter((e) => e.stage === 'update' && e.state === 'started').map((e) => e.instance)).toEqual(['web/0']);
    const after = await vms();
    expect(after.map((v) => v.state)).toEqual(['running', 'running', 'running', 'running']);
    for (const vm of after) expect((await httpGet(`http://${vm.ips[0]}:8080/`))?.body).toMatch(/^Howdy from /);
    expect(after.map((v) => v.cid)).toEqual(before.map((v) => v.cid));
    expect(after.map((v) => v.version)).toEqual(before.map((v) => v.version));
    // Rolled back to what ran before: the next deploy of that manifest has nothing to do.
    ws.writeManifest(helloManifest({ greeting: 'Howdy', vmType: 'large' }));
    expect((await ws.cli(['plan', ws.manifest, '--detailed-exitcode'])).code).toBe(0);
  });

  it('a release that breaks a later wave is halted there and rolled back on every instance it reached, newest first', async () => {
    const before = await vms();
    const server = join(ws.dir, 'releases', 'hello', 'jobs', 'web', 'bin', 'server.py');
    const original = readFileSync(server, 'utf8');
    // A new release version whose health check fails on web/2 only.
    writeFileSync(server, original.replace('elif cfg.get("healthy", True):', 'elif cfg.get("healthy", True) and cfg["instance"] != "web/2":'));
    try {
      // One at a time, so the instance after the failing one is provably never touched.
      ws.writeManifest(helloManifest({ greeting: 'Howdy', vmType: 'large', updateWatch: '100-1500', maxInFlight: 1 }));
      const r = await ws.cli(['deploy', ws.manifest, '--yes']);
      expect(r.code).toBe(1);
      expect(r.stderr).toContain('web/2 failed at health');
      expect(r.stderr).toContain('rolled back 3 instance(s)');
      const task = await lastTask();
      const ev = await events(task.id);
      const started = ev.filter((e) => e.stage === 'update' && e.state === 'started').map((e) => e.instance);
      expect(started).toEqual(['web/0', 'web/1', 'web/2']);
      const rolled = ev.filter((e) => e.stage === 'rollback' && e.state === 'started' && e.instance).map((e) => e.instance);
      expect(rolled).toEqual(['web/2', 'web/1', 'web/0']);
      expect(ev.some((e) => e.instance === 'web/3')).toBe(false);
      const after = await vms();
      expect(after.map((v) => v.version)).toEqual(before.map((v) => v.version));
      expect(after.map((v) => v.state)).toEqual(['running', 'running', 'running', 'running']);
      for (const vm of after) expect((await httpGet(`http://${vm.ips[0]}:8080/`))?.body).toContain(`(hello ${before[0]!.version.split('/')[1]}`);
    } finally {
      writeFileSync(server, original);
    }
  });

  it('task N --vm shows the full, timestamped output of every command run on that VM', async () => {
    const list = JSON.parse((await ws.cli(['tasks', '--json'])).stdout) as { id: number; type: string; state: string; result: string | null }[];
    // The oldest task is the refused deploy (recorded as cancelled, no VM touched); then the first real one.
    expect(list.at(-1)).toMatchObject({ type: 'deploy', state: 'cancelled' });
    const firstDeploy = list.filter((t) => t.type === 'deploy' && t.state === 'done').at(-1)!;
    expect(firstDeploy.result).toBe('4 instance(s) updated');
    const r = await ws.cli(['task', String(firstDeploy.id), '--vm', 'web/1']);
    expect(r.code).toBe(0);
    const lines = r.stdout.trim().split('\n');
    for (const l of lines) expect(l).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z /);
    expect(r.stdout).toContain('bin/ctl start');
    expect(r.stdout).toContain('web: started (pid');
    expect(r.stdout).not.toContain('web/0');
    const missing = await ws.cli(['task', String(firstDeploy.id), '--vm', 'web/9']);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toContain('instances with logs: web/0, web/1, web/2, web/3');
  });

  it('delete-deployment stops the jobs and deletes the VMs', async () => {
    const before = await vms();
    const r = await ws.cli(['delete-deployment', 'hello', '--yes']);
    expect(r.code, r.stdout + r.stderr).toBe(0);
    expect(await vms()).toEqual([]);
    for (const vm of before) expect(await httpGet(`http://${vm.ips[0]}:8080/`, 500)).toBeNull();
    const status = JSON.parse((await ws.cli(['local-cloud', 'status', '--json'])).stdout) as { vms?: number };
    expect(status.vms).toBe(0);
  });
});

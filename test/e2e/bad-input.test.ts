/**
 * Bad input and failures, as a user meets them: one clear message naming what and where, a
 * non-zero exit, no stack trace, a task that records the same, nothing half-created unrecorded,
 * and no ((var)) value in any output.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { helloManifest, httpGet, workspace } from '../helpers/cli.js';

const STACK = /\n\s+at .+:\d+:\d+/;

describe('bad input and failing jobs', () => {
  const ws = workspace('bad');
  afterAll(async () => {
    await ws.cli(['delete-deployment', 'hello', '--yes']);
    await ws.cleanup();
  });
  const lastTask = async () => (JSON.parse((await ws.cli(['tasks', '--json'])).stdout) as { id: number; state: string; error: { message: string } | null }[])[0]!;

  it('an invalid manifest names the file, line and field, exits 1 and records the failed task', async () => {
    const text = helloManifest().replace('instances: 4', 'instances: four');
    const file = ws.writeManifest(text);
    const line = text.split('\n').findIndex((l) => l.includes('instances: four')) + 1;
    const r = await ws.cli(['deploy', file, '--yes']);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`hello.yml:${line}:`);
    expect(r.stderr).toContain('instance_groups[0].instances');
    expect(r.stderr).not.toMatch(STACK);
    const task = await lastTask();
    expect(task.state).toBe('error');
    expect(task.error!.message).toContain('instance_groups[0].instances');
  });

  it('a missing var is named with where it is used', async () => {
    const file = ws.writeManifest(helloManifest({ greeting: '((greeting))' }));
    const r = await ws.cli(['deploy', file, '--yes']);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('greeting');
    expect(r.stderr).toMatch(/hello\.yml:\d+/);
    expect(r.stderr).toContain('--var');
    expect(r.stderr).not.toMatch(STACK);
  });

  it('an unknown release names the job and the releases that exist', async () => {
    const file = ws.writeManifest(helloManifest().replace('release: hello', 'release: helo'));
    const r = await ws.cli(['deploy', file, '--yes']);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("'helo'");
    expect(r.stderr).toContain('hello');
    expect(r.stderr).not.toMatch(STACK);
  });

  it('a property the job does not declare is refused before anything is created', async () => {
    const file = ws.writeManifest(helloManifest({ props: { greting: 'typo' } }));
    const r = await ws.cli(['deploy', file, '--yes']);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("'greting'");
    expect(r.stderr).toContain('greeting');
    expect(JSON.parse((await ws.cli(['vms', '--json'])).stdout)).toEqual([]);
  });

  it('a job that fails to start halts at the canary with its own error output; the rollback deletes what it created', async () => {
    const file = ws.writeManifest(helloManifest({ props: { crash_on_start: true } }));
    const r = await ws.cli(['deploy', file, '--yes']);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('web/0 failed at health');
    expect(r.stderr).toContain('crash_on_start is set');
    expect(r.stderr).toContain('rolled back 1 instance(s)');
    expect(r.stderr).not.toMatch(STACK);
    expect(JSON.parse((await ws.cli(['vms', '--json'])).stdout)).toEqual([]);
    expect((await lastTask()).state).toBe('error');
  });

  it('with auto_rollback: false the failed VM stays, recorded as failed, and a fixed manifest converges from there', async () => {
    const file = ws.writeManifest(helloManifest({ props: { crash_on_start: true }, autoRollback: false }));
    const r = await ws.cli(['deploy', file, '--yes']);
    expect(r.code).toBe(1);
    expect(r.stdout + r.stderr).toContain('auto_rollback is false');
    const vms = JSON.parse((await ws.cli(['vms', '--json'])).stdout) as { instance: string; state: string; cid: string | null }[];
    expect(vms).toHaveLength(1);
    expect(vms[0]).toMatchObject({ instance: 'web/0', state: 'failed' });
    expect(vms[0]!.cid).toMatch(/^local-/);

    const fixed = ws.writeManifest(helloManifest());
    const plan = await ws.cli(['plan', fixed]);
    expect(plan.stdout).toMatch(/web\/0\s+update.*never finished an update/);
    const again = await ws.cli(['deploy', fixed, '--yes']);
    expect(again.code, again.stdout + again.stderr).toBe(0);
    const after = JSON.parse((await ws.cli(['vms', '--json'])).stdout) as { state: string; cid: string }[];
    expect(after.map((v) => v.state)).toEqual(['running', 'running', 'running', 'running']);
    expect(after[0]!.cid).toBe(vms[0]!.cid);
  });

  it('never prints a ((var)) value: not in the plan, the events, the task, the per-VM log or the state DB', async () => {
    const secret = 'Sup3r-Secret-Greeting';
    const file = ws.writeManifest(helloManifest({ greeting: '((greeting))' }));
    const outputs: string[] = [];
    const run = async (args: string[]) => {
      const r = await ws.cli(args);
      outputs.push(r.stdout, r.stderr);
      return r;
    };
    expect((await run(['plan', file, '--var', `greeting=${secret}`, '--json'])).code).toBe(0);
    const deploy = await run(['deploy', file, '--yes', '--verbose', '--var', `greeting=${secret}`]);
    expect(deploy.code, deploy.stdout + deploy.stderr).toBe(0);
    expect(deploy.stdout).toContain('properties changed: greeting');
    const task = await lastTask();
    await run(['task', String(task.id), '--json']);
    for (const vm of ['web/0', 'web/1', 'web/2', 'web/3']) await run(['task', String(task.id), '--vm', vm]);
    await run(['tasks', '--json']);
    await run(['vms', '--json']);
    // The job itself serves the greeting: the value did reach the VMs.
    const ips = (JSON.parse((await ws.cli(['vms', '--json'])).stdout) as { ips: string[] }[]).map((v) => v.ips[0]);
    expect((await httpGet(`http://${ips[0]}:8080/`))?.body).toContain(secret);
    for (const out of outputs) expect(out).not.toContain(secret);
    const db = readFileSync(join(ws.home, 'state.db')).toString('latin1') + readFileSync(join(ws.home, 'state.db-wal'), { flag: 'a+' }).toString('latin1');
    expect(db).not.toContain(secret);
  });
});

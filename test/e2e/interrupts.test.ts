/**
 * Interrupted runs, with real director processes on the local cloud: kill -9 mid-rollout then a
 * rerun that converges (nothing leaked, nothing duplicated, the old task closed), a second deploy
 * refused while the first holds the lock, and Ctrl-C that finishes in-flight work and stops.
 */
import { afterAll, beforeEach, describe, expect, it } from 'vitest';
import { helloManifest, httpGet, startCli, workspace } from '../helpers/cli.js';

interface VmJson { instance: string; cid: string; ips: string[]; state: string; version: string }

describe('interrupted deploys', () => {
  const ws = workspace('int');
  const vms = async () => JSON.parse((await ws.cli(['vms', '--json'])).stdout) as VmJson[];
  const tasks = async () => JSON.parse((await ws.cli(['tasks', '--json'])).stdout) as { id: number; state: string; error: { code: string } | null; result: string | null }[];
  const localVmCount = async () => (JSON.parse((await ws.cli(['local-cloud', 'status', '--json'])).stdout) as { vms: number }).vms;

  beforeEach(async () => {
    // Each test starts from 4 healthy instances greeting "Hello".
    ws.writeManifest(helloManifest({ instances: 4 }));
    const r = await ws.cli(['deploy', ws.manifest, '--yes']);
    expect(r.code, r.stdout + r.stderr).toBe(0);
  });
  afterAll(async () => {
    await ws.cli(['delete-deployment', 'hello', '--yes']);
    await ws.cleanup();
  });

  it('kill -9 mid-rollout: the next deploy closes the old task, takes the lock and converges without leaking VMs', async () => {
    // Slow enough to be caught in the middle: one at a time, each watched for 800 ms.
    ws.writeManifest(helloManifest({ instances: 5, greeting: 'Killed', maxInFlight: 1, canaryWatch: '800-15000', updateWatch: '800-15000' }));
    const run = startCli(['deploy', ws.manifest, '--yes', '--json'], { home: ws.home, cwd: ws.dir });
    await run.waitForEvent((e) => e.instance === 'web/1' && e.state === 'started');
    run.child.kill('SIGKILL');
    await run.exited;

    const rerun = await ws.cli(['deploy', ws.manifest, '--yes']);
    expect(rerun.code, rerun.stdout + rerun.stderr).toBe(0);
    const list = await tasks();
    const killed = list[1]!;
    expect(killed.state).toBe('error');
    expect(killed.error!.code).toBe('director_died');
    const after = await vms();
    expect(after.map((v) => v.instance)).toEqual(['web/0', 'web/1', 'web/2', 'web/3', 'web/4']);
    expect(after.every((v) => v.state === 'running')).toBe(true);
    for (const vm of after) expect((await httpGet(`http://${vm.ips[0]}:8080/`))?.body).toMatch(/^Killed from /);
    // The local cloud hosts exactly the deployment's VMs: none leaked, none twice.
    expect(await localVmCount()).toBe(5);
    expect(JSON.parse((await ws.cli(['locks', '--json'])).stdout)).toEqual([]);
  });

  it('a second deploy of the same deployment fails at once, naming the task that holds the lock', async () => {
    ws.writeManifest(helloManifest({ instances: 4, greeting: 'First', maxInFlight: 1, canaryWatch: '1500-15000', updateWatch: '300-15000' }));
    const first = startCli(['deploy', ws.manifest, '--yes', '--json'], { home: ws.home, cwd: ws.dir });
    const started = await first.waitForEvent((e) => e.stage === 'update' && e.state === 'started');
    const second = await ws.cli(['deploy', ws.manifest, '--yes']);
    expect(second.code).toBe(1);
    expect(second.stderr).toContain(`locked by task ${started.taskId as number}`);
    expect(second.stderr).toContain(`director task ${started.taskId as number} --follow`);
    expect(await first.exited).toBe(0);
  });

  it('Ctrl-C lets the in-flight instance finish, starts nothing new, and records the task as cancelled', async () => {
    ws.writeManifest(helloManifest({ instances: 4, greeting: 'Interrupted', maxInFlight: 1, canaryWatch: '1000-15000', updateWatch: '1000-15000' }));
    const run = startCli(['deploy', ws.manifest, '--yes', '--json'], { home: ws.home, cwd: ws.dir });
    await run.waitForEvent((e) => e.instance === 'web/1' && e.state === 'started');
    run.child.kill('SIGINT');
    expect(await run.exited).toBe(130);
    const task = (await tasks())[0]!;
    expect(task.state).toBe('cancelled');
    expect(task.result).toContain('2 instance(s) updated, 2 not started');
    const bodies = await Promise.all((await vms()).map(async (v) => (await httpGet(`http://${v.ips[0]}:8080/`))?.body ?? ''));
    expect(bodies.map((b) => b.split(' ')[0])).toEqual(['Interrupted', 'Interrupted', 'Hello', 'Hello']);
    expect(JSON.parse((await ws.cli(['locks', '--json'])).stdout)).toEqual([]);
    // A rerun finishes the job.
    expect((await ws.cli(['deploy', ws.manifest, '--yes'])).code).toBe(0);
  });
});

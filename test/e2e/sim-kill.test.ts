/**
 * kill -9 of a real director process mid-rollout on the sim provider (200 instances, persisted
 * under DIRECTOR_HOME), then a rerun that converges: every instance running the new release,
 * exactly one VM per instance, the killed task closed, no lock left.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { startCli, workspace } from '../helpers/cli.js';

describe('kill -9 on the sim provider', () => {
  const ws = workspace('simkill');
  afterAll(() => ws.cleanup());

  it('converges after the director is killed mid-rollout', async () => {
    mkdirSync(join(ws.dir, 'sim'), { recursive: true });
    const cc = join(ws.dir, 'sim', 'cloud-config.yml');
    writeFileSync(cc, `azs: [{ name: a, cloud: sim }, { name: b, cloud: sim }]
clouds:
- { name: sim, type: sim, create_ms: 5, stop_ms: 10, apply_ms: 10, start_ms: 10, rate_limit: 100000 }
vm_types: [{ name: small }]
`);
    const manifest = (greeting: string) => {
      const file = join(ws.dir, 'sim', 'fleet.yml');
      writeFileSync(file, `name: fleet
releases: [{ name: hello, path: ../releases/hello }]
update: { canaries: 2, max_in_flight: 10, canary_watch_time: 0-5000, update_watch_time: 0-5000 }
instance_groups:
- name: web
  instances: 200
  azs: [a, b]
  vm_type: small
  jobs: [{ name: web, release: hello, properties: { greeting: ${greeting} } }]
  health: [http-health]
`);
      return file;
    };
    const first = await ws.cli(['deploy', manifest('A'), '--yes', '--cloud-config', cc]);
    expect(first.code, first.stderr).toBe(0);

    const run = startCli(['deploy', manifest('B'), '--yes', '--json', '--cloud-config', cc], { home: ws.home, cwd: ws.dir });
    let finished = 0;
    await run.waitForEvent((e) => e.stage === 'update' && e.state === 'finished' && ++finished >= 40);
    run.child.kill('SIGKILL');
    await run.exited;

    const rerun = await ws.cli(['deploy', manifest('B'), '--yes', '--cloud-config', cc]);
    expect(rerun.code, rerun.stdout + rerun.stderr).toBe(0);
    const tasks = JSON.parse((await ws.cli(['tasks', '--json'])).stdout) as { state: string; error: { code: string } | null }[];
    expect(tasks[1]).toMatchObject({ state: 'error', error: { code: 'director_died' } });
    const insts = JSON.parse((await ws.cli(['instances', 'fleet', '--json'])).stdout) as { state: string; health: string; cid: string }[];
    expect(insts).toHaveLength(200);
    expect(insts.filter((i) => i.state !== 'running' || i.health !== 'healthy')).toEqual([]);
    expect(new Set(insts.map((i) => i.cid)).size).toBe(200);
    // The sim cloud holds exactly the fleet's VMs: nothing leaked, nothing twice.
    const state = JSON.parse((await import('node:fs')).readFileSync(join(ws.home, 'sim', 'sim.json'), 'utf8')) as { vms: unknown[] };
    expect(state.vms).toHaveLength(200);
    // And the converged state is what the manifest says: nothing left to do.
    expect((await ws.cli(['plan', manifest('B'), '--cloud-config', cc, '--detailed-exitcode'])).code).toBe(0);
    expect(JSON.parse((await ws.cli(['locks', '--json'])).stdout)).toEqual([]);
  });
});

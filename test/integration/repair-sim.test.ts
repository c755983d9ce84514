/**
 * Repair rules on the sim provider, in-process: skip when a deploy holds the lock, escalate a
 * restart that does not heal to a recreate, report what could not be repaired.
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { openContext } from '../../src/app/context.js';
import { deploy, prepare } from '../../src/app/deploy.js';
import { repair } from '../../src/app/repair.js';
import { SimCloud } from '../../src/providers/sim/index.js';
import type { EventRow } from '../../src/tasks/tasks.js';
import { ROOT } from '../helpers/cli.js';

function setup() {
  const dir = mkdtempSync(join(tmpdir(), 'director-repair-sim-'));
  mkdirSync(join(dir, 'deployments'));
  writeFileSync(join(dir, 'deployments', 'cloud-config.yml'), `azs: [{ name: z1, cloud: sim }]
clouds:
- { name: sim, type: sim, persist: false, rate_limit: 100000 }
vm_types: [{ name: small }]
`);
  const manifest = join(dir, 'deployments', 'm.yml');
  writeFileSync(manifest, `name: rehearsal
releases: [{ name: hello, path: ${join(ROOT, 'releases', 'hello')} }]
update: { canaries: 0, max_in_flight: 10, update_watch_time: 0-200, canary_watch_time: 0-200 }
instance_groups:
- name: web
  instances: 6
  azs: [z1]
  vm_type: small
  jobs: [{ name: web, release: hello }]
  health: [http-health]
`);
  const ctx = openContext(join(dir, 'home'));
  const sim = () => SimCloud.for({ cloud: 'sim', home: join(dir, 'home') });
  return { dir, ctx, manifest, sim, cleanup: () => { ctx.close(); rmSync(dir, { recursive: true, force: true }); } };
}

describe('repair on the sim provider', () => {
  let env: ReturnType<typeof setup>;
  afterEach(() => env?.cleanup());

  it('skips, and says so, while a deploy holds the lock', async () => {
    env = setup();
    const prepared = await prepare(env.ctx, { manifestPath: env.manifest });
    expect((await deploy(env.ctx, prepared)).result!.ok).toBe(true);
    const holder = env.ctx.tasks.create('deploy', 'rehearsal', 'deploy rehearsal');
    env.ctx.locks.acquire('deployment:rehearsal', holder);
    const out = await repair(env.ctx, 'rehearsal', { dryRun: true, deleteOrphans: false });
    expect(out.exitCode).toBe(3);
    expect(out.skipped).toContain(`locked by task ${holder}`);
    expect(env.ctx.tasks.get(out.taskId)!.state).toBe('cancelled');
    env.ctx.locks.release('deployment:rehearsal', holder);
  });

  it('recreates a VM whose job a restart does not heal, and reports it when even that fails', async () => {
    env = setup();
    const prepared = await prepare(env.ctx, { manifestPath: env.manifest });
    expect((await deploy(env.ctx, prepared)).result!.ok).toBe(true);
    const sim = env.sim();
    // web/2's health fails on any VM, whatever is done to it: a broken host class.
    sim.faults.healthFails = (instance) => instance === 'web/2';
    const before = env.ctx.store.instances('rehearsal').find((i) => i.index === 2)!.vmCid;
    const events: EventRow[] = [];
    const out = await repair(env.ctx, 'rehearsal', { dryRun: false, deleteOrphans: false, onEvent: (e) => events.push(e) });
    expect(out.problems.map((p) => `${p.type} ${p.instance}`)).toEqual(['job_down web/2']);
    expect(events.some((e) => e.stage === 'repair' && (e.message ?? '').includes('restart did not heal web/2: recreating'))).toBe(true);
    expect(env.ctx.store.instances('rehearsal').find((i) => i.index === 2)!.vmCid).not.toBe(before);
    expect(out.unrepaired).toEqual(['web/2']);
    expect(out.exitCode).toBe(1);
    expect(env.ctx.tasks.get(out.taskId)!.error!.code).toBe('repair_incomplete');
    // Once the cause is gone, the next run repairs it.
    sim.faults.healthFails = undefined;
    expect((await repair(env.ctx, 'rehearsal', { dryRun: false, deleteOrphans: false })).exitCode).toBe(0);
    expect((await repair(env.ctx, 'rehearsal', { dryRun: true, deleteOrphans: false })).exitCode).toBe(0);
  });
});

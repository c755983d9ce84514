/**
 * The rollout engine's rules, on the sim provider through the real services (manifest → plan →
 * executor → state): canaries spread over clouds and finished first, a window never wider than
 * max_in_flight, halt at the first failure beyond max_failures, rollback of every touched
 * instance in reverse order, cancel, the deployment lock, and throttling that never fails an
 * instance.
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { openContext, type DirectorContext } from '../../src/app/context.js';
import { deploy, prepare } from '../../src/app/deploy.js';
import { SimCloud } from '../../src/providers/sim/index.js';
import type { RateLimitedProvider } from '../../src/providers/throttle.js';
import type { EventRow } from '../../src/tasks/tasks.js';
import { ROOT } from '../helpers/cli.js';

interface Opts {
  instances: number;
  greeting: string;
  canaries?: number;
  maxInFlight?: number;
  maxFailures?: number;
  autoRollback?: boolean;
  clouds?: string[];
  sim?: string;
  vmType?: string;
  vmStrategy?: string;
  progressDeadline?: string;
  /** a second group, `worker`, after web; both get this `serial` (BOSH: false on both → together) */
  worker?: { instances: number; serial: boolean };
}

function setup(o: { clouds?: string[]; sim?: string } = {}) {
  const dir = mkdtempSync(join(tmpdir(), 'director-rollout-'));
  mkdirSync(join(dir, 'deployments'));
  const clouds = o.clouds ?? ['sim'];
  writeFileSync(
    join(dir, 'deployments', 'cloud-config.yml'),
    `azs:\n${clouds.map((c) => `- { name: ${c}-az, cloud: ${c} }`).join('\n')}
clouds:
${clouds.map((c) => `- name: ${c}\n  type: sim\n  persist: false\n  rate_limit: 100000\n  stop_ms: 2\n  apply_ms: 2\n  start_ms: 2\n${o.sim ?? ''}`).join('')}
vm_types:
- name: small
- name: large
  cloud_properties: { size: large }
`,
  );
  const ctx = openContext(join(dir, 'home'));
  const manifest = (m: Opts) => {
    const file = join(dir, 'deployments', 'm.yml');
    writeFileSync(
      file,
      `name: rehearsal
releases:
- name: hello
  path: ${join(ROOT, 'releases', 'hello')}
update:
  canaries: ${m.canaries ?? 1}
  max_in_flight: ${m.maxInFlight ?? 5}
  canary_watch_time: 0-2000
  update_watch_time: 0-300
  max_failures: ${m.maxFailures ?? 0}
  auto_rollback: ${m.autoRollback ?? true}
  vm_strategy: ${m.vmStrategy ?? 'delete-create'}
${m.progressDeadline ? `  progress_deadline: ${m.progressDeadline}\n` : ''}instance_groups:
- name: web
  instances: ${m.instances}
  azs: [${clouds.map((c) => `${c}-az`).join(', ')}]
  vm_type: ${m.vmType ?? 'small'}
${m.worker ? `  update: { serial: ${m.worker.serial} }\n` : ''}  jobs:
  - name: web
    release: hello
    properties: { greeting: ${m.greeting} }
  health: [http-health]
${m.worker ? `- name: worker
  instances: ${m.worker.instances}
  azs: [${clouds.map((c) => `${c}-az`).join(', ')}]
  vm_type: small
  update: { serial: ${m.worker.serial} }
  jobs:
  - name: web
    release: hello
    properties: { greeting: ${m.greeting} }
  health: [http-health]
` : ''}`,
    );
    return file;
  };
  const run = async (m: Opts, hooks: { onEvent?: (e: EventRow) => void } = {}) => {
    const events: EventRow[] = [];
    const prepared = await prepare(ctx, { manifestPath: manifest(m) });
    const providers = prepared.providers;
    const outcome = await deploy(ctx, prepared, { onEvent: (e) => { events.push(e); hooks.onEvent?.(e); } });
    return { outcome, events, result: outcome.result!, task: ctx.tasks.get(outcome.taskId!)!, providers };
  };
  const sims = () => clouds.map((c) => SimCloud.for({ cloud: c, home: join(dir, 'home') }));
  const generations = () => new Map(sims().flatMap((s) => s.all()).map((vm) => [`${vm.tags.instance_group}/${vm.tags.index}`, vm.current]));
  return { dir, ctx, run, sims, generations, cleanup: () => { ctx.close(); rmSync(dir, { recursive: true, force: true }); } };
}

const started = (events: EventRow[], stage = 'update') => events.filter((e) => e.stage === stage && e.state === 'started' && e.instance).map((e) => e.instance!);

describe('rollout engine on the sim provider', () => {
  let env: ReturnType<typeof setup>;
  afterEach(() => env?.cleanup());

  it('never has more than max_in_flight instances in flight, keeps the window full, and updates each instance once', async () => {
    env = setup();
    await env.run({ instances: 40, greeting: 'A', maxInFlight: 40, canaries: 0 });
    const { events, result } = await env.run({ instances: 40, greeting: 'B', canaries: 2, maxInFlight: 7 });
    expect(result.ok).toBe(true);
    let inFlight = 0;
    let peak = 0;
    for (const e of events.filter((x) => x.stage === 'update' && x.state !== 'step')) {
      if (e.state === 'started') peak = Math.max(peak, ++inFlight);
      else inFlight--;
    }
    expect(peak).toBe(7);
    const s = started(events);
    expect(new Set(s).size).toBe(40);
    // Canaries finish before any other instance starts.
    const firstNonCanary = events.findIndex((e) => e.stage === 'update' && e.state === 'started' && !['web/0', 'web/1'].includes(e.instance!));
    const canariesDone = events.filter((e, i) => e.state === 'finished' && ['web/0', 'web/1'].includes(e.instance ?? '') && i < firstNonCanary);
    expect(canariesDone).toHaveLength(2);
  });

  it('spreads canaries over every cloud before the waves go on', async () => {
    env = setup({ clouds: ['sim-aws', 'sim-gcp', 'sim-local'] });
    const { events, result } = await env.run({ instances: 12, greeting: 'A', canaries: 3, maxInFlight: 4 });
    expect(result.ok).toBe(true);
    const canaryEvents = events.filter((e) => e.stage === 'update' && e.state === 'started' && (e.data as { canary?: boolean }).canary);
    expect(new Set(canaryEvents.map((e) => (e.data as { cloud: string }).cloud))).toEqual(new Set(['sim-aws', 'sim-gcp', 'sim-local']));
    const firstWave = events.findIndex((e) => e.stage === 'update' && e.state === 'started' && !(e.data as { canary?: boolean }).canary);
    const canaryFinishes = events.filter((e) => e.state === 'finished' && canaryEvents.some((c) => c.instance === e.instance));
    expect(canaryFinishes.every((e) => events.indexOf(e) < firstWave)).toBe(true);
  });

  it('halts at the first failure, starts nothing after it, and rolls every touched instance back in reverse order', async () => {
    env = setup();
    await env.run({ instances: 30, greeting: 'A', maxInFlight: 30, canaries: 0 });
    const before = env.generations();
    for (const s of env.sims()) s.faults.healthFails = (instance, gen) => instance === 'web/9' && gen !== before.get(instance);
    const { events, result, task } = await env.run({ instances: 30, greeting: 'B', canaries: 1, maxInFlight: 4 });
    expect(result.ok).toBe(false);
    expect(result.failed.map((f) => [f.instance, f.step, f.errorClass])).toEqual([['web/9', 'health', 'application']]);
    const halt = events.findIndex((e) => e.stage === 'halt');
    expect(halt).toBeGreaterThan(0);
    expect(events.slice(halt).some((e) => e.stage === 'update' && e.state === 'started')).toBe(false);
    const touched = started(events);
    expect(started(events, 'rollback')).toEqual([...touched].reverse());
    expect(result.rolledBack.sort()).toEqual([...touched].sort());
    expect(result.skipped.length).toBe(30 - touched.length);
    // Every instance runs what it ran before the rollout, touched or not.
    expect(env.generations()).toEqual(before);
    expect(task.state).toBe('error');
    expect(task.error).toMatchObject({ instance: 'web/9', step: 'health', class: 'application' });
    expect(task.error!.rollback!.rolledBack).toHaveLength(touched.length);
    // And the state says so: deploying the old manifest again has nothing to do.
    for (const s of env.sims()) s.faults.healthFails = undefined;
    const again = await env.run({ instances: 30, greeting: 'A', canaries: 1, maxInFlight: 4 });
    expect(again.outcome.plan.noop).toBe(true);
  });

  it('lets max_failures instances fail without halting, and reports them', async () => {
    env = setup();
    await env.run({ instances: 20, greeting: 'A', maxInFlight: 20, canaries: 0 });
    const before = env.generations();
    for (const s of env.sims()) s.faults.healthFails = (instance, gen) => ['web/5', 'web/12'].includes(instance) && gen !== before.get(instance);
    const { events, result, task } = await env.run({ instances: 20, greeting: 'B', canaries: 1, maxInFlight: 3, maxFailures: 2 });
    expect(result.failed.map((f) => f.instance).sort()).toEqual(['web/12', 'web/5']);
    expect(result.done).toHaveLength(18);
    expect(events.some((e) => e.stage === 'halt' || e.stage === 'rollback')).toBe(false);
    expect(task.state).toBe('error');
  });

  it('with auto_rollback false, halts and leaves touched instances as they are', async () => {
    env = setup();
    await env.run({ instances: 10, greeting: 'A', maxInFlight: 10, canaries: 0 });
    const before = env.generations();
    for (const s of env.sims()) s.faults.healthFails = (instance, gen) => instance === 'web/3' && gen !== before.get(instance);
    // One slot: the instances after the failing one are provably untouched.
    const { events, result } = await env.run({ instances: 10, greeting: 'B', canaries: 1, maxInFlight: 1, autoRollback: false });
    expect(result.ok).toBe(false);
    expect(events.some((e) => e.stage === 'rollback' && e.state === 'skipped')).toBe(true);
    expect(result.rolledBack).toEqual([]);
    const after = env.generations();
    expect(after.get('web/0')).not.toBe(before.get('web/0'));
    expect(after.get('web/9')).toBe(before.get('web/9'));
  });

  it('rolling back a first deploy deletes the instances it created', async () => {
    env = setup({ sim: '  fail_health: [web/2]\n' });
    const { result } = await env.run({ instances: 6, greeting: 'A', canaries: 1, maxInFlight: 2 });
    expect(result.ok).toBe(false);
    expect(env.ctx.store.instances('rehearsal')).toEqual([]);
    expect(env.sims()[0]!.size).toBe(0);
  });

  it('a cancel requested from another process stops new work and keeps what finished', async () => {
    env = setup();
    await env.run({ instances: 20, greeting: 'A', maxInFlight: 20, canaries: 0 });
    let taskId = 0;
    const { result, task } = await env.run({ instances: 20, greeting: 'B', canaries: 1, maxInFlight: 2 }, {
      onEvent: (e) => {
        taskId = e.taskId;
        if (e.instance === 'web/4' && e.state === 'started') env.ctx.tasks.requestCancel(taskId);
      },
    });
    expect(result.cancelled).toBe(true);
    expect(result.failed).toEqual([]);
    expect(result.done.length).toBeGreaterThanOrEqual(5);
    expect(result.done.length + result.skipped.length).toBe(20);
    expect(task.state).toBe('cancelled');
    expect(env.ctx.locks.list()).toEqual([]);
  });

  it('refuses a second deploy while the first holds the lock, naming the holder', async () => {
    env = setup({ sim: '  healthy_after_ms: 100\n' });
    const first = env.run({ instances: 4, greeting: 'A', maxInFlight: 1 });
    await new Promise((r) => setTimeout(r, 30));
    const second = await prepare(env.ctx, { manifestPath: join(env.dir, 'deployments', 'm.yml') });
    await expect(deploy(env.ctx, second)).rejects.toMatchObject({ code: 'deployment_locked' });
    const { result } = await first;
    expect(result.ok).toBe(true);
  });

  it('retries throttled cloud calls without failing an instance', async () => {
    env = setup({ sim: '  throttle_rate: 0.3\n' });
    const { result, providers } = await env.run({ instances: 60, greeting: 'A', maxInFlight: 20, canaries: 0 });
    expect(result.failed).toEqual([]);
    expect(result.done).toHaveLength(60);
    expect((providers.get('sim') as RateLimitedProvider).stats.throttled).toBeGreaterThan(5);
    expect(env.sims()[0]!.size).toBe(60);
  });

  it('rolls consecutive serial: false groups together, and serial ones one after another', async () => {
    env = setup({ sim: '  healthy_after_ms: 20\n' });
    const overlap = async (serial: boolean) => {
      const { events, result } = await env.run({ instances: 6, greeting: serial ? 'S' : 'P', canaries: 0, maxInFlight: 2, worker: { instances: 6, serial } });
      expect(result.ok).toBe(true);
      const upd = events.filter((e) => e.stage === 'update' && e.instance && e.state !== 'step');
      const lastWebFinish = Math.max(...upd.filter((e) => e.instance!.startsWith('web/') && e.state === 'finished').map((e) => events.indexOf(e)));
      const firstWorkerStart = Math.min(...upd.filter((e) => e.instance!.startsWith('worker/') && e.state === 'started').map((e) => events.indexOf(e)));
      return firstWorkerStart < lastWebFinish;
    };
    expect(await overlap(true)).toBe(false);
    expect(await overlap(false)).toBe(true);
  });

  it('a failure in the first group leaves the next serial group untouched, reported as skipped', async () => {
    env = setup();
    await env.run({ instances: 3, greeting: 'A', maxInFlight: 3, canaries: 0, worker: { instances: 3, serial: true } });
    const before = env.generations();
    for (const s of env.sims()) s.faults.healthFails = (instance, gen) => instance === 'web/1' && gen !== before.get(instance);
    const { result, events } = await env.run({ instances: 3, greeting: 'B', canaries: 1, maxInFlight: 1, worker: { instances: 3, serial: true } });
    expect(result.ok).toBe(false);
    expect(result.skipped).toEqual(expect.arrayContaining(['web/2', 'worker/0', 'worker/1', 'worker/2']));
    expect(events.some((e) => e.instance?.startsWith('worker/') && e.stage === 'update')).toBe(false);
    expect(env.generations()).toEqual(before);
  });

  it('create-swap-delete proves the new VM healthy before deleting the old one', async () => {
    env = setup();
    await env.run({ instances: 4, greeting: 'A', maxInFlight: 4, canaries: 0 });
    const oldCids = env.ctx.store.instances('rehearsal').map((i) => i.vmCid);
    const { events, result } = await env.run({ instances: 4, greeting: 'A', vmType: 'large', vmStrategy: 'create-swap-delete', canaries: 1, maxInFlight: 2 });
    expect(result.ok).toBe(true);
    const steps = events.filter((e) => e.instance === 'web/0' && e.state === 'step').map((e) => e.message);
    expect(steps.indexOf('health')).toBeLessThan(steps.lastIndexOf('delete_vm'));
    expect(steps.indexOf('create_vm')).toBeLessThan(steps.indexOf('drain'));
    const newCids = env.ctx.store.instances('rehearsal').map((i) => i.vmCid);
    expect(newCids.every((c, i) => c !== oldCids[i])).toBe(true);
    expect(env.sims()[0]!.size).toBe(4);
  });

  it('a failed create-swap-delete deletes the new VM and leaves the old one serving', async () => {
    env = setup();
    await env.run({ instances: 3, greeting: 'A', maxInFlight: 3, canaries: 0 });
    const oldCids = env.ctx.store.instances('rehearsal').map((i) => i.vmCid);
    const sim = env.sims()[0]!;
    const oldSet = new Set(oldCids);
    sim.faults.healthFails = () => false;
    // Every VM the swap creates fails its health check.
    sim.faults.healthFails = (instance) => instance === 'web/0' && sim.all().some((vm) => !oldSet.has(vm.cid) && vm.tags.index === '0');
    const { result, task } = await env.run({ instances: 3, greeting: 'A', vmType: 'large', vmStrategy: 'create-swap-delete', canaries: 1, maxInFlight: 1 });
    expect(result.failed.map((f) => f.instance)).toEqual(['web/0']);
    expect(result.rolledBack).toEqual(['web/0']);
    expect(env.ctx.store.instances('rehearsal').map((i) => [i.vmCid, i.state])).toEqual(oldCids.map((c) => [c, 'running']));
    expect(sim.all().map((v) => v.cid).sort()).toEqual([...oldCids].sort());
    expect(task.state).toBe('error');
  });

  it('fails a stalled rollout at progress_deadline, naming where each stuck instance is', async () => {
    env = setup({ sim: '  boot_never: [web/2]\n  boot_timeout_ms: 3000\n' });
    await env.run({ instances: 4, greeting: 'A', maxInFlight: 4, canaries: 0 }).catch(() => undefined);
    const { result, task, events } = await env.run({ instances: 4, greeting: 'B', canaries: 1, maxInFlight: 1, progressDeadline: '300' });
    expect(result.ok).toBe(false);
    const stuck = result.failed.find((f) => f.code === 'progress_deadline_exceeded');
    expect(stuck).toMatchObject({ instance: 'web/2', step: 'connect' });
    expect(events.some((e) => e.stage === 'halt' && (e.message ?? '').includes('web/2 at connect'))).toBe(true);
    expect(result.notRolledBack.map((n) => n.instance)).toEqual(['web/2']);
    expect(task.state).toBe('error');
  });

  it('deletes VMs an interrupted swap left behind before rolling out', async () => {
    env = setup();
    await env.run({ instances: 2, greeting: 'A', maxInFlight: 2, canaries: 0 });
    // What a crash between "new VM recorded" and "instance switched to it" leaves: a second VM for web/0.
    const web0 = env.ctx.store.instances('rehearsal')[0]!;
    const sim = env.sims()[0]!;
    const stray = sim.create({ az: 'sim-az', tags: { director: env.ctx.directorId, deployment: 'rehearsal', instance_group: 'web', index: '0', instance_id: web0.id }, createdAt: new Date().toISOString() });
    env.ctx.store.recordVm({ cloud: 'sim', cid: stray.cid, deployment: 'rehearsal', instanceId: web0.id, az: 'sim-az', ips: [stray.ip], sshHost: stray.ip, sshPort: 0, sshUser: 'sim', hostKey: null, createdAt: stray.createdAt });
    const { outcome, result } = await env.run({ instances: 2, greeting: 'A', maxInFlight: 2, canaries: 0 });
    expect(outcome.plan.strayVms).toEqual([{ cloud: 'sim', cid: stray.cid, instance: 'web/0' }]);
    expect(result.ok).toBe(true);
    expect(sim.get(stray.cid)).toBeUndefined();
    expect(env.ctx.store.vm('sim', stray.cid)).toBeNull();
    expect(sim.size).toBe(2);
  });
});

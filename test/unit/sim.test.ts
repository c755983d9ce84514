import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { DirectorError } from '../../src/errors.js';
import type { GenerationRef, InstanceHandle, LogFn } from '../../src/instance/driver.js';
import { StepError } from '../../src/instance/driver.js';
import type { HealthCheckDef } from '../../src/manifest/types.js';
import type { Vm, VmRequest } from '../../src/providers/provider.js';
import { ProviderSet } from '../../src/providers/registry.js';
import { healthRateHit, parseSimProperties, SimCloud, SimInstanceConnector, SimProvider, VirtualClock } from '../../src/providers/sim/index.js';
import { RateLimitedProvider } from '../../src/providers/throttle.js';
import type { VmRow } from '../../src/state/store.js';

const req = (group: string, index: number, extra: Record<string, string> = {}): VmRequest => ({
  tags: { director: 'd1', deployment: 'dep', instance_group: group, index: String(index), ...extra },
  az: 'z1',
  azCloudProperties: {},
  vmType: 'small',
  vmTypeCloudProperties: {},
  authorizedKey: 'ssh-ed25519 AAAA test',
});

const row = (vm: Vm): VmRow => ({
  cloud: vm.cloud,
  cid: vm.cid,
  deployment: 'dep',
  instanceId: null,
  az: vm.az,
  ips: vm.ips,
  sshHost: vm.sshHost,
  sshPort: vm.sshPort,
  sshUser: vm.sshUser,
  hostKey: null,
  createdAt: vm.createdAt,
});

const gen = (id: string): GenerationRef => ({
  id,
  archive: () => {
    throw new Error('the sim must never build an archive');
  },
});

const check: HealthCheckDef = { name: 'up', type: 'tcp', port: 8080, timeoutMs: 1000 };
const noLog: LogFn = () => {};
const open = (p: SimProvider, vm: Vm): Promise<InstanceHandle> => p.instances().open(row(vm), { label: 'test', baseDir: 'director', log: noLog });
const fast = { create_ms: 0, delete_ms: 0, stop_ms: 0, apply_ms: 0, start_ms: 0 };

const homes: string[] = [];
const tempHome = () => {
  const h = mkdtempSync(join(tmpdir(), 'director-sim-'));
  homes.push(h);
  return h;
};
afterEach(() => {
  vi.useRealTimers();
  for (const h of homes.splice(0)) rmSync(h, { recursive: true, force: true });
});

async function rejection(p: Promise<unknown>): Promise<DirectorError> {
  try {
    await p;
  } catch (err) {
    expect(err).toBeInstanceOf(DirectorError);
    return err as DirectorError;
  }
  throw new Error('expected a rejection');
}

describe('SimProvider: the provider contract', () => {
  it('creates tagged VMs on loopback addresses, lists by tags, merges metadata, deletes idempotently', async () => {
    const p = new SimProvider({ cloud: 'sim1', properties: fast });
    const [a, b, c] = await Promise.all([p.create(req('web', 0)), p.create(req('web', 1)), p.create(req('worker', 0))]);
    expect(a).toMatchObject({ cloud: 'sim1', az: 'z1', sshHost: a!.ips[0], sshPort: 0, sshUser: 'sim', hostKeyFingerprint: 'SHA256:sim', state: 'running' });
    expect(a!.cid).toMatch(/^sim-[0-9a-f]{8}$/);
    expect(a!.ips[0]).toMatch(/^127\.255\.\d{1,3}\.\d{1,3}$/);
    expect(new Set([a, b, c].map((v) => v!.ips[0])).size).toBe(3);
    expect(a!.tags).toMatchObject({ deployment: 'dep', instance_group: 'web', index: '0' });

    expect((await p.list({ deployment: 'dep', instance_group: 'web' })).map((v) => v.cid)).toEqual([a!.cid, b!.cid]);
    expect((await p.list({ deployment: 'dep', instance_group: 'web', index: '1' })).map((v) => v.cid)).toEqual([b!.cid]);
    expect(await p.list({ deployment: 'other' })).toEqual([]);
    expect(await p.list({})).toHaveLength(3);

    await p.setMetadata(a!.cid, { index: '7', extra: 'x' });
    const [moved] = await p.list({ index: '7' });
    expect(moved!.tags).toMatchObject({ deployment: 'dep', instance_group: 'web', index: '7', extra: 'x' });
    expect((await rejection(p.setMetadata('sim-00000000', { a: 'b' }))).code).toBe('vm_not_found');

    expect(await p.exists(a!.cid)).toBe(true);
    await p.delete(a!.cid);
    expect(await p.exists(a!.cid)).toBe(false);
    await p.delete(a!.cid);
    await p.delete('sim-deadbeef');
    expect((await p.list({ deployment: 'dep' })).map((v) => v.cid)).toEqual([b!.cid, c!.cid]);
    expect(p.sim).toMatchObject({ creates: 3, deletes: 1 });
    await p.close();
  });

  it('takes its latencies on the clock', async () => {
    const clock = new VirtualClock();
    const p = new SimProvider({ cloud: 's', properties: { create_ms: 300, delete_ms: 70 }, clock });
    const vm = await p.create(req('web', 0));
    expect(clock.now()).toBe(300);
    expect(vm.createdAt).toBe(new Date(300).toISOString());
    await p.delete(vm.cid);
    expect(clock.now()).toBe(370);
  });

  it('persists VMs under <home>/sim/<cloud>.json for the next process, and shares one cloud per (home, cloud) in this one', async () => {
    const home = tempHome();
    const p1 = new SimProvider({ cloud: 'rehearsal', home, properties: fast });
    const a = await p1.create(req('web', 0));
    const b = await p1.create(req('web', 1));
    const h = await open(p1, a);
    await h.apply(gen('g1'));
    await h.start();
    await p1.close();

    const file = join(home, 'sim', 'rehearsal.json');
    const onDisk = JSON.parse(readFileSync(file, 'utf8')) as { vms: Array<{ cid: string; current: string | null; job: string }> };
    expect(onDisk.vms.map((v) => v.cid)).toEqual([a.cid, b.cid]);
    expect(onDisk.vms[0]).toMatchObject({ current: 'g1', job: 'running' });

    // What a new process does: load the file afresh.
    const fresh = new SimCloud('rehearsal', file);
    expect(fresh.all().map((v) => v.cid)).toEqual([a.cid, b.cid]);
    expect(fresh.get(a.cid)).toMatchObject({ ip: a.ips[0], current: 'g1', job: 'running' });

    const p2 = new SimProvider({ cloud: 'rehearsal', home, properties: fast });
    expect(p2.sim).toBe(p1.sim);
    expect((await p2.list({ deployment: 'dep' })).map((v) => v.cid)).toEqual([a.cid, b.cid]);
    // A new VM never takes an address still in use.
    const c = await p2.create(req('web', 2));
    expect([a.ips[0], b.ips[0]]).not.toContain(c.ips[0]);
    await p2.close();

    const other = new SimProvider({ cloud: 'rehearsal', home: tempHome(), properties: fast });
    expect(await other.list({})).toEqual([]);
  });

  it('writes the changes of one event-loop turn together, before the next turn, without waiting for close()', async () => {
    const file = join(tempHome(), 'sim', 'c.json');
    const cloud = new SimCloud('c', file);
    const count = () => (JSON.parse(readFileSync(file, 'utf8')) as { vms: unknown[] }).vms.length;
    cloud.create({ az: 'z1', tags: {}, createdAt: '' });
    cloud.create({ az: 'z1', tags: {}, createdAt: '' });
    expect(existsSync(file)).toBe(false);
    await new Promise((resolve) => setImmediate(resolve));
    expect(count()).toBe(2);
    cloud.create({ az: 'z1', tags: {}, createdAt: '' });
    await new Promise((resolve) => setImmediate(resolve));
    expect(count()).toBe(3);
  });

  it('keeps VMs in memory only with persist: false', async () => {
    const home = tempHome();
    const p = new SimProvider({ cloud: 'mem', home, properties: { ...fast, persist: false } });
    await p.create(req('web', 0));
    await p.close();
    expect(p.sim.file).toBeNull();
    expect(() => readFileSync(join(home, 'sim', 'mem.json'))).toThrow();
  });

  it('rejects unknown properties and wrong types, naming the cloud, the key and the valid keys', () => {
    const unknown = (() => {
      try {
        parseSimProperties('bench', { create_msec: 5 });
      } catch (err) {
        return err as DirectorError;
      }
    })();
    expect(unknown).toMatchObject({ code: 'cloud_property_unknown', errorClass: 'user' });
    expect(unknown!.message).toContain("cloud 'bench'");
    expect(unknown!.message).toContain("'create_msec'");
    expect(unknown!.message).toContain("did you mean 'create_ms'");
    expect(unknown!.hint).toContain('fail_health_rate');

    for (const bad of [{ create_ms: '5' }, { create_ms: -1 }, { throttle_rate: 2 }, { fail_create: 'web/0' }, { boot_never: [1] }, { persist: 'yes' }]) {
      expect(() => new SimProvider({ cloud: 'bench', properties: bad })).toThrow(expect.objectContaining({ code: 'cloud_property_invalid', errorClass: 'user' }));
    }
    expect(() => parseSimProperties('bench', { rate_limit: 5, rate_limit_burst: 5, base_dir: 'x', fail_create: 0.1 })).not.toThrow();
  });
});

describe('SimProvider: faults', () => {
  it('fail_create by instance name', async () => {
    const p = new SimProvider({ cloud: 's', properties: { ...fast, fail_create: ['web/3'] } });
    const err = await rejection(p.create(req('web', 3)));
    expect(err).toMatchObject({ code: 'vm_create_failed', errorClass: 'infrastructure' });
    expect(err.message).toContain('web/3');
    await expect(p.create(req('web', 2))).resolves.toMatchObject({ cloud: 's' });
    expect(p.sim.size).toBe(1);
  });

  it('fail_create by fraction', async () => {
    let draw = 0.3;
    const p = new SimProvider({ cloud: 's', properties: { ...fast, fail_create: 0.5 }, random: () => draw });
    expect((await rejection(p.create(req('web', 0)))).code).toBe('vm_create_failed');
    draw = 0.7;
    await expect(p.create(req('web', 0))).resolves.toBeDefined();

    const all = new SimProvider({ cloud: 's', properties: { ...fast, fail_create: 1 } });
    const results = await Promise.allSettled(Array.from({ length: 20 }, (_, i) => all.create(req('web', i))));
    expect(results.every((r) => r.status === 'rejected')).toBe(true);
  });

  it('boot_never: opening the instance times out on the clock', async () => {
    const clock = new VirtualClock();
    const p = new SimProvider({ cloud: 's', properties: { ...fast, boot_never: ['web/1'], boot_timeout_ms: 45_000 }, clock });
    const ok = await p.create(req('web', 0));
    const never = await p.create(req('web', 1));
    await expect(open(p, ok)).resolves.toBeDefined();
    expect(clock.now()).toBe(0);
    const err = await rejection(open(p, never));
    expect(err).toBeInstanceOf(StepError);
    expect(err).toMatchObject({ step: 'connect', errorClass: 'infrastructure', code: 'vm_unreachable' });
    expect(clock.now()).toBe(45_000);
  });

  it('an unknown cid is unreachable', async () => {
    const p = new SimProvider({ cloud: 's', properties: fast });
    const vm = await p.create(req('web', 0));
    await p.delete(vm.cid);
    expect(await rejection(open(p, vm))).toMatchObject({ step: 'connect', errorClass: 'infrastructure', code: 'vm_unreachable' });
  });

  it('fail_health: the listed instances never pass a health check', async () => {
    const p = new SimProvider({ cloud: 's', properties: { ...fast, fail_health: ['web/1'] } });
    const results = [];
    for (const i of [0, 1]) {
      const h = await open(p, await p.create(req('web', i)));
      await h.apply(gen('g1'));
      await h.start();
      results.push(await h.check(check, { address: '', properties: {} }));
    }
    expect(results.map((r) => r.ok)).toEqual([true, false]);
    expect(results[1]!.detail).toContain('web/1');
    expect(results[1]!.detail).toContain('fail_health');
  });

  it('fail_health_rate picks (instance, generation) pairs deterministically, about rate of them', () => {
    let hits = 0;
    for (let i = 0; i < 20; i++) {
      for (let g = 0; g < 10; g++) {
        const hit = healthRateHit(`web/${i}`, `gen-${g}`, 0.5);
        expect(healthRateHit(`web/${i}`, `gen-${g}`, 0.5)).toBe(hit);
        if (hit) hits++;
      }
    }
    expect(hits).toBeGreaterThan(70);
    expect(hits).toBeLessThan(130);
    expect(healthRateHit('web/0', 'g', 0)).toBe(false);
    expect(healthRateHit('web/0', 'g', 1)).toBe(true);
  });

  it('fail_health_rate through the handle: the same answer on every poll, per instance and generation', async () => {
    const p = new SimProvider({ cloud: 's', properties: { ...fast, fail_health_rate: 0.5 } });
    for (let i = 0; i < 20; i++) {
      const h = await open(p, await p.create(req('web', i)));
      for (const g of ['ga', 'gb']) {
        await h.apply(gen(g));
        await h.start();
        const expected = !healthRateHit(`web/${i}`, g, 0.5);
        for (let poll = 0; poll < 3; poll++) expect((await h.check(check, { address: '', properties: {} })).ok).toBe(expected);
      }
    }
  });

  it('a generation that was healthy on an instance stays healthy there, so a rollback to it succeeds', async () => {
    const sim = new SimCloud('s', null);
    const clock = new VirtualClock();
    const steady = new SimInstanceConnector(sim, parseSimProperties('s', fast), clock);
    const flaky = new SimInstanceConnector(sim, parseSimProperties('s', { ...fast, fail_health_rate: 1 }), clock);
    const vm = sim.create({ az: 'z1', tags: { instance_group: 'web', index: '0' }, createdAt: '' });
    const r = { cid: vm.cid } as VmRow;
    const opts = { label: 'web/0', baseDir: 'd', log: noLog };

    const before = await steady.open(r, opts);
    await before.apply(gen('good'));
    await before.start();
    expect((await before.check(check, { address: '', properties: {} })).ok).toBe(true);

    const during = await flaky.open(r, opts);
    await during.stop();
    await during.apply(gen('bad'));
    await during.start();
    expect((await during.check(check, { address: '', properties: {} })).ok).toBe(false);
    await during.stop();
    expect(await during.activate('good')).toBe(true);
    await during.start();
    expect((await during.check(check, { address: '', properties: {} })).ok).toBe(true);
  });

  it('the healthFails hook fails chosen pairs in-process', async () => {
    const p = new SimProvider({ cloud: 's', properties: fast });
    p.sim.faults.healthFails = (instance, generation) => instance === 'web/0' && generation === 'g2';
    const h = await open(p, await p.create(req('web', 0)));
    await h.apply(gen('g1'));
    await h.start();
    expect((await h.check(check, { address: '', properties: {} })).ok).toBe(true);
    await h.apply(gen('g2'));
    expect((await h.check(check, { address: '', properties: {} })).ok).toBe(false);
  });
});

describe('SimInstanceHandle: lifecycle', () => {
  it('apply / start / check / stop / activate', async () => {
    const clock = new VirtualClock();
    const p = new SimProvider({ cloud: 's', properties: { stop_ms: 5, apply_ms: 7, start_ms: 11, healthy_after_ms: 100 }, clock });
    const vm = await p.create(req('web', 0));
    const h = await open(p, vm);
    const target = { address: vm.ips[0]!, properties: {} };
    expect(h.healthPollMs).toBe(5);
    expect(h.hostKeyFingerprint).toBe('SHA256:sim');
    const rec = () => p.sim.get(vm.cid)!;

    await h.prepare({ bootHook: true });
    await h.drain();
    expect(rec()).toMatchObject({ current: null, previous: null, job: 'stopped' });
    expect((await h.check(check, target)).ok).toBe(false);

    const t0 = clock.now();
    await h.apply(gen('g1'));
    expect(clock.now() - t0).toBe(7);
    expect(rec()).toMatchObject({ current: 'g1', previous: null });
    await h.start();
    expect(rec()).toMatchObject({ job: 'running', startedAt: clock.now() });
    expect(await h.status()).toEqual([{ job: 'sim', state: 'running', pid: null }]);

    const early = await h.check(check, target);
    expect(early.ok).toBe(false);
    expect(early.detail).toContain('starting');
    await clock.sleep(100);
    const healthy = await h.check(check, target);
    expect(healthy).toMatchObject({ ok: true });
    expect(healthy.detail).toContain('g1');

    await h.stop();
    expect(await h.status()).toEqual([{ job: 'sim', state: 'stopped', pid: null }]);
    expect((await h.check(check, target)).ok).toBe(false);

    await h.apply(gen('g2'));
    expect(rec()).toMatchObject({ current: 'g2', previous: 'g1' });
    // Applying the current generation again keeps the rollback target.
    await h.apply(gen('g2'));
    expect(rec()).toMatchObject({ current: 'g2', previous: 'g1' });

    expect(await h.activate('g2')).toBe(true);
    expect(await h.activate('g1')).toBe(true);
    expect(rec()).toMatchObject({ current: 'g1', previous: 'g2' });
    expect(await h.activate('g0')).toBe(false);
    expect(rec()).toMatchObject({ current: 'g1', previous: 'g2' });

    expect(await h.jobLogTail('sim', 10)).toEqual([]);
    h.close();
  });

  it('a VM deleted while its handle is open is unreachable at the next step', async () => {
    const p = new SimProvider({ cloud: 's', properties: fast });
    const vm = await p.create(req('web', 0));
    const h = await open(p, vm);
    await p.delete(vm.cid);
    expect(await rejection(h.stop())).toMatchObject({ step: 'stop', code: 'vm_unreachable' });
  });
});

describe('ProviderSet: sim clouds', () => {
  it('builds a rate-limited sim provider sharing its VMs with its instance connector', async () => {
    const home = tempHome();
    const set = new ProviderSet([{ name: 'bench', type: 'sim', properties: { ...fast, rate_limit: 50 } }], home);
    const p = set.get('bench');
    expect(p).toBeInstanceOf(RateLimitedProvider);
    expect((p as RateLimitedProvider).inner).toBeInstanceOf(SimProvider);
    expect(p).toMatchObject({ cloud: 'bench', type: 'sim' });
    const vm = await p.create(req('web', 0));
    const h = await p.instances!()!.open(row(vm), { label: 'web/0', baseDir: 'director', log: noLog });
    await h.apply(gen('g1'));
    await set.closeAll();
    expect(readFileSync(join(home, 'sim', 'bench.json'), 'utf8')).toContain('"current":"g1"');
  });

  it('rejects bad sim and rate-limit properties as user errors', () => {
    const bad = (properties: Record<string, unknown>) => () => new ProviderSet([{ name: 'bench', type: 'sim', properties }], tempHome()).get('bench');
    expect(bad({ create_mss: 1 })).toThrow(expect.objectContaining({ code: 'cloud_property_unknown' }));
    expect(bad({ rate_limit: 0 })).toThrow(expect.objectContaining({ code: 'cloud_property_invalid' }));
    expect(bad({ rate_limit_burst: 'many' })).toThrow(expect.objectContaining({ code: 'cloud_property_invalid' }));
  });
});

import { describe, expect, it } from 'vitest';
import { DirectorError, infraError } from '../../src/errors.js';
import type { InstanceConnector } from '../../src/instance/driver.js';
import type { Provider, Vm, VmRequest } from '../../src/providers/provider.js';
import { SimProvider, VirtualClock } from '../../src/providers/sim/index.js';
import { isThrottled, RateLimitedProvider, rateLimitFromProperties, throttledError, TokenBucket } from '../../src/providers/throttle.js';

/** Reproducible draws in [0, 1). */
function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const req = (index: number): VmRequest => ({
  tags: { director: 'd1', deployment: 'dep', instance_group: 'web', index: String(index) },
  az: 'z1',
  azCloudProperties: {},
  vmType: 'small',
  vmTypeCloudProperties: {},
  authorizedKey: 'ssh-ed25519 AAAA test',
});

/** A provider whose every call runs `behaviour`, counting calls. */
function stub(behaviour: () => Promise<unknown>): Provider & { calls: number; closed: boolean } {
  const connector = {} as InstanceConnector;
  const s = {
    cloud: 'aws-prod',
    type: 'stub',
    calls: 0,
    closed: false,
    run<T>(): Promise<T> {
      s.calls++;
      return behaviour() as Promise<T>;
    },
    create: () => s.run<Vm>(),
    list: () => s.run<Vm[]>(),
    delete: () => s.run<void>(),
    exists: () => s.run<boolean>(),
    setMetadata: () => s.run<void>(),
    close: async () => {
      s.closed = true;
    },
    instances: () => connector,
  };
  return s;
}

describe('throttledError', () => {
  it('is an infrastructure error with a stable code', () => {
    const e = throttledError('slow down');
    expect(e).toBeInstanceOf(DirectorError);
    expect(e).toMatchObject({ code: 'provider_throttled', errorClass: 'infrastructure', message: 'slow down' });
    expect(isThrottled(e)).toBe(true);
    expect(isThrottled(infraError('other', 'x'))).toBe(false);
    expect(isThrottled(new Error('provider_throttled'))).toBe(false);
    expect(isThrottled(undefined)).toBe(false);
  });
});

describe('TokenBucket', () => {
  it('lets a burst through, then spaces takers at the rate, in arrival order', async () => {
    const clock = new VirtualClock();
    const bucket = new TokenBucket(10, 3, clock);
    const done: Array<[number, number]> = [];
    await Promise.all(Array.from({ length: 6 }, (_, i) => bucket.take().then(() => done.push([i, clock.now()]))));
    expect(done).toEqual([
      [0, 0],
      [1, 0],
      [2, 0],
      [3, 100],
      [4, 200],
      [5, 300],
    ]);
  });

  it('refills while idle, up to the burst', async () => {
    const clock = new VirtualClock();
    const bucket = new TokenBucket(10, 2, clock);
    expect([bucket.reserve(), bucket.reserve()]).toEqual([0, 0]);
    await clock.sleep(10_000);
    expect([bucket.reserve(), bucket.reserve(), bucket.reserve()]).toEqual([0, 0, 100]);
  });
});

describe('RateLimitedProvider', () => {
  it('spaces calls at ratePerSec on the clock: 50 calls at 10/s with burst 10 take 4 s', async () => {
    const clock = new VirtualClock();
    const inner = stub(async () => true);
    const p = new RateLimitedProvider(inner, { ratePerSec: 10, burst: 10, clock });
    for (let i = 0; i < 50; i++) await p.exists(`vm-${i}`);
    expect(clock.now()).toBeGreaterThanOrEqual(4000);
    expect(clock.now()).toBeLessThan(4100);
    expect(p.stats).toEqual({ calls: 50, throttled: 0, retries: 0 });

    const concurrent = new RateLimitedProvider(stub(async () => true), { ratePerSec: 10, burst: 10, clock });
    const start = clock.now();
    await Promise.all(Array.from({ length: 50 }, (_, i) => concurrent.exists(`vm-${i}`)));
    expect(clock.now() - start).toBe(4000);
  });

  it('with throttle_rate 0.5 on a sim, 200 concurrent creates all succeed, once each', async () => {
    const clock = new VirtualClock();
    const sim = new SimProvider({ cloud: 'bench', properties: { throttle_rate: 0.5, create_ms: 20 }, clock, random: mulberry32(1) });
    // At 50% throttling, 9 throttled answers in a row (1 in 512 calls) would exhaust the default
    // 8 retries; that is the limit working, not what this test is about.
    const p = new RateLimitedProvider(sim, { ratePerSec: 100, burst: 100, clock, random: mulberry32(2), maxRetries: 30 });
    const vms = await Promise.all(Array.from({ length: 200 }, (_, i) => p.create(req(i))));
    expect(vms).toHaveLength(200);
    expect(p.stats.calls).toBe(200);
    expect(p.stats.throttled).toBeGreaterThan(50);
    expect(p.stats.retries).toBe(p.stats.throttled);

    const listed = await p.list({ deployment: 'dep' });
    expect(listed).toHaveLength(200);
    expect(new Set(listed.map((v) => v.cid)).size).toBe(200);
    expect(new Set(listed.map((v) => v.tags.index)).size).toBe(200);
    expect(sim.sim.creates).toBe(200);
    for (const vm of vms) expect(listed.some((v) => v.cid === vm.cid)).toBe(true);
  });

  it('backs off exponentially with full jitter, capped, and fails naming the cloud and the call when retries run out', async () => {
    const clock = new VirtualClock();
    const inner = stub(async () => {
      throw throttledError('RequestLimitExceeded');
    });
    const p = new RateLimitedProvider(inner, { ratePerSec: 1000, burst: 1000, clock, random: () => 0.5 });
    let err: DirectorError | undefined;
    try {
      await p.create(req(0));
    } catch (e) {
      err = e as DirectorError;
    }
    expect(err).toBeInstanceOf(DirectorError);
    expect(err).toMatchObject({ code: 'provider_throttled', errorClass: 'infrastructure' });
    expect(err!.message).toContain("cloud 'aws-prod'");
    expect(err!.message).toContain('create');
    expect(err!.message).toContain('9 times');
    expect(err!.hint).toContain('rate_limit');
    expect(inner.calls).toBe(9);
    expect(p.stats).toEqual({ calls: 1, throttled: 9, retries: 8 });
    // half of each ceiling: 200, 400, …, 10 000 (capped)
    expect(clock.now()).toBe(0.5 * (200 + 400 + 800 + 1600 + 3200 + 6400 + 10_000 + 10_000));
  });

  it('honours maxRetries', async () => {
    const inner = stub(async () => {
      throw throttledError('429');
    });
    const p = new RateLimitedProvider(inner, { ratePerSec: 1000, burst: 1000, clock: new VirtualClock(), random: () => 0, maxRetries: 2 });
    await expect(p.delete('vm-1')).rejects.toMatchObject({ code: 'provider_throttled', message: expect.stringContaining('3 times') });
    expect(inner.calls).toBe(3);
  });

  it('recovers when the throttling stops', async () => {
    let n = 0;
    const inner = stub(async () => {
      if (++n <= 3) throw throttledError('429');
      return ['ok'];
    });
    const p = new RateLimitedProvider(inner, { ratePerSec: 1000, burst: 1000, clock: new VirtualClock() });
    await expect(p.list({})).resolves.toEqual(['ok']);
    expect(p.stats).toEqual({ calls: 1, throttled: 3, retries: 3 });
  });

  it('passes other errors through untouched, without retrying', async () => {
    const boom = infraError('vm_create_failed', 'quota exceeded');
    const inner = stub(async () => {
      throw boom;
    });
    const p = new RateLimitedProvider(inner, { ratePerSec: 1000, burst: 1000, clock: new VirtualClock() });
    await expect(p.create(req(0))).rejects.toBe(boom);
    expect(inner.calls).toBe(1);
    expect(p.stats).toEqual({ calls: 1, throttled: 0, retries: 0 });
  });

  it('delegates cloud, type, instances() and close()', async () => {
    const inner = stub(async () => undefined);
    const p = new RateLimitedProvider(inner, { ratePerSec: 1, burst: 1 });
    expect(p).toMatchObject({ cloud: 'aws-prod', type: 'stub', inner });
    expect(p.instances!()).toBe(inner.instances!());
    expect(new RateLimitedProvider({ ...inner, instances: undefined }, { ratePerSec: 1, burst: 1 }).instances).toBeUndefined();
    await p.close();
    expect(inner.closed).toBe(true);
    expect(() => new RateLimitedProvider(inner, { ratePerSec: 0, burst: 1 })).toThrow(RangeError);
  });
});

describe('rateLimitFromProperties', () => {
  it('uses the defaults, or rate_limit and rate_limit_burst', () => {
    const d = { ratePerSec: 100, burst: 100 };
    expect(rateLimitFromProperties('c', {}, d)).toEqual(d);
    expect(rateLimitFromProperties('c', { rate_limit: 5 }, d)).toEqual({ ratePerSec: 5, burst: 5 });
    expect(rateLimitFromProperties('c', { rate_limit: 0.5 }, d)).toEqual({ ratePerSec: 0.5, burst: 1 });
    expect(rateLimitFromProperties('c', { rate_limit: 5, rate_limit_burst: 20 }, d)).toEqual({ ratePerSec: 5, burst: 20 });
    expect(() => rateLimitFromProperties('c', { rate_limit: -1 }, d)).toThrow(expect.objectContaining({ code: 'cloud_property_invalid', errorClass: 'user' }));
    expect(() => rateLimitFromProperties('c', { rate_limit_burst: 0.5 }, d)).toThrow(/rate_limit_burst/);
  });
});

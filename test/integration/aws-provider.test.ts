/**
 * The aws provider against the wire-level EC2 fake (test/fakes/ec2.ts): the shared provider
 * contract, listing 1000 instances in ≤ 2 calls, throttling absorbed by the RateLimitedProvider
 * without duplicate instances, each error class, the bounded waiter, property validation.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { DirectorError } from '../../src/errors.js';
import { AwsProvider, type AwsProviderOptions } from '../../src/providers/aws/index.js';
import type { VmRequest } from '../../src/providers/provider.js';
import { RateLimitedProvider } from '../../src/providers/throttle.js';
import { ProviderSet } from '../../src/providers/registry.js';
import { contractRequest, describeProviderContract } from '../contract/provider-contract.js';
import { authorizedKeys, FakeEc2 } from '../fakes/ec2.js';

const KEY = 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOr3Vqv6t6ZfXy3pQmJ9m5m2v4ZsQbq0Xx2k3cVq7Lm director';
const VM_TYPE = { instance_type: 't3.small', image_id: 'ami-0123456789abcdef0' };
const CREDS = { accessKeyId: 'AKIAFAKEFAKEFAKEFAKE', secretAccessKey: 'fake-secret' };
const FAST_WAITER = { minDelayS: 0.005, maxDelayS: 0.02, maxWaitTimeS: 5 };

function provider(fake: FakeEc2, extra: Partial<AwsProviderOptions> = {}, props: Record<string, unknown> = {}): AwsProvider {
  return new AwsProvider({
    cloud: 'aws',
    properties: { region: 'us-east-1', endpoint: fake.endpoint, subnet_id: 'subnet-0123456789abcdef0', security_group_ids: ['sg-0123456789abcdef0'], ...props },
    credentials: CREDS,
    waiter: FAST_WAITER,
    ...extra,
  });
}

const request = (d: string, i: number): VmRequest => ({ ...contractRequest(d, i, KEY), vmTypeCloudProperties: VM_TYPE });

async function caught(p: Promise<unknown>): Promise<DirectorError> {
  try {
    await p;
  } catch (e) {
    expect(e).toBeInstanceOf(DirectorError);
    return e as DirectorError;
  }
  throw new Error('expected a rejection');
}

describeProviderContract('aws', async () => {
  const fake = await FakeEc2.start();
  return {
    provider: provider(fake),
    request,
    unknownCid: 'i-0123456789abcdef0',
    cleanup: async () => fake.close(),
  };
});

describe('aws provider against the EC2 fake', () => {
  let fake: FakeEc2;
  let p: AwsProvider;
  beforeAll(async () => {
    fake = await FakeEc2.start();
    p = provider(fake);
  });
  afterEach(() => {
    fake.opts = {};
    fake.instances.clear();
    fake.resetCounts();
  });
  afterAll(async () => {
    await p.close();
    await fake.close();
  });

  it('sends RunInstances as the director needs it: tags + Name, user-data key, client token, placement', async () => {
    const vm = await p.create({ ...request('shape', 0), az: 'z1', azCloudProperties: { availability_zone: 'us-east-1b', subnet_id: 'subnet-0000000000000000b' } });
    const inst = fake.instances.get(vm.cid)!;
    expect(vm.cid).toMatch(/^i-[0-9a-f]{17}$/);
    expect(inst.tags.get('Name')).toBe('shape/web/0');
    expect(Object.fromEntries(inst.tags)).toMatchObject({ director: 'contract', deployment: 'shape', instance_id: 'shape-0', az: 'z1' });
    expect(authorizedKeys(inst.userData!)).toEqual([KEY]);
    expect(inst.userData!.startsWith('#cloud-config\n')).toBe(true);
    expect(inst.clientToken).toMatch(/^[0-9a-f]{64}$/);
    expect(inst.az).toBe('us-east-1b');
    expect(inst.subnetId).toBe('subnet-0000000000000000b');
    expect(vm).toMatchObject({ az: 'z1', state: 'running', sshPort: 22, sshUser: 'ubuntu', sshHost: inst.privateIp, ips: [inst.privateIp] });
    expect(vm.hostKeyFingerprint).toBeUndefined();
    expect(vm.tags.Name).toBeUndefined();
  });

  it('lists 1000 instances with at most 2 DescribeInstances calls', async () => {
    fake.seed(1000, (n) => ({ director: 'd1', deployment: 'big', index: String(n) }));
    fake.seed(200, (n) => ({ director: 'd1', deployment: 'other', index: String(n) }));
    const t0 = Date.now();
    const vms = await p.list({ director: 'd1', deployment: 'big' });
    const ms = Date.now() - t0;
    expect(vms).toHaveLength(1000);
    expect(new Set(vms.map((v) => v.cid)).size).toBe(1000);
    expect(fake.calls.DescribeInstances).toBeLessThanOrEqual(2);
    const calls = fake.calls.DescribeInstances!;
    expect(await p.list({ director: 'd1' })).toHaveLength(1200); // 1200 matches: two pages via nextToken
    expect(fake.calls.DescribeInstances! - calls).toBe(2);
    console.log(`aws list: 1000 of 1200 instances in ${calls} DescribeInstances call(s); 1200 in 2, ${ms} ms`);
  });

  it('terminated instances stay in EC2 for a while but are not listed, and do not exist', async () => {
    const vm = await p.create(request('gone', 0));
    await p.delete(vm.cid);
    expect(await p.exists(vm.cid)).toBe(false);
    expect(fake.instances.get(vm.cid)?.state).toMatch(/terminated|shutting-down/);
    expect(await p.list({ deployment: 'gone' })).toEqual([]);
  });

  it('50% of calls throttled: every create succeeds through the RateLimitedProvider, with no duplicate instance', async () => {
    let seed = 42;
    const random = () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
    // Throttled RunInstances are carried out before the 503 (lost responses): only ClientToken prevents duplicates.
    fake.opts = { throttleRate: 0.5, throttleAfterRun: true, random };
    const rl = new RateLimitedProvider(p, { ratePerSec: 1000, burst: 1000, baseDelayMs: 2, maxDelayMs: 50, maxRetries: 30 });
    const N = 20;
    const vms = await Promise.all(Array.from({ length: N }, (_, i) => rl.create(request('throttled', i))));
    expect(new Set(vms.map((v) => v.cid)).size).toBe(N);
    fake.opts = {};
    expect(fake.live()).toHaveLength(N);
    expect((await p.list({ deployment: 'throttled' })).length).toBe(N);
    expect(rl.stats.throttled).toBeGreaterThan(0);
    expect(fake.throttled.RunInstances ?? 0).toBeGreaterThan(0);
    console.log(`aws throttle: ${N} creates, ${rl.stats.throttled} throttled answers seen by the wrapper, ${rl.stats.retries} retries; fake: ${JSON.stringify(fake.calls)} calls, ${JSON.stringify(fake.throttled)} throttled`);
  });

  it('throttling that never stops fails as throttling after the retries', async () => {
    fake.opts = { throttleRate: 1 };
    const rl = new RateLimitedProvider(p, { ratePerSec: 1000, burst: 1000, baseDelayMs: 1, maxDelayMs: 2, maxRetries: 3 });
    const e = await caught(rl.list({ deployment: 'x' }));
    expect(e.code).toBe('provider_throttled');
    expect(fake.calls.DescribeInstances).toBe(4);
  });

  it.each(['InsufficientInstanceCapacity', 'InstanceLimitExceeded', 'VcpuLimitExceeded'])('%s is an infrastructure error naming the code', async (code) => {
    fake.opts = { failCreate: code };
    const e = await caught(p.create(request('cap', 0)));
    expect(e.errorClass).toBe('infrastructure');
    expect(e.code).toBe('aws_capacity');
    expect(e.message).toContain(code);
    expect(e.hint).toBeTruthy();
    expect(fake.calls.RunInstances).toBe(1); // the SDK did not retry the HTTP 500 behind our back
  });

  it.each(['AuthFailure', 'UnauthorizedOperation', 'InvalidClientTokenId', 'SignatureDoesNotMatch'])('%s is a user error with a credentials hint', async (code) => {
    fake.opts = { failAll: code };
    for (const call of [() => p.create(request('auth', 0)), () => p.list({ deployment: 'auth' }), () => p.delete('i-0123456789abcdef0')]) {
      const e = await caught(call());
      expect(e.errorClass).toBe('user');
      expect(e.code).toBe('aws_credentials');
      expect(e.message).toContain(code);
      expect(e.hint).toContain('AWS_ACCESS_KEY_ID');
      expect(e.hint).toContain('AWS_PROFILE');
      expect(e.hint).toContain('role');
    }
  });

  it('a bad AMI is a user error pointing at cloud_properties', async () => {
    const e = await caught(p.create({ ...request('bad', 0), vmTypeCloudProperties: { ...VM_TYPE, image_id: 'ami-nope' } }));
    expect(e.errorClass).toBe('user');
    expect(e.message).toContain('InvalidAMIID.Malformed');
    expect(e.hint).toContain('image_id');
  });

  it('an instance that never reaches running fails clearly within the bounded wait, and is terminated', async () => {
    fake.opts = { pendingDescribes: Infinity };
    const slow = provider(fake, { waiter: { minDelayS: 0.01, maxDelayS: 0.05, maxWaitTimeS: 0.5 } });
    const t0 = Date.now();
    const e = await caught(slow.create(request('stuck', 0)));
    expect(Date.now() - t0).toBeLessThan(3000);
    expect(e.code).toBe('vm_create_timeout');
    expect(e.errorClass).toBe('infrastructure');
    expect(e.message).toMatch(/did not reach 'running' within 0.5 s \(last state: pending\)/);
    expect(fake.live()).toHaveLength(0);
    await slow.close();
  });

  it('honours the director:ssh_port tag, the ssh_port / ssh_user properties', async () => {
    const custom = provider(fake, {}, { ssh_port: 2222, ssh_user: 'ec2-user' });
    const vm = await custom.create({ ...request('ports', 0), vmTypeCloudProperties: { ...VM_TYPE, ssh_user: 'admin' } });
    expect(vm.sshPort).toBe(2222);
    expect(vm.sshUser).toBe('admin');
    expect((await custom.list({ deployment: 'ports' }))[0]?.sshUser).toBe('admin');
    fake.instances.get(vm.cid)!.tags.set('director:ssh_port', '40022');
    expect((await custom.list({ deployment: 'ports' }))[0]?.sshPort).toBe(40022);
    await custom.close();
  });

  it('validates properties with did-you-mean, naming the cloud and key', () => {
    const bad = (props: Record<string, unknown>) => {
      try {
        new AwsProvider({ cloud: 'east', properties: { region: 'us-east-1', ...props } });
      } catch (e) {
        return e as DirectorError;
      }
      throw new Error('expected an error');
    };
    let e = bad({ subnet_ids: 'subnet-1' });
    expect(e.errorClass).toBe('user');
    expect(e.message).toContain("cloud 'east' (type aws): unknown property 'subnet_ids'; did you mean 'subnet_id'?");
    e = bad({ use_public_ip: 'yes' });
    expect(e.message).toContain('use_public_ip must be true or false');
    e = bad({ security_group_ids: 'sg-1' });
    expect(e.message).toContain('security_group_ids must be a list of strings');
    expect(() => new AwsProvider({ cloud: 'east', properties: { access_key_id: 'x', region: 'us-east-1' } })).toThrow(/unknown property 'access_key_id'/);
  });

  it('validates vm_type cloud_properties at create, ignoring other clouds\' keys', async () => {
    let e = await caught(p.create({ ...request('vt', 0), vmTypeCloudProperties: { ...VM_TYPE, instnace_type: 'x' } }));
    expect(e.message).toContain("unknown property 'instnace_type'; did you mean 'instance_type'?");
    e = await caught(p.create({ ...request('vt', 0), vmTypeCloudProperties: { instance_type: 't3.small' } }));
    expect(e.message).toContain('image_id is required');
    e = await caught(p.create({ ...request('vt', 0), vmTypeCloudProperties: { ...VM_TYPE, root_disk_gb: -1 } }));
    expect(e.message).toContain('root_disk_gb must be a positive whole number');
    const vm = await p.create({ ...request('vt', 1), vmTypeCloudProperties: { ...VM_TYPE, machine_type: 'e2-small', root_disk_gb: 20, tags: { team: 'web' } } });
    expect(vm.tags.team).toBe('web');
    expect(fake.calls.RunInstances).toBe(1);
  });

  it('the registry builds an aws cloud behind a RateLimitedProvider', async () => {
    const set = new ProviderSet([{ name: 'east', type: 'aws', properties: { region: 'us-east-1', endpoint: fake.endpoint } }], '/nonexistent');
    const got = set.get('east');
    expect(got).toBeInstanceOf(RateLimitedProvider);
    expect(got.type).toBe('aws');
    await set.closeAll();
  });
});

/**
 * The gcp provider through the real `@google-cloud/compute` client against the wire-level fake
 * (test/fakes/gce.ts): the shared contract, listing at scale, throttling, quota and auth errors.
 */
import { PassThroughClient } from 'google-auth-library';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isDirectorError, type DirectorError } from '../../src/errors.js';
import { GcpProvider } from '../../src/providers/gcp/index.js';
import { decodeLabelValue, encodeLabelValue, instanceName } from '../../src/providers/gcp/labels.js';
import { RateLimitedProvider } from '../../src/providers/throttle.js';
import { contractRequest, describeProviderContract } from '../contract/provider-contract.js';
import { FakeGce } from '../fakes/gce.js';

const KEY = 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGZha2VrZXlmb3J0ZXN0c29ubHlmYWtla2V5Zm9ydGVzdA director';

const provider = (fake: FakeGce, extra: Record<string, unknown> = {}) =>
  new GcpProvider({ cloud: 'gce', properties: { project: fake.project, api_endpoint: fake.endpoint, ...extra } });

async function caught(p: Promise<unknown>): Promise<DirectorError> {
  try {
    await p;
  } catch (err) {
    if (isDirectorError(err)) return err;
    throw err;
  }
  throw new Error('expected an error');
}

describeProviderContract('gcp', async () => {
  const fake = await new FakeGce().start();
  const p = provider(fake);
  return {
    provider: p,
    request: (d, i) => contractRequest(d, i, KEY, 'us-central1-a'),
    unknownCid: 'us-central1-a/d-nobody-web-0-00000000',
    cleanup: async () => {
      await p.close();
      await fake.stop();
    },
  };
});

describe('gcp provider against the fake', () => {
  let fake: FakeGce;
  beforeAll(async () => {
    fake = await new FakeGce().start();
  });
  afterAll(async () => {
    await fake.stop();
  });

  it('lists 1000 instances of one zone in 2 list calls (maxResults 500 + pageToken)', async () => {
    fake.seed('europe-west1-b', 1000, { director: 'scale', deployment: 'big' });
    fake.seed('europe-west1-b', 30, { director: 'scale', deployment: 'other' });
    for (const [extra, route] of [[{}, 'instances.aggregatedList'], [{ zones: ['europe-west1-b'] }, 'instances.list']] as const) {
      const p = provider(fake, extra);
      fake.resetCounts();
      const vms = await p.list({ director: 'scale', deployment: 'big' });
      expect(vms).toHaveLength(1000);
      expect(new Set(vms.map((v) => v.cid)).size).toBe(1000);
      expect(fake.calls[route]).toBe(2);
      console.log(`list of 1000 VMs via ${route}: ${fake.calls[route]} calls`);
      await p.close();
    }
  });

  it('with 50% of calls throttled, every create succeeds through RateLimitedProvider and none is duplicated', async () => {
    fake.throttleRate = 0.5;
    fake.throttleKind = '403';
    let seed = 42;
    fake.random = () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
    const inner = provider(fake);
    const p = new RateLimitedProvider(inner, { ratePerSec: 1000, burst: 1000, baseDelayMs: 2, maxDelayMs: 20, maxRetries: 30 });
    try {
      fake.resetCounts();
      const vms = await Promise.all(Array.from({ length: 20 }, (_, i) => p.create(contractRequest('throttled', i, KEY, 'us-central1-a'))));
      expect(new Set(vms.map((v) => v.cid)).size).toBe(20);
      fake.throttleKind = '429';
      const listed = await p.list({ director: 'contract', deployment: 'throttled' });
      expect(listed).toHaveLength(20);
      expect(fake.list().filter((i) => i.labels.deployment === 'throttled')).toHaveLength(20);
      expect(p.stats.throttled).toBeGreaterThan(10);
      const inserts = fake.calls['instances.insert'] ?? 0;
      console.log(`50% throttling: 20 creates, ${p.stats.throttled} throttled answers, ${p.stats.retries} retries, ${inserts} insert calls (${fake.throttled['instances.insert'] ?? 0} throttled)`);
    } finally {
      fake.throttleRate = 0;
      fake.random = Math.random;
      await p.close();
    }
  });

  it('QUOTA_EXCEEDED inside a DONE operation is an infrastructure error naming it', async () => {
    const p = provider(fake);
    fake.failInserts = 'QUOTA_EXCEEDED';
    try {
      const err = await caught(p.create(contractRequest('quota', 0, KEY, 'us-central1-a')));
      expect(err.errorClass).toBe('infrastructure');
      expect(err.code).toBe('gcp_quota_exceeded');
      expect(err.message).toContain('QUOTA_EXCEEDED');
      expect(err.message).toContain("Quota 'CPUS' exceeded");
      fake.failInserts = 'ZONE_RESOURCE_POOL_EXHAUSTED';
      const zoneErr = await caught(p.create(contractRequest('quota', 1, KEY, 'us-central1-a')));
      expect(zoneErr).toMatchObject({ errorClass: 'infrastructure', code: 'gcp_zone_exhausted' });
      expect(zoneErr.message).toContain('us-central1-a');
    } finally {
      fake.failInserts = null;
      await p.close();
    }
  });

  it('an authentication failure is a user error with the ADC hint', async () => {
    const p = provider(fake);
    fake.unauthenticated = true;
    try {
      const err = await caught(p.list({ director: 'x' }));
      expect(err.errorClass).toBe('user');
      expect(err.code).toBe('gcp_auth_failed');
      expect(err.hint).toContain('gcloud auth application-default login');
      expect(err.hint).toContain('GOOGLE_APPLICATION_CREDENTIALS');
    } finally {
      fake.unauthenticated = false;
      await p.close();
    }
    // A project the credentials cannot see: 403 forbidden, same class.
    const other = new GcpProvider({ cloud: 'gce', properties: { project: 'someone-elses', api_endpoint: fake.endpoint }, authClient: new PassThroughClient() });
    const err = await caught(other.exists('us-central1-a/d-x-web-0-00000000'));
    expect(err).toMatchObject({ errorClass: 'user', code: 'gcp_auth_failed' });
    await other.close();
  });

  it('labels and names follow the GCE rules, reversibly, and bad input fails before any call with a clear error', async () => {
    const ts = '2024-05-01T10:00:00.000Z';
    expect(encodeLabelValue(ts)).toMatch(/^[a-z0-9_-]{1,63}$/);
    expect(decodeLabelValue(encodeLabelValue(ts))).toBe(ts);
    expect(decodeLabelValue(encodeLabelValue('My_App.v2'))).toBe('My_App.v2');
    expect(encodeLabelValue('0b5e8f2c-1d2e-4f00-9a8b-112233445566')).toBe('0b5e8f2c-1d2e-4f00-9a8b-112233445566');
    const name = instanceName({ deployment: 'A_Very.Long.Deployment.Name.For.Testing', instance_group: 'Workers_Of_The_World_United', index: '12', instance_id: 'x', created_at: ts });
    expect(name).toMatch(/^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$/);
    expect(name).toMatch(/^d-.*-12-[0-9a-f]{8}$/);

    const p = provider(fake);
    fake.resetCounts();
    const badKey = await caught(p.create({ ...contractRequest('names', 0, KEY, 'us-central1-a'), tags: { Director: 'x' } }));
    expect(badKey).toMatchObject({ errorClass: 'user', code: 'gcp_label_invalid' });
    expect(badKey.message).toContain("tag key 'Director'");
    const long = await caught(p.create(contractRequest('D'.repeat(30), 0, KEY, 'us-central1-a')));
    expect(long.message).toContain("the value of tag 'deployment' is too long for a GCE label");
    const typo = await caught(p.create({ ...contractRequest('names', 0, KEY, 'us-central1-a'), vmTypeCloudProperties: { machine_typ: 'e2-small' } }));
    expect(typo).toMatchObject({ errorClass: 'user', code: 'cloud_property_unknown' });
    expect(typo.message).toContain("did you mean 'machine_type'");
    expect(fake.calls['instances.insert']).toBeUndefined();
    await p.close();

    expect(() => provider(fake, { projet: 'x' })).toThrow(/unknown property 'projet'; did you mean 'project'/);
    expect(() => provider(fake, { use_external_ip: 'yes' })).toThrow(/use_external_ip must be true or false/);
  });
});

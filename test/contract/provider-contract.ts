/**
 * The provider contract every adapter must keep, as one suite each adapter's test file runs:
 * create (tagged, reachable details), list by tags (one deployment's VMs, nobody else's),
 * metadata, delete, idempotent delete of a VM that is gone, and exists.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Provider, VmRequest } from '../../src/providers/provider.js';

export interface ContractSubject {
  provider: Provider;
  /** a request the provider can satisfy, for instance `index` of `deployment` */
  request(deployment: string, index: number): VmRequest;
  /** a cid that has never existed, in the provider's format */
  unknownCid: string;
  cleanup(): Promise<void>;
}

export function describeProviderContract(name: string, make: () => Promise<ContractSubject>): void {
  describe(`provider contract: ${name}`, () => {
    let s: ContractSubject;
    const created: string[] = [];
    beforeAll(async () => {
      s = await make();
    }, 120_000);
    afterAll(async () => {
      for (const cid of created) await s.provider.delete(cid).catch(() => undefined);
      await s.cleanup();
    }, 120_000);

    it('creates VMs carrying the requested tags and the details needed to reach them', async () => {
      for (let i = 0; i < 2; i++) {
        const vm = await s.provider.create(s.request('alpha', i));
        created.push(vm.cid);
        expect(vm.cid).toBeTruthy();
        expect(vm.cloud).toBe(s.provider.cloud);
        expect(vm.ips.length).toBeGreaterThan(0);
        expect(vm.sshHost).toBeTruthy();
        expect(vm.sshUser).toBeTruthy();
        expect(vm.tags).toMatchObject({ deployment: 'alpha', index: String(i), instance_group: 'web' });
      }
      created.push((await s.provider.create(s.request('beta', 0))).cid);
    });

    it("lists exactly one deployment's VMs by tags", async () => {
      const alpha = await s.provider.list({ director: 'contract', deployment: 'alpha' });
      expect(alpha.map((v) => v.cid).sort()).toEqual([created[0], created[1]].sort());
      const beta = await s.provider.list({ director: 'contract', deployment: 'beta' });
      expect(beta.map((v) => v.cid)).toEqual([created[2]]);
      expect(await s.provider.list({ director: 'contract', deployment: 'nobody' })).toEqual([]);
    });

    it('sets metadata, keeping the tags it does not name', async () => {
      await s.provider.setMetadata(created[0]!, { role: 'canary' });
      const vm = (await s.provider.list({ director: 'contract', deployment: 'alpha', role: 'canary' }))[0];
      expect(vm?.cid).toBe(created[0]);
      expect(vm?.tags).toMatchObject({ deployment: 'alpha', index: '0', role: 'canary' });
    });

    it('deletes a VM, and deleting it again, or one that never existed, succeeds', async () => {
      expect(await s.provider.exists(created[1]!)).toBe(true);
      await s.provider.delete(created[1]!);
      expect(await s.provider.exists(created[1]!)).toBe(false);
      expect((await s.provider.list({ director: 'contract', deployment: 'alpha' })).map((v) => v.cid)).toEqual([created[0]]);
      await s.provider.delete(created[1]!);
      await s.provider.delete(s.unknownCid);
      expect(await s.provider.exists(s.unknownCid)).toBe(false);
    });
  });
}

/** The VmRequest shape the director sends, for contract tests. */
export function contractRequest(deployment: string, index: number, authorizedKey: string, az = 'z1'): VmRequest {
  return {
    tags: { director: 'contract', deployment, instance_group: 'web', index: String(index), instance_id: `${deployment}-${index}`, created_at: new Date(0).toISOString() },
    az,
    azCloudProperties: {},
    vmType: 'small',
    vmTypeCloudProperties: {},
    authorizedKey,
  };
}

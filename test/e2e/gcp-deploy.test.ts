/**
 * Deploy on Google Compute Engine end to end: the real CLI drives the real `@google-cloud/compute`
 * client against the wire-level fake, whose instances are real local VMs (the fake asks the local
 * cloud of the same DIRECTOR_HOME for one per insert), reached over SSH on their loopback IPs.
 * The cloud-config's api_endpoint is plain http://, so the provider sends no credentials at all.
 */
import { writeFileSync } from 'node:fs';
import { userInfo } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LocalCloudClient } from '../../src/local-cloud/client.js';
import { FakeGce } from '../fakes/gce.js';
import { helloManifest, httpGet, workspace } from '../helpers/cli.js';

interface VmJson {
  instance: string;
  cid: string;
  az: string;
  ips: string[];
  state: string;
}

describe('deploy hello on gcp (fake Compute API backed by local VMs)', () => {
  const ws = workspace('e2e-gcp');
  let fake: FakeGce;
  const vms = async (): Promise<VmJson[]> => {
    const r = await ws.cli(['vms', '--json']);
    expect(r.code, r.stderr).toBe(0);
    return JSON.parse(r.stdout) as VmJson[];
  };

  beforeAll(async () => {
    fake = await new FakeGce({ project: 'director-e2e', backing: { home: ws.home }, operationDelayMs: 20 }).start();
    writeFileSync(
      join(ws.dir, 'deployments', 'cloud-config.yml'),
      `azs:
- name: z1
  cloud: gce
  cloud_properties: { zone: us-central1-a }
- name: z2
  cloud: gce
  cloud_properties: { zone: us-central1-b }
clouds:
- name: gce
  type: gcp
  project: director-e2e
  api_endpoint: ${fake.endpoint}
  ssh_user: ${userInfo().username}   # the local VMs accept the user running them
vm_types:
- name: small
  cloud_properties: { machine_type: e2-small, labels: { team: platform } }
`,
    );
    ws.writeManifest(helloManifest());
  });
  afterAll(async () => {
    await fake?.stop();
    await ws.cleanup();
  });

  it('creates 4 instances through the Compute API over two zones, and every one serves HTTP', async () => {
    const t0 = Date.now();
    const r = await ws.cli(['deploy', ws.manifest, '--yes']);
    const wall = Date.now() - t0;
    expect(r.code, r.stdout + r.stderr).toBe(0);
    console.log(`gcp deploy of 4 instances: ${wall} ms wall; API calls: ${JSON.stringify(fake.calls)}`);
    const list = await vms();
    expect(list.map((v) => v.instance)).toEqual(['web/0', 'web/1', 'web/2', 'web/3']);
    expect(list.map((v) => v.az)).toEqual(['z1', 'z2', 'z1', 'z2']);
    expect(list.map((v) => v.cid.split('/')[0])).toEqual(['us-central1-a', 'us-central1-b', 'us-central1-a', 'us-central1-b']);
    expect(fake.list()).toHaveLength(4);
    for (const inst of fake.list()) {
      expect(inst.name).toMatch(/^d-hello-web-\d-[0-9a-f]{8}$/);
      expect(inst.labels).toMatchObject({ deployment: 'hello', instance_group: 'web', team: 'platform' });
      expect(inst.metadata.items.find((i) => i.key === 'ssh-keys')?.value).toMatch(/^[^:]+:ssh-ed25519 AAAA/);
    }
    for (const vm of list) {
      expect(vm.state).toBe('running');
      const res = await httpGet(`http://${vm.ips[0]}:8080/`);
      expect(res?.body).toContain(`Hello from ${vm.instance}`);
    }
  });

  it('a second deploy reports no changes and creates nothing', async () => {
    const before = await vms();
    const inserts = fake.calls['instances.insert'];
    const r = await ws.cli(['deploy', ws.manifest, '--yes']);
    expect(r.code, r.stdout + r.stderr).toBe(0);
    expect(r.stdout).toContain('no changes');
    expect(fake.calls['instances.insert']).toBe(inserts);
    expect((await vms()).map((v) => v.cid)).toEqual(before.map((v) => v.cid));
  });

  it('delete-deployment deletes every instance: the fake is empty and the local cloud has no VMs', async () => {
    const before = await vms();
    const t = Date.now();
    const r = await ws.cli(['delete-deployment', 'hello', '--yes']);
    console.log(`delete: ${Date.now() - t} ms ${JSON.stringify(fake.calls)}`);
    expect(r.code, r.stdout + r.stderr).toBe(0);
    expect(await vms()).toEqual([]);
    expect(fake.list()).toEqual([]);
    for (const vm of before) expect(await httpGet(`http://${vm.ips[0]}:8080/`, 500)).toBeNull();
    const local = await LocalCloudClient.connectIfRunning(ws.home);
    expect(local ? await local.listVms() : []).toEqual([]);
  });
});

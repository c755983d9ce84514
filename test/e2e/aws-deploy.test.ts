/**
 * The aws provider end to end: the real CLI deploys the hello release onto a cloud of type aws
 * whose endpoint is the EC2 fake, and the fake's instances are real local VMs (same
 * DIRECTOR_HOME, so the CLI and the fake share one local cloud), reached over SSH at the IP and
 * port EC2 reports.
 */
import { writeFileSync } from 'node:fs';
import os from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LocalCloudClient } from '../../src/local-cloud/client.js';
import { FakeEc2 } from '../fakes/ec2.js';
import { helloManifest, httpGet, workspace } from '../helpers/cli.js';

interface VmJson {
  instance: string;
  cid: string;
  az: string;
  ips: string[];
  state: string;
}

describe('deploy hello on an aws cloud (EC2 fake backed by local VMs)', () => {
  const ws = workspace('aws');
  let fake: FakeEc2;
  let env: Record<string, string>;
  const vms = async (): Promise<VmJson[]> => {
    const r = await ws.cli(['vms', '--json'], { env });
    expect(r.code, r.stderr).toBe(0);
    return JSON.parse(r.stdout) as VmJson[];
  };

  beforeAll(async () => {
    fake = await FakeEc2.start({ backing: { kind: 'local', home: ws.home } });
    env = { AWS_ACCESS_KEY_ID: 'AKIAFAKEFAKEFAKEFAKE', AWS_SECRET_ACCESS_KEY: 'fake-secret', AWS_REGION: 'us-east-1', AWS_EC2_METADATA_DISABLED: 'true' };
    writeFileSync(
      join(ws.dir, 'deployments', 'cloud-config.yml'),
      `azs:
- name: z1
  cloud: aws
  cloud_properties: { availability_zone: us-east-1a, subnet_id: subnet-0000000000000000a }
- name: z2
  cloud: aws
  cloud_properties: { availability_zone: us-east-1b, subnet_id: subnet-0000000000000000b }
clouds:
- name: aws
  type: aws
  region: us-east-1
  endpoint: ${fake.endpoint}
  security_group_ids: [sg-0123456789abcdef0]
  ssh_user: ${os.userInfo().username}
  poll_interval_s: 0.05
vm_types:
- name: small
  cloud_properties: { instance_type: t3.small, image_id: ami-0123456789abcdef0, root_disk_gb: 10, machine_type: e2-small }
`,
    );
    ws.writeManifest(helloManifest());
  }, 60_000);

  afterAll(async () => {
    await fake?.close();
    await ws.cleanup();
  }, 60_000);

  it('deploys 4 instances over two AZs on EC2, and every instance answers on its VM IP', async () => {
    const t0 = Date.now();
    const r = await ws.cli(['deploy', ws.manifest, '--yes'], { env });
    const ms = Date.now() - t0;
    expect(r.code, r.stdout + r.stderr).toBe(0);
    console.log(`aws e2e: deploy of 4 instances took ${ms} ms; EC2 calls ${JSON.stringify(fake.calls)}`);
    const list = await vms();
    expect(list.map((v) => v.instance)).toEqual(['web/0', 'web/1', 'web/2', 'web/3']);
    expect(list.map((v) => v.az)).toEqual(['z1', 'z2', 'z1', 'z2']);
    for (const vm of list) {
      expect(vm.cid).toMatch(/^i-[0-9a-f]{17}$/);
      expect(fake.instances.get(vm.cid)?.state).toBe('running');
      const res = await httpGet(`http://${vm.ips[0]}:8080/`);
      expect(res?.body).toContain(`Hello from ${vm.instance}`);
    }
    expect(fake.live().map((i) => i.az).sort()).toEqual(['us-east-1a', 'us-east-1a', 'us-east-1b', 'us-east-1b']);
    expect(fake.calls.RunInstances).toBe(4);
  });

  it('a second deploy reports no changes and launches nothing', async () => {
    const before = await vms();
    const runs = fake.calls.RunInstances;
    const r = await ws.cli(['deploy', ws.manifest, '--yes'], { env });
    expect(r.code, r.stdout + r.stderr).toBe(0);
    expect(r.stdout).toContain('no changes');
    expect(fake.calls.RunInstances).toBe(runs);
    expect((await vms()).map((v) => v.cid)).toEqual(before.map((v) => v.cid));
  });

  it('delete-deployment terminates every instance and the local VMs behind them', async () => {
    const before = await vms();
    const r = await ws.cli(['delete-deployment', 'hello', '--yes'], { env });
    expect(r.code, r.stdout + r.stderr).toBe(0);
    expect(await vms()).toEqual([]);
    for (const vm of before) expect(fake.instances.get(vm.cid)?.state).toMatch(/terminated|shutting-down/);
    expect(fake.live()).toEqual([]);
    const local = await LocalCloudClient.connectIfRunning(ws.home);
    expect(await local?.listVms()).toEqual([]);
  });
});

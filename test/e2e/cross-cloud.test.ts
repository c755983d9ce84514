/**
 * One deployment across AWS, Google Cloud and the local cloud at once: the EC2 and Compute
 * fakes both back their instances with real local VMs, so the real CLI deploys `hello` to all
 * three over SSH. Canaries are spread over the three clouds before any wave; a release that is
 * broken on one cloud only halts at the canaries and the rollback restores every cloud.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { userInfo } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FakeEc2 } from '../fakes/ec2.js';
import { FakeGce } from '../fakes/gce.js';
import { helloManifest, httpGet, workspace } from '../helpers/cli.js';

interface VmJson { instance: string; cloud: string; az: string; ips: string[]; state: string; version: string }
interface Ev { stage: string; instance: string | null; state: string; data: { canary?: boolean; cloud?: string } | null }

describe('one deployment across aws, gcp and local', () => {
  const ws = workspace('xcloud');
  let ec2: FakeEc2;
  let gce: FakeGce;
  const env = { AWS_ACCESS_KEY_ID: 'AKIAFAKEFAKEFAKEFAKE', AWS_SECRET_ACCESS_KEY: 'fake-secret', AWS_REGION: 'us-east-1', AWS_EC2_METADATA_DISABLED: 'true' };
  const cli = (args: string[]) => ws.cli(args, { env });
  const vms = async () => JSON.parse((await cli(['vms', '--json'])).stdout) as VmJson[];
  const events = async () => {
    const tasks = JSON.parse((await cli(['tasks', '--json'])).stdout) as { id: number }[];
    return (JSON.parse((await cli(['task', String(tasks[0]!.id), '--json'])).stdout) as { events: Ev[] }).events;
  };
  const manifest = () => ws.writeManifest(helloManifest({ instances: 6, azs: ['aws-a', 'gcp-b', 'local-c'], canaries: 3, maxInFlight: 3, canaryWatch: '100-2000' }));

  beforeAll(async () => {
    ec2 = await FakeEc2.start({ backing: { kind: 'local', home: ws.home } });
    gce = await new FakeGce({ project: 'xcloud', backing: { home: ws.home }, operationDelayMs: 20 }).start();
    writeFileSync(join(ws.dir, 'deployments', 'cloud-config.yml'), `azs:
- { name: aws-a, cloud: aws, cloud_properties: { availability_zone: us-east-1a, subnet_id: subnet-0000000000000000a } }
- { name: gcp-b, cloud: gce, cloud_properties: { zone: us-central1-b } }
- { name: local-c, cloud: local }
clouds:
- name: aws
  type: aws
  region: us-east-1
  endpoint: ${ec2.endpoint}
  security_group_ids: [sg-0123456789abcdef0]
  ssh_user: ${userInfo().username}
  poll_interval_s: 0.05
- name: gce
  type: gcp
  project: xcloud
  api_endpoint: ${gce.endpoint}
  ssh_user: ${userInfo().username}
- { name: local, type: local }
vm_types:
- name: small
  cloud_properties: { instance_type: t3.small, image_id: ami-0123456789abcdef0, machine_type: e2-small }
`);
    manifest();
  }, 60_000);
  afterAll(async () => {
    await cli(['delete-deployment', 'hello', '--yes']);
    await ec2?.close();
    await gce?.stop();
    await ws.cleanup();
  }, 60_000);

  it('deploys to all three clouds, with one canary on each before any wave', async () => {
    const t0 = Date.now();
    const r = await cli(['deploy', ws.manifest, '--yes']);
    const wall = Date.now() - t0;
    expect(r.code, r.stdout + r.stderr).toBe(0);
    const list = await vms();
    expect(list.map((v) => v.cloud).sort()).toEqual(['aws', 'aws', 'gce', 'gce', 'local', 'local']);
    for (const vm of list) expect((await httpGet(`http://${vm.ips[0]}:8080/`))?.body).toContain(`Hello from ${vm.instance}`);

    const ev = await events();
    const started = ev.filter((e) => e.stage === 'update' && e.state === 'started');
    const canaries = started.filter((e) => e.data?.canary);
    expect(canaries.map((e) => e.data!.cloud).sort()).toEqual(['aws', 'gce', 'local']);
    const firstWave = ev.findIndex((e) => e.stage === 'update' && e.state === 'started' && !e.data?.canary);
    const canaryDone = ev.filter((e) => e.state === 'finished' && canaries.some((c) => c.instance === e.instance)).map((e) => ev.indexOf(e));
    expect(Math.max(...canaryDone)).toBeLessThan(firstWave);
    console.log(`cross-cloud deploy of 6 instances: ${wall} ms; EC2 calls ${JSON.stringify(ec2.calls)}; Compute calls ${JSON.stringify(gce.calls)}`);
  });

  it('a release broken on one cloud halts at the canaries and is rolled back on every cloud', async () => {
    const before = await vms();
    const server = join(ws.dir, 'releases', 'hello', 'jobs', 'web', 'bin', 'server.py');
    const original = readFileSync(server, 'utf8');
    // The new release is unhealthy only in the gcp AZ.
    writeFileSync(server, original.replace('elif cfg.get("healthy", True):', 'elif cfg.get("healthy", True) and cfg["az"] != "gcp-b":'));
    try {
      const r = await cli(['deploy', ws.manifest, '--yes']);
      expect(r.code).toBe(1);
      expect(r.stderr).toMatch(/web\/\d failed at health/);
      expect(r.stderr).toContain('rolled back 3 instance(s)');
      const ev = await events();
      const started = ev.filter((e) => e.stage === 'update' && e.state === 'started');
      expect(started.every((e) => e.data?.canary)).toBe(true);
      const failed = ev.find((e) => e.stage === 'update' && e.state === 'failed')!;
      expect(before.find((v) => v.instance === failed.instance)!.cloud).toBe('gce');
      const rolledBack = ev.filter((e) => e.stage === 'rollback' && e.state === 'finished' && e.instance).map((e) => before.find((v) => v.instance === e.instance)!.cloud);
      expect(rolledBack.sort()).toEqual(['aws', 'gce', 'local']);
      const after = await vms();
      expect(after.map((v) => v.version)).toEqual(before.map((v) => v.version));
      for (const vm of after) expect((await httpGet(`http://${vm.ips[0]}:8080/`))?.body, vm.instance).toContain(`(hello ${before[0]!.version.split('/')[1]}`);
    } finally {
      writeFileSync(server, original);
    }
    manifest();
    expect((await cli(['plan', ws.manifest, '--detailed-exitcode'])).code).toBe(0);
  });
});

/**
 * Provider adapter for AWS EC2 through `@aws-sdk/client-ec2` (the only place that imports it).
 *
 * - create: RunInstances (1 instance, tagged, the director's key via cloud-init user-data,
 *   ClientToken = the instance_id tag so a retried create never launches a second instance), then
 *   a bounded waitUntilInstanceRunning.
 * - list: one filtered DescribeInstances, paginated by 1000.
 * - The SDK's own retries are off (maxAttempts 1): throttling surfaces as `throttledError` and the
 *   RateLimitedProvider around this adapter counts it and retries with backoff and jitter.
 *
 * SSH port: real EC2 instances listen on 22. For tests and port-forwarding VPC endpoints an
 * instance tag `director:ssh_port`, or the cloud property `ssh_port`, says otherwise.
 */
// Types only at load time: the SDK (~1 s to import) is loaded on first use, so CLI commands that
// never talk to EC2 do not pay for it.
import type { EC2Client, Filter, Instance, RunInstancesCommandInput } from '@aws-sdk/client-ec2';
import { createHash } from 'node:crypto';
import { infraError } from '../../errors.js';
import type { Provider, Vm, VmRequest } from '../provider.js';
import { TAG_CREATED_AT, TAG_INSTANCE_ID } from '../provider.js';
import { parseAwsAz, parseAwsProperties, parseAwsVmType, type AwsCloudConfig } from './config.js';
import { awsErrorCode, mapAwsError } from './errors.js';

export { AWS_AZ_PROPERTIES, AWS_PROPERTIES, AWS_VM_TYPE_PROPERTIES, parseAwsProperties, type AwsCloudConfig } from './config.js';
export { CREDENTIALS_HINT, mapAwsError } from './errors.js';

/** the director's AZ name (EC2's placement has the EC2 availability zone) */
export const TAG_AZ = 'az';
export const TAG_SSH_PORT = 'director:ssh_port';
/** set when the vm_type names its own ssh_user, so that list() knows it too */
export const TAG_SSH_USER = 'director:ssh_user';
const TAG_NAME = 'Name';
/** tags that are EC2's or the fake's, not the director's */
const HIDDEN_TAGS = new Set([TAG_NAME, TAG_SSH_PORT, TAG_SSH_USER]);
const LIVE_STATES = ['pending', 'running', 'stopping', 'stopped'];

export interface AwsProviderOptions {
  /** name of the cloud in the cloud-config */
  cloud: string;
  /** the cloud-config entry's properties (validated here) */
  properties: Record<string, unknown>;
  /** tests: explicit credentials instead of the SDK's default chain */
  credentials?: { accessKeyId: string; secretAccessKey: string; sessionToken?: string };
  /** tests: override running_timeout_s / poll_interval_s with fractional seconds */
  waiter?: { maxWaitTimeS?: number; minDelayS?: number; maxDelayS?: number };
}

export class AwsProvider implements Provider {
  readonly cloud: string;
  readonly type = 'aws';
  readonly config: AwsCloudConfig;
  private clientP: Promise<EC2Client> | null = null;
  private readonly credentials: AwsProviderOptions['credentials'];
  private sdk!: typeof import('@aws-sdk/client-ec2');
  private readonly waiter: { maxWaitTime: number; minDelay: number; maxDelay: number };

  constructor(opts: AwsProviderOptions) {
    this.cloud = opts.cloud;
    this.config = parseAwsProperties(opts.cloud, opts.properties);
    this.credentials = opts.credentials;
    const minDelay = opts.waiter?.minDelayS ?? this.config.pollIntervalS;
    this.waiter = {
      maxWaitTime: opts.waiter?.maxWaitTimeS ?? this.config.runningTimeoutS,
      minDelay,
      maxDelay: Math.max(minDelay, opts.waiter?.maxDelayS ?? Math.max(15, minDelay)),
    };
  }

  private ec2(): Promise<EC2Client> {
    this.clientP ??= import('@aws-sdk/client-ec2').then((sdk) => {
      this.sdk = sdk;
      return new sdk.EC2Client({
        region: this.config.region,
        ...(this.config.endpoint ? { endpoint: this.config.endpoint } : {}),
        ...(this.credentials ? { credentials: this.credentials } : {}),
        // Our wrapper retries throttling (and counts it); the SDK's retries would hide it.
        maxAttempts: 1,
      });
    });
    return this.clientP;
  }

  async create(req: VmRequest): Promise<Vm> {
    const client = await this.ec2();
    const { RunInstancesCommand, waitUntilInstanceRunning } = this.sdk;
    const az = parseAwsAz(this.cloud, req.az, req.azCloudProperties);
    const vt = parseAwsVmType(this.cloud, req.vmType, req.vmTypeCloudProperties);
    const tags: Record<string, string> = { ...vt.tags, ...req.tags, [TAG_AZ]: req.az };
    const name = req.tags.deployment && req.tags.instance_group ? `${req.tags.deployment}/${req.tags.instance_group}/${req.tags.index ?? ''}` : (req.tags[TAG_INSTANCE_ID] ?? 'director-vm');
    const userData = `#cloud-config\nssh_authorized_keys:\n  - ${JSON.stringify(req.authorizedKey.trim())}\n`;
    const subnetId = az.subnetId ?? this.config.subnetId;
    const groups = vt.securityGroupIds ?? this.config.securityGroupIds;
    const input: RunInstancesCommandInput = {
      MinCount: 1,
      MaxCount: 1,
      ImageId: vt.imageId,
      InstanceType: vt.instanceType as RunInstancesCommandInput['InstanceType'],
      Placement: { AvailabilityZone: az.availabilityZone },
      ...(subnetId ? { SubnetId: subnetId } : {}),
      ...(groups.length > 0 ? { SecurityGroupIds: groups } : {}),
      ...(this.config.keyName ? { KeyName: this.config.keyName } : {}),
      ...(vt.iamInstanceProfile ? { IamInstanceProfile: vt.iamInstanceProfile.startsWith('arn:') ? { Arn: vt.iamInstanceProfile } : { Name: vt.iamInstanceProfile } } : {}),
      ...(vt.rootDiskGb ? { BlockDeviceMappings: [{ DeviceName: vt.rootDeviceName, Ebs: { VolumeSize: vt.rootDiskGb, VolumeType: 'gp3', DeleteOnTermination: true } }] } : {}),
      UserData: Buffer.from(userData).toString('base64'),
      TagSpecifications: [{ ResourceType: 'instance', Tags: Object.entries({ ...tags, [TAG_NAME]: name, ...(vt.sshUser ? { [TAG_SSH_USER]: vt.sshUser } : {}) }).map(([Key, Value]) => ({ Key, Value })) }],
      // Idempotency: the same instance_id retried (throttled answer, lost response) is the same instance.
      ...(req.tags[TAG_INSTANCE_ID] ? { ClientToken: clientToken(req.tags[TAG_INSTANCE_ID], req.tags[TAG_CREATED_AT] ?? '') } : {}),
    };
    const run = await this.send('create (RunInstances)', () => client.send(new RunInstancesCommand(input)));
    const id = run.Instances?.[0]?.InstanceId;
    if (!id) throw infraError('aws_api_error', `cloud '${this.cloud}': RunInstances answered without an instance id`);
    let instance: Instance | undefined;
    try {
      const res = await waitUntilInstanceRunning({ client, ...this.waiter }, { InstanceIds: [id] });
      instance = (res.reason as { Reservations?: { Instances?: Instance[] }[] } | undefined)?.Reservations?.[0]?.Instances?.[0];
    } catch (err) {
      const last = await this.describeOne(id).catch(() => undefined);
      const state = last?.State?.Name ?? 'unknown';
      // Do not leave a half-made VM behind; it carries the director's tags if this fails too.
      await this.delete(id).catch(() => undefined);
      const timedOut = (err as { name?: string }).name === 'TimeoutError' || state === 'pending';
      throw infraError(
        'vm_create_timeout',
        timedOut
          ? `cloud '${this.cloud}': instance ${id} did not reach 'running' within ${this.waiter.maxWaitTime} s (last state: ${state}); it was terminated`
          : `cloud '${this.cloud}': instance ${id} went to '${state}' instead of 'running'${last?.StateReason?.Message ? ` (${last.StateReason.Message})` : ''}; it was terminated`,
        { hint: 'check the instance in the EC2 console (its state reason and system log); raise running_timeout_s in the cloud if instances boot slowly', cause: err },
      );
    }
    instance ??= await this.describeOne(id);
    if (!instance) throw infraError('aws_api_error', `cloud '${this.cloud}': instance ${id} is running but DescribeInstances does not return it`);
    return this.toVm(instance);
  }

  async list(tags: Record<string, string>): Promise<Vm[]> {
    const client = await this.ec2();
    const { DescribeInstancesCommand } = this.sdk;
    const filters: Filter[] = [
      ...Object.entries(tags).map(([k, v]) => ({ Name: `tag:${k}`, Values: [v] })),
      { Name: 'instance-state-name', Values: LIVE_STATES },
    ];
    const out: Vm[] = [];
    let token: string | undefined;
    do {
      const page = await this.send('list (DescribeInstances)', () =>
        client.send(new DescribeInstancesCommand({ Filters: filters, MaxResults: 1000, ...(token ? { NextToken: token } : {}) })),
      );
      for (const r of page.Reservations ?? []) for (const i of r.Instances ?? []) out.push(this.toVm(i));
      token = page.NextToken || undefined;
    } while (token);
    return out;
  }

  async delete(cid: string): Promise<void> {
    const client = await this.ec2();
    try {
      await client.send(new this.sdk.TerminateInstancesCommand({ InstanceIds: [cid] }));
    } catch (err) {
      // Gone already (or never was): deleting succeeds.
      if (awsErrorCode(err) === 'InvalidInstanceID.NotFound') return;
      throw mapAwsError(this.cloud, `delete ${cid} (TerminateInstances)`, err);
    }
  }

  async exists(cid: string): Promise<boolean> {
    const i = await this.describeOne(cid);
    return i !== undefined && LIVE_STATES.includes(i.State?.Name ?? '');
  }

  async setMetadata(cid: string, tags: Record<string, string>): Promise<void> {
    const client = await this.ec2();
    await this.send(`setMetadata ${cid} (CreateTags)`, () =>
      client.send(new this.sdk.CreateTagsCommand({ Resources: [cid], Tags: Object.entries(tags).map(([Key, Value]) => ({ Key, Value })) })),
    );
  }

  async close(): Promise<void> {
    const c = this.clientP;
    this.clientP = null;
    if (c) (await c.catch(() => undefined))?.destroy();
  }

  private async describeOne(id: string): Promise<Instance | undefined> {
    const client = await this.ec2();
    try {
      const res = await client.send(new this.sdk.DescribeInstancesCommand({ InstanceIds: [id] }));
      return res.Reservations?.[0]?.Instances?.[0];
    } catch (err) {
      const code = awsErrorCode(err);
      if (code === 'InvalidInstanceID.NotFound' || code === 'InvalidInstanceID.Malformed') return undefined;
      throw mapAwsError(this.cloud, `describe ${id} (DescribeInstances)`, err);
    }
  }

  private async send<T>(what: string, fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (err) {
      throw mapAwsError(this.cloud, what, err);
    }
  }

  private toVm(i: Instance): Vm {
    const all: Record<string, string> = {};
    for (const t of i.Tags ?? []) if (t.Key !== undefined) all[t.Key] = t.Value ?? '';
    const tags: Record<string, string> = {};
    for (const [k, v] of Object.entries(all)) if (!HIDDEN_TAGS.has(k)) tags[k] = v;
    const ip = this.config.usePublicIp ? i.PublicIpAddress : i.PrivateIpAddress;
    const ips = [i.PrivateIpAddress, i.PublicIpAddress].filter((x): x is string => !!x);
    if (this.config.usePublicIp) ips.reverse();
    const tagPort = Number(all[TAG_SSH_PORT]);
    const state = i.State?.Name;
    return {
      cid: i.InstanceId ?? '',
      cloud: this.cloud,
      az: all[TAG_AZ] ?? i.Placement?.AvailabilityZone ?? '',
      ips,
      sshHost: ip ?? '',
      sshPort: Number.isInteger(tagPort) && tagPort > 0 ? tagPort : (this.config.sshPort ?? 22),
      sshUser: all[TAG_SSH_USER] || this.config.sshUser,
      tags,
      state: state === 'running' ? 'running' : state === 'pending' ? 'pending' : state === 'stopping' || state === 'stopped' ? 'stopped' : state === 'shutting-down' || state === 'terminated' ? 'terminated' : 'unknown',
      createdAt: all[TAG_CREATED_AT] ?? (i.LaunchTime ? new Date(i.LaunchTime).toISOString() : new Date(0).toISOString()),
    };
  }
}

/**
 * The instance_id plus created_at (set once per create by the director): the wrapper's retries of
 * one create share it, while a recreate of the same instance (new vm_type) gets a new one, which
 * it must, or EC2 would answer with the old instance or IdempotentParameterMismatch. EC2 client
 * tokens are at most 64 ASCII characters: a SHA-256 in hex is exactly that.
 */
function clientToken(instanceId: string, createdAt: string): string {
  return createHash('sha256').update(`${instanceId}/${createdAt}`).digest('hex');
}

/**
 * A wire-level fake of the EC2 Query API on 127.0.0.1, for the calls the aws provider makes:
 * RunInstances, DescribeInstances, TerminateInstances, CreateTags. POST / with a form body,
 * flattened lists, XML answers in the 2016-11-15 namespace, `nextToken` pagination, EC2's error
 * XML, ClientToken idempotency, and terminated instances that stay listed (no IP) for a while.
 *
 * Knobs: throttle a fraction of calls (503 RequestLimitExceeded), fail RunInstances with a code,
 * keep new instances `pending` for N DescribeInstances calls (Infinity: never running).
 *
 * Backing `local`: each RunInstances asks the local cloud of a director home for a real VM that
 * accepts the user-data's keys, and reports its loopback IP as privateIpAddress and its SSH port
 * as the tag `director:ssh_port`; TerminateInstances deletes that VM. Without backing,
 * instances are records only (scale tests).
 */
import { randomBytes } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { LocalCloudClient } from '../../src/local-cloud/client.js';

const NS = 'http://ec2.amazonaws.com/doc/2016-11-15/';
const STATE_CODES: Record<string, number> = { pending: 0, running: 16, 'shutting-down': 32, terminated: 48, stopping: 64, stopped: 80 };

export interface FakeEc2Options {
  backing?: { kind: 'none' } | { kind: 'local'; home: string };
  /** fraction of calls answered 503 RequestLimitExceeded */
  throttleRate?: number;
  /**
   * a throttled RunInstances is carried out before it is answered 503 (a lost response), so
   * only ClientToken keeps a retry from launching a second instance
   */
  throttleAfterRun?: boolean;
  /** every RunInstances fails with this code (HTTP status as EC2 uses for it) */
  failCreate?: string;
  /** every call fails with this code (e.g. AuthFailure) */
  failAll?: string;
  /** new instances stay pending for this many DescribeInstances calls naming them (Infinity: forever) */
  pendingDescribes?: number;
  /** how long terminated instances stay listed (default 60 s) */
  terminatedTtlMs?: number;
  random?: () => number;
}

export interface FakeInstance {
  id: string;
  reservationId: string;
  state: keyof typeof STATE_CODES;
  imageId: string;
  instanceType: string;
  az: string;
  subnetId: string;
  groups: string[];
  keyName?: string;
  privateIp?: string;
  tags: Map<string, string>;
  clientToken?: string;
  userData?: string;
  launchTime: string;
  pendingLeft: number;
  terminatedAt?: number;
  localCid?: string;
  /** resolved once a local-backed instance has its VM */
  ready: Promise<void>;
}

class Ec2Error extends Error {
  constructor(readonly code: string, message: string, readonly status = 400) {
    super(message);
  }
}

const STATUS: Record<string, number> = {
  RequestLimitExceeded: 503,
  InsufficientInstanceCapacity: 500,
  InternalError: 500,
  AuthFailure: 401,
  UnauthorizedOperation: 403,
};

const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
const hex = (n: number) => randomBytes(Math.ceil(n / 2)).toString('hex').slice(0, n);

/** `Prefix.N` → values in N order; `Prefix.N.Sub` → records in N order. */
function listOf(params: URLSearchParams, prefix: string): string[] {
  const out: [number, string][] = [];
  for (const [k, v] of params) {
    const m = new RegExp(`^${prefix.replace(/\./g, '\\.')}\\.(\\d+)$`).exec(k);
    if (m) out.push([Number(m[1]), v]);
  }
  return out.sort((a, b) => a[0] - b[0]).map((x) => x[1]);
}

function indices(params: URLSearchParams, prefix: string): number[] {
  const set = new Set<number>();
  const re = new RegExp(`^${prefix.replace(/\./g, '\\.')}\\.(\\d+)\\.`);
  for (const k of params.keys()) {
    const m = re.exec(k);
    if (m) set.add(Number(m[1]));
  }
  return [...set].sort((a, b) => a - b);
}

export class FakeEc2 {
  readonly instances = new Map<string, FakeInstance>();
  /** requests received per Action, throttled or not */
  readonly calls: Record<string, number> = {};
  /** requests answered with RequestLimitExceeded per Action */
  readonly throttled: Record<string, number> = {};
  opts: FakeEc2Options;
  private server!: http.Server;
  private local: Promise<LocalCloudClient> | null = null;
  private ipCounter = 0;

  private constructor(opts: FakeEc2Options) {
    this.opts = opts;
  }

  static async start(opts: FakeEc2Options = {}): Promise<FakeEc2> {
    const f = new FakeEc2(opts);
    f.server = http.createServer((req, res) => void f.handle(req, res));
    f.server.keepAliveTimeout = 1000;
    await new Promise<void>((r) => f.server.listen(0, '127.0.0.1', () => r()));
    return f;
  }

  get port(): number {
    return (this.server.address() as AddressInfo).port;
  }

  get endpoint(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  /** instances not terminated (or shutting down) */
  live(): FakeInstance[] {
    return [...this.instances.values()].filter((i) => i.state !== 'terminated' && i.state !== 'shutting-down');
  }

  /** Adds `count` running record-only instances carrying `tags` (scale tests), without API calls. */
  seed(count: number, tags: (n: number) => Record<string, string>): FakeInstance[] {
    const out: FakeInstance[] = [];
    for (let n = 0; n < count; n++) {
      const k = ++this.ipCounter;
      const inst: FakeInstance = {
        id: `i-${hex(17)}`,
        reservationId: `r-${hex(17)}`,
        state: 'running',
        imageId: 'ami-0123456789abcdef0',
        instanceType: 't3.micro',
        az: 'us-east-1a',
        subnetId: 'subnet-0123456789abcdef0',
        groups: [],
        privateIp: `10.0.${(k >> 8) & 255}.${k & 255}`,
        tags: new Map(Object.entries(tags(n))),
        launchTime: new Date().toISOString(),
        pendingLeft: 0,
        ready: Promise.resolve(),
      };
      this.instances.set(inst.id, inst);
      out.push(inst);
    }
    return out;
  }

  resetCounts(): void {
    for (const k of Object.keys(this.calls)) delete this.calls[k];
    for (const k of Object.keys(this.throttled)) delete this.throttled[k];
  }

  async close(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise<void>((r) => this.server.close(() => r()));
  }

  private localCloud(home: string): Promise<LocalCloudClient> {
    this.local ??= LocalCloudClient.ensure(home);
    return this.local;
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const requestId = `${hex(8)}-${hex(4)}-${hex(4)}-${hex(4)}-${hex(12)}`;
    let action = 'unknown';
    try {
      const chunks: Buffer[] = [];
      for await (const c of req) chunks.push(c as Buffer);
      const params = new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
      action = params.get('Action') ?? 'unknown';
      this.calls[action] = (this.calls[action] ?? 0) + 1;
      if (req.method !== 'POST') throw new Ec2Error('InvalidAction', 'only POST is supported by this fake');
      if (!/Credential=/.test(req.headers.authorization ?? '')) throw new Ec2Error('AuthFailure', 'AWS was not able to validate the provided access credentials', 401);
      if (this.opts.failAll) throw new Ec2Error(this.opts.failAll, `injected ${this.opts.failAll}`, STATUS[this.opts.failAll] ?? 400);
      const throttle = (this.opts.throttleRate ?? 0) > 0 && (this.opts.random ?? Math.random)() < this.opts.throttleRate!;
      if (throttle && !(action === 'RunInstances' && this.opts.throttleAfterRun)) throw this.throttle(action);
      let body: string;
      switch (action) {
        case 'RunInstances':
          body = await this.runInstances(params);
          if (throttle) throw this.throttle(action);
          break;
        case 'DescribeInstances':
          body = this.describeInstances(params);
          break;
        case 'TerminateInstances':
          body = await this.terminateInstances(params);
          break;
        case 'CreateTags':
          body = this.createTags(params);
          break;
        default:
          throw new Ec2Error('InvalidAction', `The action ${action} is not valid for this web service.`);
      }
      const xml = `<?xml version="1.0" encoding="UTF-8"?>\n<${action}Response xmlns="${NS}"><requestId>${requestId}</requestId>${body}</${action}Response>`;
      res.writeHead(200, { 'content-type': 'text/xml;charset=UTF-8', 'x-amzn-requestid': requestId });
      res.end(xml);
    } catch (err) {
      const e = err instanceof Ec2Error ? err : new Ec2Error('InternalError', String(err), 500);
      const xml = `<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>${esc(e.code)}</Code><Message>${esc(e.message)}</Message></Error></Errors><RequestID>${requestId}</RequestID></Response>`;
      res.writeHead(e.status, { 'content-type': 'text/xml;charset=UTF-8' });
      res.end(xml);
    }
  }

  private throttle(action: string): Ec2Error {
    this.throttled[action] = (this.throttled[action] ?? 0) + 1;
    return new Ec2Error('RequestLimitExceeded', 'Request limit exceeded.', 503);
  }

  private find(id: string): FakeInstance {
    if (!/^i-([0-9a-f]{8}|[0-9a-f]{17})$/.test(id)) throw new Ec2Error('InvalidInstanceID.Malformed', `Invalid id: "${id}"`);
    const i = this.instances.get(id);
    if (!i) throw new Ec2Error('InvalidInstanceID.NotFound', `The instance ID '${id}' does not exist`);
    return i;
  }

  private async runInstances(p: URLSearchParams): Promise<string> {
    const token = p.get('ClientToken') ?? undefined;
    if (token) {
      const existing = [...this.instances.values()].find((i) => i.clientToken === token);
      if (existing) {
        await existing.ready;
        return this.reservationXml(existing);
      }
    }
    if (p.get('MinCount') !== '1' || p.get('MaxCount') !== '1') throw new Ec2Error('InvalidParameterValue', 'this fake launches exactly one instance per call');
    const imageId = p.get('ImageId');
    if (!imageId) throw new Ec2Error('MissingParameter', 'The request must contain the parameter ImageId');
    if (!/^ami-([0-9a-f]{8}|[0-9a-f]{17})$/.test(imageId)) throw new Ec2Error('InvalidAMIID.Malformed', `Invalid id: "${imageId}"`);
    if (this.opts.failCreate) throw new Ec2Error(this.opts.failCreate, `injected ${this.opts.failCreate}`, STATUS[this.opts.failCreate] ?? 400);
    const tags = new Map<string, string>();
    for (const n of indices(p, 'TagSpecification')) {
      if (p.get(`TagSpecification.${n}.ResourceType`) !== 'instance') continue;
      for (const t of indices(p, `TagSpecification.${n}.Tag`)) tags.set(p.get(`TagSpecification.${n}.Tag.${t}.Key`) ?? '', p.get(`TagSpecification.${n}.Tag.${t}.Value`) ?? '');
    }
    const userData = p.get('UserData') ? Buffer.from(p.get('UserData')!, 'base64').toString('utf8') : undefined;
    let resolveReady!: () => void;
    let rejectReady!: (e: unknown) => void;
    const inst: FakeInstance = {
      id: `i-${hex(17)}`,
      reservationId: `r-${hex(17)}`,
      state: 'pending',
      imageId,
      instanceType: p.get('InstanceType') ?? 'm1.small',
      az: p.get('Placement.AvailabilityZone') ?? 'us-east-1a',
      subnetId: p.get('SubnetId') ?? 'subnet-0123456789abcdef0',
      groups: listOf(p, 'SecurityGroupId'),
      keyName: p.get('KeyName') ?? undefined,
      tags,
      clientToken: token,
      userData,
      launchTime: new Date().toISOString(),
      pendingLeft: this.opts.pendingDescribes ?? 1,
      ready: new Promise<void>((res, rej) => {
        resolveReady = res;
        rejectReady = rej;
      }),
    };
    inst.ready.catch(() => undefined);
    this.instances.set(inst.id, inst);
    const backing = this.opts.backing;
    if (backing?.kind === 'local') {
      try {
        const keys = authorizedKeys(userData ?? '');
        const vm = await (await this.localCloud(backing.home)).createVm({ tags: { 'fake-ec2:instance-id': inst.id }, authorizedKeys: keys });
        inst.localCid = vm.cid;
        inst.privateIp = vm.ip;
        inst.tags.set('director:ssh_port', String(vm.ssh_port));
      } catch (err) {
        this.instances.delete(inst.id);
        rejectReady(err);
        throw new Ec2Error('InternalError', `local cloud: ${String(err)}`, 500);
      }
    } else {
      const n = ++this.ipCounter;
      inst.privateIp = `10.0.${(n >> 8) & 255}.${n & 255}`;
    }
    resolveReady();
    return this.reservationXml(inst);
  }

  private reservationXml(i: FakeInstance): string {
    return `<reservationId>${i.reservationId}</reservationId><ownerId>123456789012</ownerId><groupSet/><instancesSet>${this.instanceXml(i)}</instancesSet>`;
  }

  private instanceXml(i: FakeInstance): string {
    const ip = i.state === 'terminated' ? '' : i.privateIp ? `<privateIpAddress>${i.privateIp}</privateIpAddress>` : '';
    const tags = [...i.tags].map(([k, v]) => `<item><key>${esc(k)}</key><value>${esc(v)}</value></item>`).join('');
    return (
      `<item><instanceId>${i.id}</instanceId><imageId>${i.imageId}</imageId>` +
      `<instanceState><code>${STATE_CODES[i.state]}</code><name>${i.state}</name></instanceState>` +
      `<privateDnsName/><dnsName/><amiLaunchIndex>0</amiLaunchIndex>${i.keyName ? `<keyName>${esc(i.keyName)}</keyName>` : ''}` +
      `<instanceType>${esc(i.instanceType)}</instanceType><launchTime>${i.launchTime}</launchTime>` +
      `<placement><availabilityZone>${esc(i.az)}</availabilityZone><tenancy>default</tenancy></placement>` +
      `<subnetId>${esc(i.subnetId)}</subnetId><vpcId>vpc-0123456789abcdef0</vpcId>${ip}` +
      `<groupSet>${i.groups.map((g) => `<item><groupId>${esc(g)}</groupId></item>`).join('')}</groupSet>` +
      `<architecture>x86_64</architecture><rootDeviceType>ebs</rootDeviceType>` +
      (i.clientToken ? `<clientToken>${esc(i.clientToken)}</clientToken>` : '') +
      `<tagSet>${tags}</tagSet></item>`
    );
  }

  /** Moves pending → running (after N describes) and shutting-down → terminated; purges old terminated ones. */
  private age(i: FakeInstance): void {
    if (i.state === 'pending' && --i.pendingLeft <= 0) i.state = 'running';
    else if (i.state === 'shutting-down') i.state = 'terminated';
  }

  private describeInstances(p: URLSearchParams): string {
    const now = Date.now();
    const ttl = this.opts.terminatedTtlMs ?? 60_000;
    for (const [id, i] of this.instances) if (i.terminatedAt !== undefined && now - i.terminatedAt > ttl) this.instances.delete(id);
    const ids = listOf(p, 'InstanceId');
    const maxResults = p.get('MaxResults');
    if (ids.length > 0 && maxResults !== null) throw new Ec2Error('InvalidParameterCombination', 'The parameter instancesSet cannot be used with the parameter maxResults');
    const max = maxResults === null ? Infinity : Number(maxResults);
    if (maxResults !== null && !(Number.isInteger(max) && max >= 5 && max <= 1000)) throw new Ec2Error('InvalidParameterValue', `Value ( ${maxResults} ) for parameter maxResults is invalid. Expecting a value between 5 and 1000.`);
    const filters = indices(p, 'Filter').map((n) => ({ name: p.get(`Filter.${n}.Name`) ?? '', values: listOf(p, `Filter.${n}.Value`) }));
    let list: FakeInstance[];
    if (ids.length > 0) {
      list = ids.map((id) => this.find(id));
    } else {
      list = [...this.instances.values()];
    }
    list = list.filter((i) =>
      filters.every((f) => {
        if (f.name.startsWith('tag:')) return f.values.includes(i.tags.get(f.name.slice(4)) ?? '\u0000');
        if (f.name === 'instance-state-name') return f.values.includes(i.state);
        if (f.name === 'instance-id') return f.values.includes(i.id);
        if (f.name === 'tag-key') return f.values.some((v) => i.tags.has(v));
        throw new Ec2Error('InvalidParameterValue', `The filter '${f.name}' is invalid`);
      }),
    );
    const start = p.get('NextToken') ? Number(Buffer.from(p.get('NextToken')!, 'base64url').toString()) : 0;
    const page = list.slice(start, start + max);
    const next = start + page.length < list.length ? Buffer.from(String(start + page.length)).toString('base64url') : undefined;
    const xml = page.map((i) => `<item><reservationId>${i.reservationId}</reservationId><ownerId>123456789012</ownerId><groupSet/><instancesSet>${this.instanceXml(i)}</instancesSet></item>`).join('');
    // State moves on after the answer, as if time had passed between two polls.
    for (const i of page) this.age(i);
    return `<reservationSet>${xml}</reservationSet>${next ? `<nextToken>${next}</nextToken>` : ''}`;
  }

  private async terminateInstances(p: URLSearchParams): Promise<string> {
    const ids = listOf(p, 'InstanceId');
    if (ids.length === 0) throw new Ec2Error('MissingParameter', 'The request must contain the parameter InstanceId');
    const found = ids.map((id) => this.find(id));
    const items: string[] = [];
    for (const i of found) {
      const prev = i.state;
      if (i.state !== 'terminated' && i.state !== 'shutting-down') {
        i.state = 'shutting-down';
        i.terminatedAt = Date.now();
        if (i.localCid && this.opts.backing?.kind === 'local') {
          await (await this.localCloud(this.opts.backing.home)).deleteVm(i.localCid);
          i.localCid = undefined;
        }
      }
      items.push(
        `<item><instanceId>${i.id}</instanceId><currentState><code>${STATE_CODES[i.state]}</code><name>${i.state}</name></currentState>` +
          `<previousState><code>${STATE_CODES[prev]}</code><name>${prev}</name></previousState></item>`,
      );
    }
    return `<instancesSet>${items.join('')}</instancesSet>`;
  }

  private createTags(p: URLSearchParams): string {
    const ids = listOf(p, 'ResourceId');
    const found = ids.map((id) => this.find(id));
    const tags = indices(p, 'Tag').map((n) => [p.get(`Tag.${n}.Key`) ?? '', p.get(`Tag.${n}.Value`) ?? ''] as const);
    for (const i of found) for (const [k, v] of tags) i.tags.set(k, v);
    return '<return>true</return>';
  }
}

/** The keys of `#cloud-config` user-data's `ssh_authorized_keys` (flow or block list). */
export function authorizedKeys(userData: string): string[] {
  const out: string[] = [];
  const lines = userData.split('\n');
  const unq = (s: string) => {
    s = s.trim();
    return s.startsWith('"') ? (JSON.parse(s) as string) : s.replace(/^'|'$/g, '');
  };
  for (let n = 0; n < lines.length; n++) {
    const m = /^ssh_authorized_keys:\s*(.*)$/.exec(lines[n]!);
    if (!m) continue;
    if (m[1]!.startsWith('[')) {
      out.push(...m[1]!.replace(/^\[|\]$/g, '').split(',').map(unq).filter(Boolean));
    } else {
      for (let k = n + 1; k < lines.length && /^\s+-\s/.test(lines[k]!); k++) out.push(unq(lines[k]!.replace(/^\s+-\s/, '')));
    }
  }
  return out;
}

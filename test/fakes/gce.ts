/**
 * A wire-level fake of the Compute Engine v1 REST API, for testing the real `@google-cloud/compute`
 * client: the instance paths the gcp provider uses, real JSON shapes, zone operations that finish
 * after a delay, and error bodies as GCE sends them.
 *
 * Knobs: throttle a fraction of calls (429 or 403 rateLimitExceeded), fail inserts inside the DONE
 * operation (QUOTA_EXCEEDED, ZONE_RESOURCE_POOL_EXHAUSTED), refuse every call as unauthenticated.
 * With `backing: { home }`, each instance is a real local VM of that director home's local cloud
 * (its loopback IP as networkIP, its SSH port in the `director-ssh-port` label); without it the
 * fake only records (scale tests).
 */
import { randomUUID } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { LocalCloudClient } from '../../src/local-cloud/client.js';

export interface FakeGceOptions {
  project?: string;
  /** ms before an operation turns DONE (default 5) */
  operationDelayMs?: number;
  backing?: { home: string };
}

interface Instance {
  kind: 'compute#instance';
  id: string;
  name: string;
  zone: string;
  selfLink: string;
  machineType: string;
  status: string;
  creationTimestamp: string;
  labels: Record<string, string>;
  labelFingerprint: string;
  metadata: { kind: string; fingerprint: string; items: { key: string; value: string }[] };
  networkInterfaces: { name: string; network: string; networkIP: string; accessConfigs?: { type: string; name: string; natIP?: string }[] }[];
  disks: unknown[];
  tags?: { items?: string[]; fingerprint?: string };
  /** local-cloud VM behind this instance (backing mode) */
  localCid?: string;
}

interface Operation {
  kind: 'compute#operation';
  id: string;
  name: string;
  zone: string;
  operationType: string;
  targetLink: string;
  targetId: string;
  status: 'PENDING' | 'RUNNING' | 'DONE';
  progress: number;
  insertTime: string;
  startTime: string;
  endTime?: string;
  selfLink: string;
  error?: { errors: { code: string; message: string }[] };
  httpErrorStatusCode?: number;
  httpErrorMessage?: string;
  done: Promise<void>;
}

export class FakeGce {
  readonly project: string;
  /** calls per route, e.g. `instances.insert`, `instances.list`, `instances.aggregatedList`, `operations.wait` */
  readonly calls: Record<string, number> = {};
  /** per-route answers that were throttled */
  readonly throttled: Record<string, number> = {};
  readonly instances = new Map<string, Instance>(); // key: zone/name
  private readonly operations = new Map<string, Operation>();
  private readonly requestIds = new Map<string, Operation>();
  private server: http.Server | null = null;
  private local: Promise<LocalCloudClient> | null = null;
  port = 0;

  // knobs
  operationDelayMs: number;
  /** fraction of calls answered as throttled */
  throttleRate = 0;
  throttleKind: '429' | '403' = '429';
  /** inserts fail inside their DONE operation with this code */
  failInserts: 'QUOTA_EXCEEDED' | 'ZONE_RESOURCE_POOL_EXHAUSTED' | null = null;
  /** every call answered 401 (expired / missing credentials) */
  unauthenticated = false;
  /** random source for throttling; injectable for reproducible tests */
  random: () => number = Math.random;
  private ipSeq = 0;

  constructor(private readonly opts: FakeGceOptions = {}) {
    this.project = opts.project ?? 'fake-project';
    this.operationDelayMs = opts.operationDelayMs ?? 5;
  }

  get endpoint(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  async start(): Promise<this> {
    this.server = http.createServer((req, res) => {
      let body = '';
      req.on('data', (d) => (body += d));
      req.on('end', () => {
        this.handle(req, body)
          .then(([status, json]) => send(res, status, json))
          .catch((err: unknown) => send(res, 500, gceError(500, 'backendError', String(err))));
      });
    });
    this.server.keepAliveTimeout = 1000;
    await new Promise<void>((r) => this.server!.listen(0, '127.0.0.1', r));
    this.port = (this.server.address() as AddressInfo).port;
    return this;
  }

  async stop(): Promise<void> {
    await Promise.allSettled([...this.operations.values()].map((o) => o.done));
    if (this.server) {
      this.server.closeAllConnections();
      await new Promise<void>((r) => this.server!.close(() => r()));
    }
  }

  /** Live (not being deleted) instances, e.g. to check the fake is empty. */
  list(): Instance[] {
    return [...this.instances.values()];
  }

  resetCounts(): void {
    for (const k of Object.keys(this.calls)) delete this.calls[k];
    for (const k of Object.keys(this.throttled)) delete this.throttled[k];
  }

  /** Adds `n` RUNNING instances directly (scale tests), labelled with `labels` plus `index`. */
  seed(zone: string, n: number, labels: Record<string, string>): void {
    for (let i = 0; i < n; i++) {
      const name = `seed-${zone}-${this.instances.size}-${i}`;
      this.instances.set(`${zone}/${name}`, this.newInstance(zone, { name, labels: { ...labels, index: String(i) } }, 'RUNNING'));
    }
  }

  private count(route: string): void {
    this.calls[route] = (this.calls[route] ?? 0) + 1;
  }

  private async handle(req: http.IncomingMessage, body: string): Promise<[number, unknown]> {
    const url = new URL(req.url ?? '/', 'http://x');
    const method = req.method ?? 'GET';
    const parts = url.pathname.split('/').filter(Boolean).map(decodeURIComponent);
    // compute v1 projects {p} ...
    if (parts[0] !== 'compute' || parts[1] !== 'v1' || parts[2] !== 'projects') return [404, gceError(404, 'notFound', `The requested URL ${url.pathname} was not found on this server.`)];
    const project = parts[3]!;
    const rest = parts.slice(4);
    const route = routeName(method, rest);
    this.count(route);
    if (this.unauthenticated) {
      return [401, { error: { code: 401, message: 'Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential.', errors: [{ message: 'Invalid Credentials', domain: 'global', reason: 'authError', location: 'Authorization', locationType: 'header' }], status: 'UNAUTHENTICATED' } }];
    }
    if (this.throttleRate > 0 && this.random() < this.throttleRate) {
      this.throttled[route] = (this.throttled[route] ?? 0) + 1;
      if (this.throttleKind === '429') return [429, { error: { code: 429, message: "Quota exceeded for quota metric 'Queries' and limit 'Queries per minute' of service 'compute.googleapis.com'.", errors: [{ message: 'Rate Limit Exceeded', domain: 'usageLimits', reason: 'rateLimitExceeded' }], status: 'RESOURCE_EXHAUSTED' } }];
      return [403, gceError(403, 'rateLimitExceeded', 'Rate Limit Exceeded')];
    }
    if (project !== this.project) return [403, gceError(403, 'forbidden', `Required 'compute.instances.list' permission for 'projects/${project}'`)];

    if (rest[0] === 'aggregated' && rest[1] === 'instances' && method === 'GET') return [200, this.aggregatedList(url)];
    if (rest[0] !== 'zones' || !rest[1]) return [404, gceError(404, 'notFound', `The resource '${url.pathname}' was not found`)];
    const zone = rest[1];
    const [kind, id, action] = rest.slice(2);
    if (kind === 'instances') {
      if (id === undefined && method === 'POST') return this.insert(zone, JSON.parse(body || '{}') as Partial<Instance>, url.searchParams.get('requestId'));
      if (id === undefined && method === 'GET') return [200, this.zoneList(zone, url)];
      const key = `${zone}/${id}`;
      const inst = this.instances.get(key);
      const missing = (): [number, unknown] => [404, gceError(404, 'notFound', `The resource 'projects/${this.project}/zones/${zone}/instances/${id}' was not found`)];
      if (action === undefined && method === 'GET') return inst ? [200, publicInstance(inst)] : missing();
      if (action === undefined && method === 'DELETE') return inst ? this.remove(key, inst, url.searchParams.get('requestId')) : missing();
      if (action === 'setLabels' && method === 'POST') {
        if (!inst) return missing();
        const req2 = JSON.parse(body || '{}') as { labels?: Record<string, string>; labelFingerprint?: string };
        if (req2.labelFingerprint !== inst.labelFingerprint) {
          return [412, gceError(412, 'conditionNotMet', "Labels fingerprint either invalid or resource labels have changed", 'labelFingerprint')];
        }
        inst.labels = { ...(req2.labels ?? {}) };
        inst.labelFingerprint = fingerprint();
        return [200, this.operation(zone, 'setLabels', inst, async () => undefined)];
      }
    }
    if (kind === 'operations' && id) {
      const op = this.operations.get(id);
      if (!op) return [404, gceError(404, 'notFound', `The resource 'projects/${this.project}/zones/${zone}/operations/${id}' was not found`)];
      if (action === 'wait' && method === 'POST') {
        // Real wait returns when DONE or after about 2 minutes; the client loops.
        await Promise.race([op.done, new Promise((r) => setTimeout(r, 120_000).unref())]);
      }
      return [200, publicOperation(op)];
    }
    return [400, gceError(400, 'invalid', `Invalid request: ${method} ${url.pathname}`)];
  }

  private insert(zone: string, body: Partial<Instance>, requestId: string | null): [number, unknown] {
    // A retried insert with the same requestId gets the original operation, not a second VM.
    if (requestId && this.requestIds.has(requestId)) return [200, publicOperation(this.requestIds.get(requestId)!)];
    if (!body.name || !/^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$/.test(body.name)) {
      return [400, gceError(400, 'invalid', `Invalid value for field 'resource.name': '${body.name ?? ''}'. Must be a match of regex '(?:[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?|[1-9][0-9]{0,19})'`)];
    }
    for (const [k, v] of Object.entries(body.labels ?? {})) {
      if (!/^[a-z][a-z0-9_-]{0,62}$/.test(k) || !/^[a-z0-9_-]{0,63}$/.test(v)) {
        return [400, gceError(400, 'invalid', `Invalid value for field 'resource.labels': '${k}=${v}'. Label keys and values must be lower case.`)];
      }
    }
    const key = `${zone}/${body.name}`;
    if (this.instances.has(key)) return [409, gceError(409, 'alreadyExists', `The resource 'projects/${this.project}/zones/${zone}/instances/${body.name}' already exists`)];
    const inst = this.newInstance(zone, body, 'PROVISIONING');
    this.instances.set(key, inst);
    const failure = this.failInserts;
    const op = this.operation(zone, 'insert', inst, async () => {
      if (failure) {
        this.instances.delete(key);
        return failure === 'QUOTA_EXCEEDED'
          ? { code: 'QUOTA_EXCEEDED', message: `Quota 'CPUS' exceeded.  Limit: 24.0 in region ${zone.replace(/-[a-z]$/, '')}.`, status: 403, statusMessage: 'FORBIDDEN' }
          : { code: 'ZONE_RESOURCE_POOL_EXHAUSTED', message: `The zone 'projects/${this.project}/zones/${zone}' does not have enough resources available to fulfill the request.  Try a different zone, or try again later.`, status: 503, statusMessage: 'SERVICE UNAVAILABLE' };
      }
      if (this.opts.backing) {
        const keyLine = inst.metadata.items.find((i) => i.key === 'ssh-keys')?.value ?? '';
        const authorized = keyLine.split('\n').map((l) => l.slice(l.indexOf(':') + 1).trim()).filter(Boolean);
        const client = await this.localCloud();
        const vm = await client.createVm({ tags: { gce_instance: key }, authorizedKeys: authorized });
        inst.localCid = vm.cid;
        inst.networkInterfaces[0]!.networkIP = vm.ip;
        inst.labels = { ...inst.labels, 'director-ssh-port': String(vm.ssh_port) };
        inst.labelFingerprint = fingerprint();
      }
      inst.status = 'RUNNING';
      return undefined;
    });
    if (requestId) this.requestIds.set(requestId, op);
    return [200, publicOperation(op)];
  }

  private remove(key: string, inst: Instance, requestId: string | null): [number, unknown] {
    if (requestId && this.requestIds.has(requestId)) return [200, publicOperation(this.requestIds.get(requestId)!)];
    inst.status = 'STOPPING';
    const op = this.operation(inst.zone.split('/').pop()!, 'delete', inst, async () => {
      if (inst.localCid) await (await this.localCloud()).deleteVm(inst.localCid);
      this.instances.delete(key);
      return undefined;
    });
    if (requestId) this.requestIds.set(requestId, op);
    return [200, publicOperation(op)];
  }

  private localCloud(): Promise<LocalCloudClient> {
    this.local ??= LocalCloudClient.ensure(this.opts.backing!.home);
    return this.local;
  }

  private newInstance(zone: string, body: Partial<Instance>, status: string): Instance {
    const n = ++this.ipSeq;
    const nic = body.networkInterfaces?.[0];
    return {
      kind: 'compute#instance',
      id: String(1_000_000_000_000 + n),
      name: body.name!,
      zone: `https://www.googleapis.com/compute/v1/projects/${this.project}/zones/${zone}`,
      selfLink: `https://www.googleapis.com/compute/v1/projects/${this.project}/zones/${zone}/instances/${body.name}`,
      machineType: `https://www.googleapis.com/compute/v1/projects/${this.project}/${body.machineType ?? `zones/${zone}/machineTypes/e2-small`}`,
      status,
      creationTimestamp: new Date().toISOString().replace('Z', '-00:00'),
      labels: { ...(body.labels ?? {}) },
      labelFingerprint: fingerprint(),
      metadata: { kind: 'compute#metadata', fingerprint: fingerprint(), items: body.metadata?.items ?? [] },
      networkInterfaces: [
        {
          name: 'nic0',
          network: `https://www.googleapis.com/compute/v1/projects/${this.project}/${nic?.network ?? 'global/networks/default'}`,
          networkIP: `10.128.${(n >> 8) & 255}.${n & 255}`,
          ...(nic?.accessConfigs ? { accessConfigs: nic.accessConfigs.map((a) => ({ ...a, natIP: `34.1.${(n >> 8) & 255}.${n & 255}` })) } : {}),
        },
      ],
      disks: body.disks ?? [],
      ...(body.tags ? { tags: { ...body.tags, fingerprint: fingerprint() } } : {}),
    };
  }

  private operation(zone: string, type: string, inst: Instance, work: () => Promise<{ code: string; message: string; status: number; statusMessage: string } | undefined>): Operation {
    const name = `operation-${Date.now()}-${randomUUID().slice(0, 13)}`;
    const now = new Date().toISOString();
    const op: Operation = {
      kind: 'compute#operation',
      id: String(Math.floor(Math.random() * 1e18)),
      name,
      zone: `https://www.googleapis.com/compute/v1/projects/${this.project}/zones/${zone}`,
      operationType: type,
      targetLink: inst.selfLink,
      targetId: inst.id,
      status: 'RUNNING',
      progress: 0,
      insertTime: now,
      startTime: now,
      selfLink: `https://www.googleapis.com/compute/v1/projects/${this.project}/zones/${zone}/operations/${name}`,
      done: Promise.resolve(),
    };
    op.done = (async () => {
      await new Promise((r) => setTimeout(r, this.operationDelayMs));
      let failure: Awaited<ReturnType<typeof work>>;
      try {
        failure = await work();
      } catch (err) {
        failure = { code: 'INTERNAL_ERROR', message: String(err), status: 500, statusMessage: 'INTERNAL SERVER ERROR' };
      }
      if (failure) {
        op.error = { errors: [{ code: failure.code, message: failure.message }] };
        op.httpErrorStatusCode = failure.status;
        op.httpErrorMessage = failure.statusMessage;
      }
      op.status = 'DONE';
      op.progress = 100;
      op.endTime = new Date().toISOString();
    })();
    this.operations.set(name, op);
    return op;
  }

  private filtered(all: Instance[], url: URL): Instance[] {
    const want = parseFilter(url.searchParams.get('filter') ?? '');
    return all.filter((i) => Object.entries(want).every(([k, v]) => i.labels[k] === v));
  }

  private page(items: Instance[], url: URL): { page: Instance[]; next?: string } {
    const max = Math.min(500, Number(url.searchParams.get('maxResults') ?? 500) || 500);
    const start = Number(url.searchParams.get('pageToken') ?? 0) || 0;
    const page = items.slice(start, start + max);
    return { page, next: start + max < items.length ? String(start + max) : undefined };
  }

  private zoneList(zone: string, url: URL): unknown {
    const items = this.filtered([...this.instances.values()].filter((i) => i.zone.endsWith(`/zones/${zone}`)), url);
    const { page, next } = this.page(items, url);
    return {
      kind: 'compute#instanceList',
      id: `projects/${this.project}/zones/${zone}/instances`,
      items: page.map(publicInstance),
      selfLink: `https://www.googleapis.com/compute/v1/projects/${this.project}/zones/${zone}/instances`,
      ...(next ? { nextPageToken: next } : {}),
    };
  }

  private aggregatedList(url: URL): unknown {
    const items = this.filtered([...this.instances.values()], url);
    const { page, next } = this.page(items, url);
    const byZone: Record<string, { instances?: unknown[]; warning?: unknown }> = {};
    for (const inst of page) {
      const scope = `zones/${inst.zone.split('/').pop()}`;
      (byZone[scope] ??= { instances: [] }).instances!.push(publicInstance(inst));
    }
    // Real GCE lists every zone, most with a "no results" warning.
    byZone['zones/us-east1-b'] ??= { warning: { code: 'NO_RESULTS_ON_PAGE', message: 'There are no results for scope \'zones/us-east1-b\' on this page.', data: [{ key: 'scope', value: 'zones/us-east1-b' }] } };
    return {
      kind: 'compute#instanceAggregatedList',
      id: `projects/${this.project}/aggregated/instances`,
      items: byZone,
      selfLink: `https://www.googleapis.com/compute/v1/projects/${this.project}/aggregated/instances`,
      ...(next ? { nextPageToken: next } : {}),
    };
  }
}

function routeName(method: string, rest: string[]): string {
  if (rest[0] === 'aggregated') return 'instances.aggregatedList';
  const [, , kind, id, action] = rest;
  if (kind === 'operations') return action === 'wait' ? 'operations.wait' : 'operations.get';
  if (id === undefined) return method === 'POST' ? 'instances.insert' : 'instances.list';
  if (action) return `instances.${action}`;
  return method === 'DELETE' ? 'instances.delete' : 'instances.get';
}

/** `(labels.a = "x") AND (labels.b = "y")` (also without parentheses or AND) → {a: 'x', b: 'y'} */
export function parseFilter(filter: string): Record<string, string> {
  const out: Record<string, string> = {};
  const re = /labels\.([a-z][a-z0-9_-]*)\s*(?:=|eq)\s*"([^"]*)"/g;
  for (let m = re.exec(filter); m; m = re.exec(filter)) out[m[1]!] = m[2]!;
  if (filter.trim() && Object.keys(out).length === 0) throw new Error(`fake GCE cannot parse filter ${filter}`);
  return out;
}

function fingerprint(): string {
  return Buffer.from(randomUUID().slice(0, 8)).toString('base64');
}

function publicInstance(i: Instance): unknown {
  const { localCid: _localCid, ...rest } = i;
  return rest;
}

function publicOperation(o: Operation): unknown {
  const { done: _done, ...rest } = o;
  return rest;
}

export function gceError(code: number, reason: string, message: string, location?: string): unknown {
  return { error: { code, message, errors: [{ message, domain: 'global', reason, ...(location ? { location, locationType: 'other' } : {}) }] } };
}

function send(res: http.ServerResponse, status: number, json: unknown): void {
  const text = JSON.stringify(json);
  res.writeHead(status, { 'content-type': 'application/json; charset=UTF-8', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}
